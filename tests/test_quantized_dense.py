"""The dense part in block formats: kept from a GGUF file, quantized at load on request, priced by
`hymoe inspect` (a full-size DeepSeek-V3 file of headers only must fit a 24 GB card), and timed
against llama.cpp on the same file by `hymoe bench e2e --peer llama.cpp`."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch

import hymoe
from hymoe.errors import HymoeError
from hymoe.experts import native
from hymoe.experts.native_linear import NativeLinear
from hymoe.layers.linear import QuantEmbedding, QuantLinear
from hymoe.loader.gguf_file import GGUFFile

PROMPT = [5, 17, 42, 99, 7, 64, 23, 11, 150, 3, 77, 201]
needs_native = pytest.mark.skipif(native.library() is None, reason="native kernels not built")


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "hymoe.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@needs_native
def test_gguf_dense_weights_stay_in_the_file_blocks(gguf_model):
    _, path = gguf_model("qwen3_moe", "Q4_K")
    llm = hymoe.load(path, placement="cpu", progress=False)
    assert llm.dtype == torch.float32  # a GGUF computed on the CPU takes float32 activations, as llama.cpp
    assert llm.kv_dtype == torch.float16 and llm.runner(1, 8).cache.layers[0]["k"].dtype == torch.float16
    attn = llm.model.layers[0].self_attn
    assert isinstance(attn.q_proj, QuantLinear) and attn.q_proj.fmt == "Q4_K"
    assert isinstance(llm.model.embed_tokens, QuantEmbedding) and isinstance(llm.model.lm_head, QuantLinear)
    # the blocks as stored: a copy of the file's bytes (on 2 MiB pages: test_large_pages.py)
    assert torch.equal(attn.q_proj.qweight.reshape(-1), GGUFFile(path).tensors["blk.0.attn_q.weight"].data)
    assert isinstance(attn.q_proj.kernel, NativeLinear) and attn.q_proj.fused is not None  # q, k, v in one call
    assert llm.dense_kernels == {"native": 2 * 4 + 1}  # q, k, v, o of both layers and the head


def test_gguf_files_are_mapped_read_only(gguf_model):
    _, path = gguf_model("qwen3_moe", "Q4_K")
    f = GGUFFile(path)
    with pytest.raises(TypeError):
        f._map[0] = 0


@needs_native
@pytest.mark.parametrize("name", ["qwen3_moe", "deepseek_v3"])
def test_a_bfloat16_cache_runs_in_the_native_attention(gguf_model, name):
    """--kv-dtype bfloat16 on the CPU (it once stopped the first step: the native attention took
    float32 and fp16 caches only): keys and values stored as torch rounds them and read back
    exactly, GQA's and MLA's latent cache alike, so the logits are the torch attention's."""
    _, path = gguf_model(name, "Q8_0")
    llm = hymoe.load(path, placement="cpu", progress=False, kv_dtype="bfloat16")
    attention = [m for m in llm.model.modules() if type(m).__name__ in ("GQAttention", "MLAttention")]
    assert llm.kv_dtype == torch.bfloat16 and attention
    assert all(getattr(m, "kernel", None) is not None or getattr(m, "attend_kernel", None) is not None
               for m in attention)
    got = llm.logits(PROMPT)
    for m in attention:
        m.kernel = m.attend_kernel = None
    want = llm.logits(PROMPT)
    assert (got - want).abs().max().item() < 1e-4 * want.abs().max().item()


@needs_native
def test_native_dense_path_equals_the_torch_dequantized_path(gguf_model):
    """The native kernels (int8 activations) against torch's matmul over the same dequantized blocks."""
    _, path = gguf_model("deepseek_v3", "Q8_0")
    native_llm = hymoe.load(path, placement="cpu", progress=False)
    torch_llm = hymoe.load(path, placement="cpu", progress=False)
    for m in torch_llm.model.modules():
        for attr in ("kernel", "fused"):
            if getattr(m, attr, None) is not None:
                setattr(m, attr, None)
    want, got = torch_llm.logits(PROMPT), native_llm.logits(PROMPT)
    assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() >= 0.9
    # int8 activations move logits by ~0.5%; where they flip a routing choice a position moves more
    close = (got - want).abs().max(-1).values < 0.02 * want.abs().max()
    assert close.float().mean().item() >= 0.9


@needs_native
@pytest.mark.parametrize("fmt", ["Q8_0", "Q4_K"])
def test_dense_format_quantizes_a_float_model_at_load(tiny_model, fmt):
    hf_dir, _ = tiny_model("qwen2_moe")
    ids = list(range(3, 67))
    plain = hymoe.load(hf_dir, dtype="float32", progress=False, placement="cpu")
    assert plain.kv_dtype == torch.float32  # a float checkpoint's cache keeps the compute dtype
    ref = plain.logits(ids)
    llm = hymoe.load(hf_dir, dtype="float32", progress=False, placement="cpu", dense_format=fmt)
    quantized = [m for m in llm.model.modules() if isinstance(m, QuantLinear)]
    floats = [m for m in llm.model.modules() if isinstance(m, torch.nn.Linear) and not getattr(m, "keeps_float", 0)]
    # rows that do not split into the format's blocks keep their floats (hymoe says so): Q4_K's rows
    # of 256 fit none of this model's, Q8_0's of 32 all but the shared experts' down projections (48)
    block = {"Q8_0": 32, "Q4_K": 256}[fmt]
    assert all(m.in_features % block == 0 and m.fmt == fmt for m in quantized)
    assert all(m.in_features % block for m in floats)
    assert len(quantized) == (0 if fmt == "Q4_K" else 2 * (4 + 2) + 1)
    if fmt == "Q8_0":
        got = llm.logits(ids)
        assert (got.argmax(-1) == ref.argmax(-1)).float().mean().item() >= 0.9
        assert (got - ref).abs().mean().item() < 0.05 * ref.abs().mean().item()  # int8 weights and activations


def test_unknown_dense_format_is_one_clear_error(tiny_model):
    hf_dir, _ = tiny_model("qwen2_moe")
    with pytest.raises(HymoeError, match="--dense-format 'Q9_K'"):
        hymoe.load(hf_dir, progress=False, dense_format="Q9_K")


def test_a_rule_quantizes_one_unit(tiny_model, tmp_path):
    hf_dir, _ = tiny_model("qwen2_moe")
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - {match: 'layers\\.\\d+\\.self_attn', device: cpu, format: Q8_0}\n"
                     "  - {match: '.*', device: cpu}\n")
    llm = hymoe.load(hf_dir, dtype="float32", progress=False, placement=str(rules))
    layer = llm.model.layers[0]
    assert isinstance(layer.self_attn.o_proj, QuantLinear) and layer.self_attn.o_proj.fmt == "Q8_0"
    assert not isinstance(layer.mlp.shared_experts.down_proj, QuantLinear)


def _sparse_deepseek_v3(path) -> None:
    """DeepSeek-V3's full metadata and tensor table (61 layers, Q4_K_M-style types) over a data region
    that is a hole in the file: 400 GB that take no disk."""
    from hymoe.bench.random_gguf import _tensors, write_vocab
    from hymoe.bench.synthetic import CONFIGS
    from hymoe.config import from_hf_dict
    from hymoe.loader.gguf_meta import write_metadata
    from hymoe.quant.formats import qtype, row_bytes

    cfg = from_hf_dict(dict(CONFIGS["deepseek-v3"], num_hidden_layers=61, first_k_dense_replace=3,
                            max_position_embeddings=163840))
    w = gguf.GGUFWriter(path, "deepseek2")
    write_metadata(w, cfg)
    write_vocab(w, cfg.vocab_size)
    end = 0
    for name, shape, fmt in _tensors(cfg, "Q4_K", "Q4_K"):
        if name == "output.weight" or name.endswith("ffn_down_shexp.weight"):
            fmt = "Q6_K"  # as llama.cpp's Q4_K_M keeps them
        rb = 4 * shape[-1] if fmt == "F32" else row_bytes(fmt, shape[-1])
        size = rb * int(torch.Size(shape[:-1]).numel())
        w.add_tensor_info(name, (*shape[:-1], rb) if fmt != "F32" else shape,
                          np.dtype(np.float32 if fmt == "F32" else np.uint8), size, qtype(fmt))
        end += -(-size // 32) * 32
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with open(path, "r+b") as f:
        header = f.seek(0, 2)
        f.truncate(-(-header // 32) * 32 + end)


def test_full_deepseek_v3_fits_a_24_gb_card_at_8k(tmp_path):
    path = tmp_path / "DeepSeek-V3-Q4_K_M.gguf"
    _sparse_deepseek_v3(path)
    assert path.stat().st_size > 350e9  # the whole file, as a hole
    r = _run("inspect", path, "--placement", "hybrid", "--max-context", "8192", "--dtype", "bfloat16", "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert d["params_total"] > 660e9 and d["layers"] == 61
    assert d["devices"]["gpu"] <= 20 * 2**30, d["devices"]
    assert d["devices"]["cpu"] > 350e9  # the routed experts stay in host memory


def test_inspect_prices_q4_k_dense_weights_in_the_gpus_int4_layout(tmp_path):
    """auto prices torch's int4 layout on the GPU (0.625 bytes a weight, Q4_K 0.5625); dequant the blocks."""
    from hymoe.inspect import inspect_model

    path = tmp_path / "DeepSeek-V3-Q4_K_M.gguf"
    _sparse_deepseek_v3(path)
    q4_k = sum(int(t.n_elements) for t in gguf.GGUFReader(path).tensors if t.tensor_type.name == "Q4_K"
               and not re.search(r"_exps|token_embd|attn_[kv]_b", t.name))  # MLA's per-head kv_b: floats
    assert q4_k > 5e9  # attention and shared experts
    auto, dequant = (inspect_model(path, "hybrid", "bfloat16", 8192, gpu_dense_kernel=k) for k in ("auto", "dequant"))
    assert auto["dense_bytes_placed"] - dequant["dense_bytes_placed"] == pytest.approx(q4_k / 16, abs=1e3)
    assert auto["devices"]["gpu"] - dequant["devices"]["gpu"] == auto["dense_bytes_placed"] - dequant["dense_bytes_placed"]


@needs_native
def test_bench_e2e_runs_llama_cpp_on_the_same_file(tmp_path):
    pytest.importorskip("llama_cpp")
    path = tmp_path / "random.gguf"
    r = _run("bench", "gguf", path, "--shape", "qwen3-30b-a3b", "--layers", "1", "--experts", "8", "--vocab", "512")
    assert r.returncode == 0, r.stderr
    r = _run("bench", "e2e", path, "--placement", "cpu", "--prompt-tokens", "16", "--gen-tokens", "4", "--threads",
             "2", "--peer", "llama.cpp", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    ours, peer = json.loads(r.stdout.splitlines()[-1])
    assert peer["placement"] == "llama.cpp" and peer["decode_tokens_per_s"] > 0
    assert ours["decode_vs_peer"] == pytest.approx(ours["decode_tokens_per_s"] / peer["decode_tokens_per_s"], 1e-2)
    assert 0 < ours["decode_bandwidth_fraction"] and ours["dense_kernels"] == {"native": 5}


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"])
def test_quant_linear_on_cuda_equals_gguf_py(fmt):
    """On the GPU the blocks stay blocks and torch dequantizes them at each call."""
    from quant_utils import dequant, random_weights

    w = random_weights(fmt, 64, 512, seed=7)
    layer = QuantLinear(512, 64, fmt, w).to("cuda")
    assert layer.qweight.is_cuda and layer.qweight.dtype == torch.uint8
    x = torch.randn(3, 512)
    want = x.double() @ dequant(fmt, w, 512).double().T
    assert torch.allclose(layer(x.cuda()).double().cpu(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_gguf_hybrid_on_cuda_keeps_dense_blocks_and_graphs_agree(gguf_model):
    _, path = gguf_model("qwen3_moe", "Q4_K")
    cpu = hymoe.load(path, placement="cpu", progress=False)
    llm = hymoe.load(path, placement="hybrid", device="cuda", progress=False)
    q = llm.model.layers[0].self_attn.q_proj
    assert isinstance(q, QuantLinear) and q.qweight.is_cuda and q.fmt == "Q4_K"
    got, want = llm.logits(PROMPT), cpu.logits(PROMPT)
    assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() >= 0.9
    eager = hymoe.load(path, placement="hybrid", device="cuda", progress=False, cuda_graphs=False)
    assert llm.generate(PROMPT, max_new_tokens=16, is_eos_ignored=True) == \
        eager.generate(PROMPT, max_new_tokens=16, is_eos_ignored=True)


@pytest.mark.gpu
def test_hybrid_with_torch_int4_matmul_agrees_with_dequantizing_and_graphs_with_eager():
    """--gpu-dense-kernel int4pack (auto's choice on CUDA): Q4_K dense linears on CUDA in torch's int4
    layout (bf16 scales), against the dequantizing path."""
    from hymoe.bench.synthetic import random_model

    files = random_model("deepseek-v3-tiny", 2, "Q4_K", "Q4_K")
    ids = list(range(3, 40))
    base = hymoe.load(files, placement="hybrid", device="cuda", progress=False, gpu_dense_kernel="dequant")
    llm = hymoe.load(files, placement="hybrid", device="cuda", progress=False)  # auto
    assert llm.dense_kernels.get("int4pack", 0) >= 4 and "int4pack" not in base.dense_kernels
    got, want = llm.logits(ids).float(), base.logits(ids).float()
    assert ((got - want).abs().max() / want.abs().max()).item() < 0.05
    eager = hymoe.load(files, placement="hybrid", device="cuda", progress=False, gpu_dense_kernel="int4pack",
                       cuda_graphs=False)
    assert llm.generate(ids, max_new_tokens=8, is_eos_ignored=True) == \
        eager.generate(ids, max_new_tokens=8, is_eos_ignored=True)
