"""FP8 block-scaled safetensors (DeepSeek-V3/R1's official layout): read, re-quantized, converted.

The reference is transformers' own DeepseekV3ForCausalLM holding the very values the FP8 file
decodes to (fp8 * scale_inv per 128 x 128 block), so a mismatch is hymoe's reading, not rounding.
"""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
import transformers
from safetensors.torch import save_file

import hymoe
from hymoe.convert import convert
from hymoe.errors import HymoeError
from tiny_models import perturb

BLOCK = 128
# dims past one block and partial last blocks: q_a [96, 256], kv_a [80, 256], the dense mlp 320 wide
CONFIG = dict(vocab_size=256, hidden_size=256, num_attention_heads=4, max_position_embeddings=512,
              tie_word_embeddings=False, num_hidden_layers=2, intermediate_size=320, moe_intermediate_size=256,
              num_key_value_heads=4, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2,
              topk_group=1, q_lora_rank=96, kv_lora_rank=64, qk_rope_head_dim=16, qk_nope_head_dim=32,
              v_head_dim=32, first_k_dense_replace=1, routed_scaling_factor=2.5)
QCFG = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [BLOCK, BLOCK], "activation_scheme": "dynamic"}
IDS = list(range(3, 60, 2))


def full_scale(s: torch.Tensor, r: int, c: int) -> torch.Tensor:
    """Block scales [ceil(r/128), ceil(c/128)] (or one) spread over an [r, c] matrix."""
    return s if s.numel() == 1 else s.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:r, :c]


def quantize_fp8(w: torch.Tensor, per_tensor: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """float [R, C] -> (e4m3 [R, C], float32 scale_inv [ceil(R/128), ceil(C/128)]), or one scale."""
    if per_tensor:
        s = w.abs().max().clamp(min=1e-12) / 448.0
        return (w / s).to(torch.float8_e4m3fn), s.reshape(1).float()
    r, c = w.shape
    nr, nc = -(-r // BLOCK), -(-c // BLOCK)
    padded = torch.zeros(nr * BLOCK, nc * BLOCK)
    padded[:r, :c] = w
    s = padded.reshape(nr, BLOCK, nc, BLOCK).abs().amax((1, 3)).clamp(min=1e-12) / 448.0
    return (w / full_scale(s, r, c)).to(torch.float8_e4m3fn), s.float()


def _split_experts(state: dict) -> dict:
    """transformers 5 keeps experts stacked; the FP8 release stores one tensor per expert."""
    out = {}
    for k, v in state.items():
        if k.endswith("experts.gate_up_proj"):
            i = v.shape[1] // 2
            for j in range(v.shape[0]):
                out[k.replace("gate_up_proj", f"{j}.gate_proj.weight")] = v[j, :i]
                out[k.replace("gate_up_proj", f"{j}.up_proj.weight")] = v[j, i:]
        elif k.endswith("experts.down_proj"):
            for j in range(v.shape[0]):
                out[k.replace("down_proj", f"{j}.down_proj.weight")] = v[j]
        else:
            out[k] = v
    return out


def quantize_stacked(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float [E, R, C] -> (e4m3 [E, R, C], scale_inv [E, ceil(R/128), ceil(C/128)]), expert by expert."""
    parts = [quantize_fp8(x) for x in w]
    return torch.stack([q for q, _ in parts]), torch.stack([s for _, s in parts])


def make_fp8_model(out_dir, per_tensor: bool = False, stacked: bool = False):
    """A tiny DeepSeek-V3 saved as FP8 with scales; returns the HF model holding the decoded values.
    stacked: the experts as transformers 5 keeps them, gate_up_proj [E, 2I, H] and down_proj [E, H, I]."""
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**CONFIG)).float().eval()
    perturb(model)
    model.config._attn_implementation = "eager"
    model.save_pretrained(out_dir)
    state, decoded = {}, {}
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    for k, v in (weights if stacked else _split_experts(weights)).items():
        if stacked and k.endswith(("experts.gate_up_proj", "experts.down_proj")):
            q, s = quantize_stacked(v)
            state[k], state[k + "_scale_inv"] = q.contiguous(), s.contiguous()
            decoded[k] = torch.stack([qj.float() * full_scale(sj, *v.shape[1:]) for qj, sj in zip(q, s)])
        elif ".layers." in k and k.endswith("_proj.weight"):
            q, s = quantize_fp8(v, per_tensor)
            state[k], state[k + "_scale_inv"] = q.contiguous(), s.contiguous()
            decoded[k] = q.float() * full_scale(s, *v.shape)
        else:
            state[k] = v.contiguous()
    for f in out_dir.glob("*.safetensors*"):
        f.unlink()
    save_file(state, out_dir / "model.safetensors")
    cfg = json.loads((out_dir / "config.json").read_text())
    (out_dir / "config.json").write_text(json.dumps({**cfg, "quantization_config": QCFG}))
    _load_decoded(model, decoded)
    return model


def _load_decoded(model, decoded: dict) -> None:
    """The reference model's weights set to the FP8 file's decoded values (experts restacked)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, p in params.items():
            if k in decoded:
                p.copy_(decoded[k])
            elif k.endswith("experts.gate_up_proj"):
                e = p.shape[0]
                p.copy_(torch.stack([torch.cat([decoded[k.replace("gate_up_proj", f"{j}.{w}_proj.weight")]
                                                for w in ("gate", "up")]) for j in range(e)]))
            elif k.endswith("experts.down_proj"):
                p.copy_(torch.stack([decoded[k.replace("down_proj", f"{j}.down_proj.weight")]
                                     for j in range(p.shape[0])]))


@pytest.fixture(scope="module")
def fp8_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp8")
    model = make_fp8_model(out)
    with torch.no_grad():
        want = model(torch.tensor([IDS])).logits[0].float()
    return out, want, model


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


@pytest.mark.parametrize("options", [dict(experts_format="F32"), dict(experts="torch")])
def test_float_experts_match_transformers_on_the_decoded_weights(fp8_model, options):
    path, want, _ = fp8_model
    got = hymoe.load(path, dtype="float32", progress=False, **options).logits(IDS)
    assert _rel(got, want) <= 1e-4


def _q4_k_reference(llm, model) -> torch.nn.Module:
    """The reference model with each routed expert replaced by its Q4_K blocks as gguf-py decodes them."""
    from gguf.quants import dequantize
    from gguf import GGMLQuantizationType

    def decode(raw, e, rows, n):
        return torch.from_numpy(dequantize(raw.reshape(e * rows, -1).numpy(), GGMLQuantizationType.Q4_K)).reshape(e, rows, n)

    ref = copy.deepcopy(model)
    h, i = CONFIG["hidden_size"], CONFIG["moe_intermediate_size"]
    with torch.no_grad():
        for layer, ours in zip(ref.model.layers, llm.model.layers):
            ex = getattr(ours.mlp, "experts", None)
            if ex is None:
                continue
            e = ex.gate.shape[0]
            layer.mlp.experts.gate_up_proj.copy_(torch.cat([decode(ex.gate, e, i, h), decode(ex.up, e, i, h)], 1))
            layer.mlp.experts.down_proj.copy_(decode(ex.down, e, h, i))
    return ref


def test_default_requantizes_experts_to_q4_k_and_says_so(fp8_model, caplog):
    path, want, model = fp8_model
    llm = hymoe.load(path, dtype="float32", progress=False)
    assert "re-quantized to Q4_K" in caplog.text
    layer = llm.model.layers[1].mlp.experts
    assert layer.formats == ("Q4_K",) * 3
    q4 = _q4_k_reference(llm, model)
    # the blocks hold the decoded FP8 experts within Q4_K's error (test_gguf.py's round-trip bound)
    stored, exact = q4.model.layers[1].mlp.experts.down_proj, model.model.layers[1].mlp.experts.down_proj
    assert _rel(stored, exact) < 0.08
    with torch.no_grad():
        want_q4 = q4(torch.tensor([IDS])).logits[0].float()
    got = llm.logits(IDS)
    assert _rel(got, want_q4) < 0.02  # only the kernels' activation rounding is left
    print(f"Q4_K: {_rel(got, want_q4):.2e} from the Q4_K reference, {_rel(got, want):.3f} from the FP8 one")


def test_a_rules_experts_format_is_encoded_from_the_fp8_values(fp8_model, tmp_path):
    """A placement rule's format for one layer's experts: its blocks come from the FP8 values, not
    from the default Q4_K blocks re-quantized (which would add Q4_K's error to the rule's)."""
    from hymoe.quant.encode import encode_bytes

    path, _, model = fp8_model
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {match: 'layers\\.1\\.mlp\\.experts', device: cpu, format: Q8_0}\n"
                     "  - {match: '.*', device: cpu}\n")
    llm = hymoe.load(path, dtype="float32", progress=False, placement=str(rules))
    experts = llm.model.layers[1].mlp.experts
    assert experts.formats == ("Q8_0",) * 3
    i = CONFIG["moe_intermediate_size"]
    for j in (0, 5):  # expert j's gate rows, from the reference that holds the decoded FP8 values
        exact = model.model.layers[1].mlp.experts.gate_up_proj[j, :i].detach()
        assert torch.equal(experts.gate[j], encode_bytes(exact, "Q8_0").reshape(-1))


def test_stacked_fp8_experts(fp8_model, tmp_path):
    """Experts saved stacked (transformers 5: gate_up_proj, down_proj and their _scale_inv per
    expert) read one expert at a time: as F32 equal to the reference; in the default Q4_K the same
    blocks, so the same logits, as the same model saved one tensor per expert."""
    model = make_fp8_model(tmp_path, stacked=True)
    from hymoe.loader.safetensors_dir import SafetensorsDir

    assert "model.layers.1.mlp.experts.gate_up_proj_scale_inv" in SafetensorsDir(tmp_path)
    with torch.no_grad():
        want = model(torch.tensor([IDS])).logits[0].float()
    got = hymoe.load(tmp_path, dtype="float32", progress=False, experts_format="F32").logits(IDS)
    assert _rel(got, want) <= 1e-4
    per_expert = hymoe.load(fp8_model[0], dtype="float32", progress=False).logits(IDS)
    assert torch.equal(hymoe.load(tmp_path, dtype="float32", progress=False).logits(IDS), per_expert)
    converted = convert(tmp_path, tmp_path / "m.gguf", type="F32", experts_type="Q8_0", progress=False)
    assert _rel(hymoe.load(converted, dtype="float32", progress=False).logits(IDS), want) < 0.02


def test_converted_gguf_agrees(fp8_model, tmp_path):
    from hymoe.loader.gguf_file import GGUFModelFile

    path, want, _ = fp8_model
    out = convert(path, tmp_path / "m.gguf", type="F32", experts_type="Q8_0", progress=False)
    t = GGUFModelFile(out).tensors
    assert t["blk.1.ffn_gate_exps.weight"].format == "Q8_0" and t["blk.0.ffn_down.weight"].format == "F32"
    assert not any("scale" in name for name in t)
    got = hymoe.load(out, dtype="float32", progress=False).logits(IDS)
    assert _rel(got, want) < 0.02


def test_per_tensor_scales(tmp_path):
    model = make_fp8_model(tmp_path, per_tensor=True)
    with torch.no_grad():
        want = model(torch.tensor([IDS])).logits[0].float()
    got = hymoe.load(tmp_path, dtype="float32", progress=False, experts_format="F32").logits(IDS)
    assert _rel(got, want) <= 1e-4


def _edit(src, dst, tensors=None, config=None):
    """A copy of the FP8 directory with some tensors or config.json's quantization_config changed."""
    from safetensors.torch import load_file

    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    for k, v in (tensors or {}).items():
        if v is None:
            state.pop(k)
        else:
            state[k] = v
    save_file(state, dst / "model.safetensors")
    cfg = json.loads((dst / "config.json").read_text())
    if config is not None:
        cfg = {k: v for k, v in {**cfg, "quantization_config": config}.items() if v != "drop"}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


W = "model.layers.0.self_attn.q_a_proj.weight"


@pytest.mark.parametrize("tensors,config,match", [
    ({W + "_scale_inv": torch.ones(2, 1)}, None, r"scale .*q_a_proj.weight_scale_inv has shape \[2, 1\], expected \[1, 2\]"),
    ({W + "_scale_inv": None}, None, r"float8 tensor .*q_a_proj.weight has no .*_scale_inv beside it"),
    (None, "drop", "holds float8 weights but config.json has no quantization_config"),
    (None, {"quant_method": "fp8", "weight_block_size": [128]}, "weight_block_size must be two positive integers"),
    ({"model.layers.0.mlp.gate_proj.weight": torch.zeros(320, 256), "model.layers.0.mlp.gate_proj.weight_scale_inv": None,
      "model.norm.weight_scale_inv": torch.ones(1)}, None, "scale model.norm.weight_scale_inv belongs to no float8 weight"),
])
def test_bad_fp8_checkpoints_are_refused_in_one_line(fp8_model, tmp_path, tensors, config, match):
    path = _edit(fp8_model[0], tmp_path / "bad", tensors, config)
    with pytest.raises(HymoeError, match=match) as e:
        hymoe.load(path, dtype="float32", progress=False)
    assert "\n" not in str(e.value)


def test_inspect_prices_fp8_experts_as_they_are_held(fp8_model):
    """inspect reads headers only; an FP8 checkpoint's experts are held re-encoded (Q4_K), not as FP8."""
    from hymoe.inspect import inspect_model, report

    d = inspect_model(fp8_model[0], "cpu")
    experts = d["groups"]["routed experts"]
    assert set(experts["formats"]) == {"float8_e4m3fn"}
    assert d["devices"]["cpu"] == d["dense_bytes_placed"] + d["kv_bytes"] + experts["params"] * 144 // 256
    assert "FP8: re-encoded to Q4_K at load" in report(d)
