"""GGUF end to end inside hymoe: convert a HF model, load the file, compare with the HF directory."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

import hymoe
from hymoe.convert import convert
from hymoe.errors import HymoeError
from hymoe.quant.kquants import QUANTIZERS

EXPRESSIBLE = ["deepseek_v3", "deepseek_v3_qlora_yarn", "deepseek_v3_groups8", "qwen2_moe", "mixtral",
               "mixtral_head_dim"]
# what GGUF's llama.cpp architectures cannot say; convert must refuse, naming the reason
INEXPRESSIBLE = {"deepseek_v3_no_groups_half_rope_bias": "rope_interleave", "deepseek_v2": "group_limited_greedy",
                 "qwen3_moe": "every layer", "mixtral_sliding_window": "sliding-window",
                 "qwen2_moe_sliding_layers": "sliding-window"}
PROMPT = list(range(3, 60))


@pytest.mark.parametrize("name", EXPRESSIBLE)
def test_f32_gguf_equals_the_hf_directory(tiny_model, tmp_path, name):
    hf_dir, _ = tiny_model(name)
    path = convert(hf_dir, tmp_path / "m.gguf", type="F32", progress=False)
    want = hymoe.load(hf_dir, dtype="float32", progress=False).logits(PROMPT)
    for backend in ("native", "torch"):  # the same cache dtype as the directory (a GGUF's default is float16)
        got = hymoe.load(path, dtype="float32", progress=False, experts=backend, kv_dtype="float32").logits(PROMPT)
        assert (got - want).abs().max().item() <= 1e-4, backend


@pytest.mark.parametrize("name", list(INEXPRESSIBLE))
def test_convert_refuses_what_gguf_cannot_express(tiny_model, tmp_path, name):
    hf_dir, _ = tiny_model(name)
    with pytest.raises(HymoeError, match=INEXPRESSIBLE[name]):
        convert(hf_dir, tmp_path / "m.gguf", type="F32", progress=False)
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind


@pytest.mark.parametrize("change,reason", [({"mscale_all_dim": None}, "cannot express this YaRN"),
                                           ({"mscale": 1.0}, "cannot express this YaRN"),
                                           ({"beta_fast": 16}, "betas to 32 and 1")])
def test_convert_refuses_yarn_that_llama_cpp_deepseek2_computes_otherwise(tiny_model, tmp_path, change, reason):
    """llama.cpp's deepseek2 knows two YaRN rules (tests/test_gguf_llama_cpp.py); transformers has more."""
    import json
    import shutil

    hf_dir, _ = tiny_model("deepseek_v3_qlora_yarn")
    shutil.copytree(hf_dir, tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    for params in ("rope_parameters", "rope_scaling"):
        if cfg.get(params):
            cfg[params] = {k: v for k, v in {**cfg[params], **change}.items() if v is not None}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HymoeError, match=reason):
        convert(tmp_path / "hf", tmp_path / "m.gguf", type="F32", progress=False)


@pytest.mark.parametrize("name", ["deepseek_v3", "qwen3_moe", "qwen2_moe", "mixtral"])
def test_q8_0_gguf_agrees_with_the_hf_directory(gguf_model, name):
    from gguf_models import TEXT

    hf_dir, path = gguf_model(name, "Q8_0")
    ref = hymoe.load(hf_dir, dtype="float32", progress=False)
    ids = ref.tokenizer.encode(TEXT[5000:9000])[:300]
    want = ref.logits(ids).argmax(-1)
    got = hymoe.load(path, dtype="float32", progress=False).logits(ids).argmax(-1)
    assert (got == want).float().mean().item() >= 0.98


def test_tokenizer_and_chat_template_come_from_the_file(gguf_model):
    from gguf_models import SAMPLE

    hf_dir, path = gguf_model("qwen2_moe", "Q8_0")
    hf, ours = hymoe.load(hf_dir, progress=False), hymoe.load(path, progress=False)
    assert ours.tokenizer.encode(SAMPLE) == hf.tokenizer.encode(SAMPLE)
    assert ours.tokenizer.decode(ours.tokenizer.encode(SAMPLE)) == SAMPLE
    chat = [{"role": "user", "content": "Hi there"}]
    assert ours.tokenizer.apply_chat_template(chat) == hf.tokenizer.apply_chat_template(chat)
    assert ours.eos_ids == hf.eos_ids


def test_mixed_types_and_fallbacks_are_recorded_per_tensor(gguf_model, tmp_path):
    from hymoe.loader.gguf_file import GGUFModelFile

    hf_dir, _ = gguf_model("deepseek_v3", "F32")
    path = convert(hf_dir, tmp_path / "mix.gguf", type="Q8_0", experts_type="Q4_K", attn_type="Q6_K", progress=False)
    t = GGUFModelFile(path).tensors
    assert t["blk.1.ffn_gate_exps.weight"].format == "Q4_K"
    assert t["blk.1.attn_kv_a_mqa.weight"].format == "Q6_K"
    assert t["blk.1.attn_k_b.weight"].format == "Q8_0"  # rows of 32: no Q6_K block fits, Q8_0 does
    assert t["blk.1.ffn_up_shexp.weight"].format == "Q8_0"
    assert t["blk.1.attn_norm.weight"].format == t["blk.1.ffn_gate_inp.weight"].format == "F32"
    assert hymoe.load(path, progress=False).logits(PROMPT).isfinite().all()


def test_split_files_load_as_one_model(gguf_model, tmp_path):
    from gguf_edit import rewrite

    hf_dir, path = gguf_model("mixtral", "Q8_0")
    rewrite(path, tmp_path / "m.gguf", split_max_tensors=10)
    parts = sorted(tmp_path.glob("m-*-of-*.gguf"))
    assert len(parts) >= 3
    want = hymoe.load(path, dtype="float32", progress=False).logits(PROMPT)
    got = hymoe.load(parts[0], dtype="float32", progress=False).logits(PROMPT)
    assert torch.equal(got, want)
    with pytest.raises(HymoeError, match="first part"):
        hymoe.load(parts[1], progress=False)
    parts[-1].unlink()
    with pytest.raises(HymoeError, match="missing part"):
        hymoe.load(parts[0], progress=False)


def test_legacy_unsplit_kv_b_loads(gguf_model, tmp_path):
    """Older deepseek2 files store attn_kv_b whole; hymoe reads both layouts to the same model."""
    from gguf_edit import rewrite
    from hymoe.loader.gguf_file import GGUFModelFile
    from hymoe.loader.gguf_meta import config_from_gguf
    from hymoe.loader.gguf_names import merge_kv_b
    from hymoe.loader.gguf_source import dequantize_tensor

    hf_dir, path = gguf_model("deepseek_v3", "F32")
    g = GGUFModelFile(path)
    cfg = config_from_gguf(g.metadata, g.tensors, path)

    def join(name, info):
        if name.endswith("attn_k_b.weight"):
            v_b = dequantize_tensor(g.tensors[name.replace("k_b", "v_b")])
            kv = merge_kv_b(dequantize_tensor(info), v_b, cfg)
            return [(name.replace("attn_k_b", "attn_kv_b"), kv.numpy(), GGMLQuantizationType.F32)]
        return [] if name.endswith("attn_v_b.weight") else None

    rewrite(path, tmp_path / "legacy.gguf", tensors=join)
    assert "blk.0.attn_kv_b.weight" in GGUFModelFile(tmp_path / "legacy.gguf").tensors
    want = hymoe.load(path, dtype="float32", progress=False).logits(PROMPT)
    assert torch.equal(hymoe.load(tmp_path / "legacy.gguf", dtype="float32", progress=False).logits(PROMPT), want)


@pytest.mark.parametrize("fmt,bound", [("Q4_K", 0.08), ("Q5_K", 0.04), ("Q6_K", 0.021), ("IQ1_S", 0.5)])
def test_k_quantizers_round_trip_through_gguf_py(fmt, bound):
    """Our encoders, decoded by gguf-py: the layout is GGUF's and the error is the format's
    (IQ1_S: 1.56 bits per weight, ~0.45 of the RMS on Gaussian weights)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 512)).astype(np.float32) * rng.uniform(0.01, 10, (48, 1)).astype(np.float32)
    x[0] = 0.0  # an all-zero row
    x[1, :256] = 3.0  # a constant block
    x[2] = np.abs(x[2])  # no negative values: offsets must stay usable
    q = QUANTIZERS[fmt](x)
    block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[fmt]]
    assert q.shape == (48, 512 // block * nbytes) and q.dtype == np.uint8
    y = dequantize(q, GGMLQuantizationType[fmt])
    assert np.all(y[0] == 0)
    np.testing.assert_allclose(y[1, :256], 3.0, rtol=0.02)
    rel = np.sqrt(((y[3:] - x[3:]) ** 2).mean(1) / (x[3:] ** 2).mean(1))
    assert rel.max() < bound, rel.max()


def test_inspect_reports_groups_formats_and_memory(gguf_model, tmp_path):
    from hymoe.inspect import inspect_model, report
    from hymoe.layers.linear import DEQUANT_CHUNK, DEQUANT_PEAK_BYTES

    hf_dir, _ = gguf_model("deepseek_v3", "F32")
    path = convert(hf_dir, tmp_path / "m.gguf", type="Q8_0", experts_type="Q4_K", progress=False)
    d = inspect_model(path, "hybrid", "bfloat16", 512)
    assert d["groups"]["routed experts"]["formats"] == {"Q4_K": 6}
    cfg = hymoe.load(hf_dir, progress=False).config
    per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    assert d["groups"]["routed experts"]["params"] == 2 * cfg.num_experts * per_expert
    # bfloat16: MLA's up-projections stay module parameters (float32 on the CPU moves them into the
    # native per-head products)
    loaded = hymoe.load(hf_dir, dtype="bfloat16", progress=False).model
    assert d["params_total"] == sum(p.numel() for p in loaded.parameters()) + 2 * cfg.num_experts * per_expert
    assert d["params_active_per_token"] == d["params_total"] - 2 * (cfg.num_experts - cfg.num_experts_per_tok) * per_expert
    assert d["devices"]["cpu"] == d["experts_bytes"] == 2 * 3 * cfg.num_experts * cfg.moe_intermediate_size * 144
    assert d["devices"]["gpu"] == d["dense_bytes_placed"] + d["kv_bytes"] + d["gpu_workspace_bytes"]
    # the GPU dequantizes a block linear per call: the largest one's float intermediates (layers/linear.py)
    linears = [m.weight.numel() for n, m in loaded.named_modules()
               if isinstance(m, torch.nn.Linear) and not n.endswith(("kv_b_proj", "mlp.gate"))]
    assert d["gpu_workspace_bytes"] == DEQUANT_PEAK_BYTES * min(max(linears), DEQUANT_CHUNK)
    # Q8_0 matrices stay in their blocks on the GPU; norms, routers and MLA's kv_b become bf16
    assert d["dense_bytes_placed"] < 2 * (d["params_total"] - d["groups"]["routed experts"]["params"])
    assert "Q4_K x6" in report(d)


def test_cli_convert_inspect_and_chat_on_a_gguf_file(gguf_model, tmp_path):
    import json
    import subprocess
    import sys

    hf_dir, _ = gguf_model("qwen3_moe", "F16")
    out = tmp_path / "cli.gguf"
    run = lambda *a: subprocess.run([sys.executable, "-m", "hymoe.cli", *a], capture_output=True, text=True)
    r = run("convert", str(hf_dir), str(out), "--type", "Q6_K", "--experts-type", "Q4_K")
    assert r.returncode == 0, r.stderr
    r = run("inspect", str(out), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["groups"]["routed experts"]["formats"] == {"Q4_K": 6}
    r = run("generate", str(out), "--chat", "--prompt", "Hello", "--max-new-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout.splitlines()[-1])["token_ids"]) >= 1
    r = run("convert", str(hf_dir), str(tmp_path / "x.gguf"), "--type", "Q3_K")
    assert r.returncode == 1 and r.stderr.strip().startswith("hymoe: error: hymoe convert has no type 'Q3_K'")
    r = run("generate", str(tmp_path / "missing.gguf"), "--prompt", "x")
    assert r.returncode == 1 and "no such file" in r.stderr


def test_per_expert_tensors_of_older_mixtral_files(gguf_model, tmp_path):
    """Early Mixtral GGUFs store blk.N.ffn_gate.E.weight per expert; they load as the stacked file does."""
    from gguf_edit import rewrite

    _, path = gguf_model("mixtral", "Q8_0")

    def unstack(name, info):
        if "_exps." not in name:
            return None
        rows = info.data.numpy().reshape(info.shape[0], info.shape[1], -1)
        return [(name.replace("_exps.", f".{j}."), rows[j], info.type) for j in range(info.shape[0])]

    rewrite(path, tmp_path / "old.gguf", tensors=unstack)
    want = hymoe.load(path, dtype="float32", progress=False).logits(PROMPT)
    assert torch.equal(hymoe.load(tmp_path / "old.gguf", dtype="float32", progress=False).logits(PROMPT), want)


def test_inspect_splits_memory_by_placement(gguf_model):
    from hymoe.inspect import inspect_model

    _, path = gguf_model("deepseek_v3", "Q8_0")
    d = {p: inspect_model(path, p, "float32", 512)["devices"] for p in ("cpu", "hybrid", "layers:1", "layers:3", "gpu")}
    assert set(d["cpu"]) == {"cpu"} and d["gpu"]["cpu"] == 0
    full = inspect_model(path, "gpu", "float32", 512)
    kv, experts = full["kv_bytes"], full["groups"]["routed experts"]["params"]
    # routed experts as float32 torch weights on the GPU; Q8_0 matrices kept in their blocks (and one
    # dequantized chunk's intermediates beside them)
    assert full["gpu_workspace_bytes"] > 0
    assert d["gpu"]["gpu"] == experts * 4 + full["dense_bytes_placed"] + kv + full["gpu_workspace_bytes"]
    assert full["dense_bytes_placed"] < (full["params_total"] - experts) * 4 / 2
    assert d["layers:1"]["gpu"] < d["layers:3"]["gpu"] < d["gpu"]["gpu"]  # layer 0 is dense: small
    assert d["layers:3"]["cpu"] < d["layers:1"]["cpu"]
    with pytest.raises(HymoeError, match="asks for 9 layers"):
        inspect_model(path, "layers:9")
