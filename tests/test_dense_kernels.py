"""The native engine's dense-part kernels against independent references: block-format linears
against gguf-py's dequantized matmul, decode attention, RMSNorm and routing against hymoe's torch
layers (themselves checked against transformers in test_models), on every ISA path the CPU has."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf.quants import dequantize, quantize

from hymoe.config import from_hf_dict
from hymoe.errors import HymoeError
from hymoe.experts import native
from hymoe.experts.native_attention import NativeGqaAttention
from hymoe.experts.native_linear import NativeLinear, NativeRMSNorm, NativeRouter
from hymoe.kv.cache import KVCache, Step, slots_of
from hymoe.layers.attention import GQAttention
from hymoe.layers.linear import QuantLinear
from hymoe.layers.norm import RMSNorm
from hymoe.layers.rope import Rope
from hymoe.layers.router import Router
from hymoe.quant.formats import qtype
from hymoe.quant.kquants import QUANTIZERS
from hymoe.quant.torch_dequant import dequantize_torch
from quant_utils import dequant, random_weights
from test_native_kernels import kernel_activations

pytestmark = pytest.mark.skipif(native.library() is None, reason="native kernels not built")


@pytest.fixture(scope="module")
def engine():
    return native.NativeEngine(2, is_async=False)


@pytest.mark.parametrize("fmt", ["Q5_K", "Q6_K"])
def test_torch_dequantizers_of_the_dense_formats_equal_gguf_py(fmt):
    w = np.random.default_rng(2).standard_normal((6, 512)).astype(np.float32) * 3
    raw = np.ascontiguousarray(QUANTIZERS[fmt](w))
    got = dequantize_torch(torch.from_numpy(raw).view(torch.uint8).reshape(-1), fmt, (6, 512), torch.float32)
    assert np.array_equal(got.numpy(), dequantize(raw, qtype(fmt)))


@pytest.mark.parametrize("fmt", ["F32", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "TQ2_0"])
@pytest.mark.parametrize("tokens", [1, 7, 70])
def test_native_linear_of_several_parts_equals_their_dequantized_matmuls(engine, isa, fmt, tokens):
    """Three matrices sharing an input (as q, k, v) in one call; 70 tokens cross a token block."""
    n = 512
    parts = [random_weights(fmt, rows, n, seed=rows + tokens) for rows in (48, 16, 20)]
    call = NativeLinear(engine, n, [(fmt, w.shape[0], w) for w in parts])
    x = torch.randn(tokens, n, generator=torch.Generator().manual_seed(tokens))
    xq = kernel_activations(x, fmt).double()
    dense = torch.cat([dequant(fmt, w, n) for w in parts]).double()
    got = call(x).double()
    assert got.shape == (tokens, 84)
    assert ((got - xq @ dense.T).abs() / (xq.abs() @ dense.abs().T)).max().item() < 2e-5


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("tokens", [1, 70])
def test_native_linear_takes_every_row_once_in_thread_ranges(threads, tokens):
    """Each thread's contiguous range of units, then the others' leftovers (Pool::parallel_for's
    by_thread): every row computed once, the same bits as units from one shared counter."""
    n, engine = 512, native.NativeEngine(threads, is_async=False)
    parts = [random_weights("Q4_K", rows, n, seed=rows) for rows in (400, 48, 37 * 16)]
    call = NativeLinear(engine, n, [("Q4_K", w.shape[0], w) for w in parts])
    x = torch.randn(tokens, n, generator=torch.Generator().manual_seed(tokens))
    outs = []
    for by_thread in (1, 0):  # by thread first: a row it missed would hold no earlier result
        with native.tuned(linear_by_thread=by_thread):
            outs.append(call(x).clone())
    want = kernel_activations(x, "Q4_K").double() @ torch.cat([dequant("Q4_K", w, n) for w in parts]).double().T
    assert ((outs[0].double() - want).abs().max() / want.abs().max()).item() < 1e-5
    assert torch.equal(outs[0], outs[1])


def test_quant_linear_without_a_kernel_dequantizes_with_torch():
    w = np.random.default_rng(3).standard_normal((24, 256)).astype(np.float32)
    raw = torch.from_numpy(np.ascontiguousarray(quantize(w, qtype("Q8_0")))).view(torch.uint8)
    bias = torch.randn(24)
    layer = QuantLinear(256, 24, "Q8_0", raw, bias)
    x = torch.randn(2, 3, 256)
    want = x @ torch.from_numpy(dequantize(raw.numpy(), qtype("Q8_0"))).T + bias
    assert torch.allclose(layer(x), want, atol=1e-5)


@pytest.mark.parametrize("bad", ["width", "dtype", "bytes", "format"])
def test_native_linear_refuses_bad_tensors_before_c(engine, bad):
    w = random_weights("Q8_0", 16, 256, seed=1)
    with pytest.raises(HymoeError):
        if bad == "bytes":
            NativeLinear(engine, 256, [("Q8_0", 16, w[:15])])
        elif bad == "format":
            NativeLinear(engine, 256, [("Q3_K", 16, w)])
        elif bad == "dtype":
            NativeLinear(engine, 256, [("Q8_0", 16, w.view(torch.int8))])
        else:
            NativeLinear(engine, 256, [("Q8_0", 16, w)])(torch.randn(2, 128))


def test_native_rms_norm_equals_torch(engine):
    norm = RMSNorm(320, 1e-5)
    norm.weight.data = torch.randn(320)
    x = torch.randn(3, 2, 320) * 4
    assert torch.allclose(NativeRMSNorm(engine.lib, norm.weight, norm.eps)(x), norm(x), rtol=1e-5, atol=1e-5)


ROUTERS = {
    "softmax": dict(model_type="qwen3_moe", num_experts=16, num_experts_per_tok=4, norm_topk_prob=True),
    "softmax unnormalised": dict(model_type="qwen2_moe", num_experts=12, num_experts_per_tok=3),
    "sigmoid, groups, bias": dict(model_type="deepseek_v3", n_routed_experts=32, num_experts_per_tok=8, n_group=8,
                                  topk_group=4, routed_scaling_factor=2.5, norm_topk_prob=True),
    "group max (V2)": dict(model_type="deepseek_v2", n_routed_experts=16, num_experts_per_tok=4, n_group=4,
                           topk_group=2, topk_method="group_limited_greedy", routed_scaling_factor=1.5),
}


@pytest.mark.parametrize("name", list(ROUTERS))
def test_native_router_equals_torch(engine, name):
    mla = dict(kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, q_lora_rank=None)
    cfg = from_hf_dict(dict(ROUTERS[name], hidden_size=64, vocab_size=32, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=64, moe_intermediate_size=32, **mla))
    router = Router(cfg)
    gen = torch.Generator().manual_seed(4)
    router.weight.data = torch.randn(router.weight.shape, generator=gen)
    if hasattr(router, "e_score_correction_bias"):
        router.e_score_correction_bias.data = torch.rand(cfg.num_experts, generator=gen) * 0.3
    x = torch.randn(9, 64, generator=gen)
    want_ids, want_w = router(x)
    ids, weights = NativeRouter(engine, router)(x)
    assert torch.equal(ids, want_ids)
    assert torch.allclose(weights, want_w, rtol=1e-5, atol=1e-6)



def test_native_router_ranks_softmax_groups_as_configured(engine):
    """Softmax groups ranked by their best score (HF's DeepSeek-V2) or the sum of their best two
    (llama.cpp, for every deepseek2 GGUF): the native router chooses as the torch one under each."""
    mla = dict(kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, q_lora_rank=None)
    cfg = from_hf_dict(dict(model_type="deepseek_v2", n_routed_experts=16, num_experts_per_tok=4, n_group=8,
                            topk_group=3, topk_method="group_limited_greedy", hidden_size=64, vocab_size=32,
                            num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                            moe_intermediate_size=32, **mla))
    router = Router(cfg)
    gen = torch.Generator().manual_seed(4)
    router.weight.data = torch.randn(router.weight.shape, generator=gen) * 0.1  # flat scores: the rules differ
    x = torch.randn(32, 64, generator=gen)
    chosen = {}
    for rule in ("max", "top2-sum"):
        cfg.group_score = rule
        want_ids, want_w = router(x)
        ids, weights = NativeRouter(engine, router)(x)
        assert torch.equal(ids, want_ids), rule
        assert torch.allclose(weights, want_w, rtol=1e-5, atol=1e-6), rule
        chosen[rule] = ids.sort(-1).values
    assert (chosen["max"] != chosen["top2-sum"]).any()

def _gqa(is_qk_norm: bool, is_interleaved: bool, heads: int = 6, head_dim: int = 32) -> GQAttention:
    cfg = from_hf_dict(dict(model_type="qwen3_moe", hidden_size=96, num_attention_heads=heads, num_key_value_heads=2,
                            head_dim=head_dim, vocab_size=32, num_hidden_layers=1, intermediate_size=64,
                            moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2))
    cfg.is_qk_norm = is_qk_norm
    cfg.rope.is_interleaved = is_interleaved
    attn = GQAttention(cfg, Rope(cfg.rope, cfg.head_dim))
    gen = torch.Generator().manual_seed(5)
    for p in attn.parameters():
        p.data = torch.randn(p.shape, generator=gen) * (1.0 if p.dim() == 1 else 0.2)
    return attn


@pytest.mark.parametrize("is_qk_norm,is_interleaved,window,cache,heads,head_dim", [
    (True, False, 0, torch.float32, 6, 32), (False, True, 0, torch.float32, 6, 32), (True, False, 5, torch.float32, 6, 32),
    (True, False, 0, torch.float16, 6, 32), (False, True, 6, torch.float16, 6, 32),
    (True, False, 0, torch.bfloat16, 6, 32),
    # 4 heads a kv head, 64 wide: the grouped path of the vector kernels (attend.h)
    (True, False, 0, torch.float32, 8, 64), (False, True, 5, torch.float16, 8, 64),
    (False, True, 5, torch.bfloat16, 8, 64)])
def test_native_decode_attention_equals_the_torch_layer(engine, isa, is_qk_norm, is_interleaved, window, cache,
                                                        heads, head_dim):
    """Two rows through shuffled block tables (blocks of 7 positions, which no step's length is a
    multiple of), a prompt, steps of 1 and 3 tokens, a long chunk (and a sliding window), a step; a
    float16 cache holds what torch's rounding stores."""
    _check_against_torch(engine, is_qk_norm, is_interleaved, window, cache, heads, head_dim)


@pytest.mark.parametrize("cache,heads,head_dim", [(torch.float32, 6, 32), (torch.float16, 8, 64),
                                                   (torch.bfloat16, 8, 64)])
def test_native_attention_in_short_calls_equals_the_torch_layer(engine, isa, cache, heads, head_dim):
    """A token's positions in 3 chunks a thread (Tuning::attn_chunks; at decode the unit whose chunk
    holds the token's position stores its key and value) and attend calls of 5 (attn_call_rows):
    each call's pieces end mid-block, and every call after the first is merged in; no prefetch."""
    with native.tuned(attn_call_rows=5, attn_ahead=0, attn_chunks=3) as old:
        assert min(old.values()) >= 0
        _check_against_torch(engine, True, False, 0, cache, heads, head_dim)


@pytest.mark.parametrize("ymm", [0, 1])
@pytest.mark.parametrize("cache,heads,head_dim",
                         [(torch.float16, 6, 32), (torch.float16, 8, 64), (torch.float32, 8, 64),
                          (torch.bfloat16, 8, 64)])
def test_avx512_decode_attention_in_either_vector_width(engine, ymm, cache, heads, head_dim):
    """AVX512's attend kernel over 16-float vectors or over 8-float ones in 32 registers, 4 heads a
    batch (Tuning::attn_ymm; its default is the CPU's): both paths, grouped and per head."""
    if "avx512" not in native.isa_name():
        pytest.skip("no AVX512 on this CPU")
    with native.tuned(attn_ymm=ymm) as old:
        assert old["attn_ymm"] in (0, 1)
        _check_against_torch(engine, True, False, 0, cache, heads, head_dim)


def _check_against_torch(engine, is_qk_norm, is_interleaved, window, cache, heads, head_dim):
    attn = _gqa(is_qk_norm, is_interleaved, heads, head_dim)
    attn.is_sliding = bool(window)
    caches = [KVCache([attn.cache_entries()], 16, 7, cache).layers[0] for _ in range(2)]
    gen = torch.Generator().manual_seed(6)
    table = torch.randperm(16, generator=gen).view(2, 8)  # [B, M]: 8 blocks of 7 hold each row's 54 positions
    start = 0
    for t in (9, 1, 3, 1, 40, 1):
        positions = torch.arange(start, start + t).repeat(2, 1)
        step = Step.build(positions, start + t, table, slots_of(positions, table, 7), window or None)
        x = torch.randn(2, t, 96, generator=gen)
        cos_sin = attn.rope.cos_sin(positions, torch.float32)
        attn.kernel = None
        want = attn(x, step, caches[0], cos_sin)
        attn.kernel = NativeGqaAttention(engine, attn, window)
        got = attn(x, step, caches[1], cos_sin)
        assert (got - want).abs().max().item() < 1e-5 * want.abs().max().item(), (t, start)  # float rounding
        start += t
    assert torch.allclose(caches[0]["k"].float(), caches[1]["k"].float(), atol=1e-5)
    assert torch.equal(caches[0]["v"], caches[1]["v"])  # stored as given (rounded to fp16 or bf16 alike)
