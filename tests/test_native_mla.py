"""MLA on the native engine. The per-head product (csrc/linear.cpp head_linear_run,
NativeHeadLinear): each head's matrix against that head's own input, as MLA's absorbed
up-projections read them on the CPU, against gguf-py's dequantized weights. The latent attention
(csrc/attention.cpp with prepared queries, NativeLatentAttention) against a softmax over the paged
cache's rows written out here. MLA layers on the CPU taking both, against transformers (and
test_models', test_gguf_llama_cpp's bounds)."""
from __future__ import annotations

import pytest
import torch

import hymoe
from hymoe.errors import HymoeError
from hymoe.experts import native
from hymoe.experts.native_attention import NativeLatentAttention
from hymoe.experts.native_linear import NativeHeadLinear
from hymoe.kv.cache import Step
from hymoe.layers.mla import MLAttention
from hymoe.quant.formats import qtype
from quant_utils import dequant, random_weights
from test_native_kernels import kernel_activations
from tiny_models import make_model

pytestmark = pytest.mark.skipif(native.library() is None, reason="native kernels not built")


@pytest.fixture(scope="module")
def engine():
    return native.NativeEngine(2, is_async=False)


@pytest.mark.parametrize("fmt,n", [("F32", 96), ("Q8_0", 128), ("Q4_K", 256)])
@pytest.mark.parametrize("tokens", [1, 3, 70])
def test_each_head_takes_its_own_matrix_and_input(engine, isa, fmt, n, tokens):
    """70 tokens cross a token block; every head's rows differ, so a head reading another's
    matrix or input fails."""
    heads, rows = 5, 24
    w = random_weights(fmt, heads * rows, n, seed=tokens + n)
    call = NativeHeadLinear(engine, fmt, heads, rows, n, w.reshape(-1))
    x = torch.randn(tokens, heads, n, generator=torch.Generator().manual_seed(tokens))
    xq = kernel_activations(x.reshape(-1, n), fmt).double().view(tokens, heads, n)
    dense = dequant(fmt, w, n).double().view(heads, rows, n)
    want = torch.einsum("thn,hrn->thr", xq, dense)
    scale = torch.einsum("thn,hrn->thr", xq.abs(), dense.abs())
    got = call(x).double()
    assert got.shape == (tokens, heads, rows)
    assert ((got - want).abs() / scale).max().item() < 2e-5


def test_inputs_of_any_leading_shape_and_layout(engine):
    heads, rows, n = 3, 8, 64
    w = random_weights("F32", heads * rows, n, seed=4)
    call = NativeHeadLinear(engine, "F32", heads, rows, n, w.reshape(-1))
    x = torch.randn(2, heads, 5, n).transpose(1, 2)  # [B, T, N, n], strided as MLA's queries are
    want = torch.einsum("bthn,hrn->bthr", x, dequant("F32", w, n).view(heads, rows, n))
    torch.testing.assert_close(call(x), want, rtol=1e-5, atol=1e-5)
    assert call(torch.empty(0, heads, n)).shape == (0, heads, rows)


@pytest.mark.parametrize("bad", ["input", "bytes", "dtype", "format", "width"])
def test_bad_tensors_are_refused_before_c(engine, bad):
    w = random_weights("Q8_0", 4 * 8, 64, seed=1).reshape(-1)
    with pytest.raises(HymoeError):
        if bad == "bytes":
            NativeHeadLinear(engine, "Q8_0", 4, 8, 64, w[:-1])
        elif bad == "dtype":
            NativeHeadLinear(engine, "Q8_0", 4, 8, 64, w.view(torch.int8))
        elif bad == "format":  # a format without kernels
            NativeHeadLinear(engine, "Q8_1", 4, 8, 64, w)
        elif bad == "width":
            NativeHeadLinear(engine, "Q8_0", 4, 16, 40, w[:4 * 16 * 34])
        else:
            NativeHeadLinear(engine, "Q8_0", 4, 8, 64, w)(torch.randn(2, 3, 64))


def _products(llm) -> list:
    return [m for m in llm.model.modules() if isinstance(m, MLAttention)]


IDS = [5, 17, 3, 99, 42, 7, 1, 64]


def test_mla_of_a_float_checkpoint_takes_float32_rows_and_equals_transformers(tmp_path):
    """float32 rows, the only copy of the up-projections (the float weights go): the logits equal
    transformers' as test_models' bound has them."""
    hf = make_model("deepseek_v3", tmp_path)
    llm = hymoe.load(tmp_path, dtype="float32", progress=False)
    layers = _products(llm)
    assert layers and all(m.up_kernels is not None and m.kv_b_proj is None and m.attend_kernel is not None
                          for m in layers)
    assert {k._args.fmt for m in layers for k in m.up_kernels} == {int(qtype("F32"))}
    with torch.no_grad():
        ref = hf(torch.tensor([IDS])).logits[0].float()
    assert (llm.logits(IDS) - ref).abs().max().item() <= 1e-4


def test_mla_of_a_gguf_file_reads_its_attn_k_b_and_attn_v_b_in_place(gguf_model, monkeypatch):
    """A file of llama.cpp's split: the products read its attn_k_b and attn_v_b as gguf-py reads them
    (their formats, their bytes: no copy re-encoded); the logits stay within the activations'
    rounding of torch's products over the same weights (the file loaded without the native products)."""
    from gguf import GGUFReader

    _, path = gguf_model("deepseek_v3", "Q4_0")  # not Q8_0, which a copy re-encoded would also hold
    stored = {t.name: t for t in GGUFReader(path).tensors}
    llm = hymoe.load(path, progress=False)
    layers = _products(llm)
    assert layers and all(m.up_kernels is not None for m in layers)
    for i, m in enumerate(layers):
        for kernel, part in zip(m.up_kernels, ("attn_k_b", "attn_v_b")):
            t = stored[f"blk.{i}.{part}.weight"]
            assert kernel._args.fmt == int(t.tensor_type)
            assert kernel.weight.numpy().tobytes() == t.data.tobytes()
    assert all(k._args.fmt == int(qtype("Q4_0")) for m in layers for k in m.up_kernels)
    got = llm.logits(IDS)
    monkeypatch.setattr("hymoe.placement.kernels._mla_up_kernels", lambda engine, mla, copies: None)
    want = hymoe.load(path, progress=False).logits(IDS)
    assert ((got - want).abs().max() / want.abs().max()).item() < 2e-2
    assert not torch.equal(got, want)


def test_bfloat16_mla_keeps_torch(tmp_path):
    make_model("deepseek_v3", tmp_path)
    llm = hymoe.load(tmp_path, dtype="bfloat16", progress=False)
    assert all(m.up_kernels is None for m in _products(llm))


def test_bench_counts_the_rows_a_step_reads(tmp_path, monkeypatch):
    """float32 rows hold the bytes of the float32 weights torch's products read: bench's bytes per
    decode step (the bandwidth fraction's numerator) are the same either way."""
    from hymoe.bench.e2e import cpu_bytes_per_token

    make_model("deepseek_v3", tmp_path)
    native_rows = cpu_bytes_per_token(hymoe.load(tmp_path, dtype="float32", progress=False))
    monkeypatch.setattr("hymoe.placement.kernels._mla_up_kernels", lambda engine, mla, copies: None)
    assert cpu_bytes_per_token(hymoe.load(tmp_path, dtype="float32", progress=False)) == native_rows


def _paged(b: int, lens: list[int], tokens: int, bs: int, width: int, dtype, seed: int):
    """A cache [blocks, bs, width] of random rows, each row's blocks shuffled through its table, and
    the step of `tokens` new tokens a row ending at lens[b] (their rows already written)."""
    g = torch.Generator().manual_seed(seed)
    per_row = -(-max(lens) // bs)
    num_blocks = b * per_row + 1
    cache = torch.randn(num_blocks, bs, width, generator=g).to(dtype)
    table = torch.randperm(num_blocks - 1, generator=g)[: b * per_row].view(b, per_row)
    positions = torch.stack([torch.arange(n - tokens, n) for n in lens])  # [B, T]
    slots = table.gather(1, positions // bs) * bs + positions % bs
    return cache, Step.build(positions, max(lens), table, slots)


def _softmax_reference(query, cache, step, rank: int, scale: float) -> torch.Tensor:
    b, n, t, d = query.shape
    flat = cache.float().view(-1, d)
    out = torch.empty(b, n, t, rank, dtype=torch.float64)
    for i in range(b):
        for j in range(t):
            pos = int(step.positions[i, j])
            upto, bs = torch.arange(pos + 1), cache.shape[1]
            keys = flat[step.table[i, upto // bs] * bs + upto % bs].double()  # [S, d]
            p = torch.softmax(query[i, :, j].double() @ keys.T * scale, dim=-1)  # [N, S]
            out[i, :, j] = p @ keys[:, :rank]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("heads,rank,rope,tokens", [(8, 128, 64, 1), (8, 128, 64, 5), (4, 32, 8, 3)])
def test_latent_attention_equals_a_softmax_over_the_paged_rows(engine, isa, dtype, heads, rank, rope, tokens):
    """Rows of unequal lengths over shuffled blocks; 8 heads of 192 take the grouped path, 4 of 40
    the per-head one."""
    b, lens, bs, width = 2, [70, 37], 16, rank + rope
    cache, step = _paged(b, lens, tokens, bs, width, dtype, seed=tokens)
    query = torch.randn(b, heads, tokens, width, generator=torch.Generator().manual_seed(9))
    scale = width ** -0.5
    got = NativeLatentAttention(engine, heads, rank, rope, scale)(query, step, cache)
    want = _softmax_reference(query, cache, step, rank, scale)
    assert got.shape == (b, heads, tokens, rank)
    assert (got.double() - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("bad", ["query", "cache", "dtype", "table", "block"])
def test_latent_attention_refuses_bad_tensors_before_c(engine, bad):
    cache, step = _paged(1, [20], 1, 16, 40, torch.float32, seed=1)
    query = torch.randn(1, 4, 1, 40)
    call = NativeLatentAttention(engine, 4, 32, 8, 0.1)
    with pytest.raises(HymoeError):
        if bad == "query":
            call(torch.randn(1, 4, 1, 39), step, cache)
        elif bad == "cache":
            call(query, step, cache[..., :39])
        elif bad == "dtype":
            call(query.double(), step, cache)
        elif bad == "block":  # past the cache: the C side's check
            step.table[0, 0] = cache.shape[0]
            call(query, step, cache)
        else:
            step.table = step.table.int()
            call(query, step, cache)


def test_mla_of_a_gguf_file_with_kv_b_whole_takes_q8_0_rows_where_they_split(gguf_model, tmp_path):
    """attn_kv_b stored whole (older files): Q8_0 rows where a row splits into blocks of 32, float32
    otherwise, and the logits as the split file's."""
    from gguf import GGMLQuantizationType
    from gguf_edit import rewrite

    from hymoe.loader.gguf_file import GGUFModelFile
    from hymoe.loader.gguf_meta import config_from_gguf
    from hymoe.loader.gguf_names import merge_kv_b
    from hymoe.loader.gguf_source import dequantize_tensor

    _, path = gguf_model("deepseek_v3", "Q8_0")
    g = GGUFModelFile(path)
    cfg = config_from_gguf(g.metadata, g.tensors, path)

    def join(name, info):  # as test_gguf's legacy file: attn_kv_b whole, float32
        if name.endswith("attn_k_b.weight"):
            kv = merge_kv_b(dequantize_tensor(info), dequantize_tensor(g.tensors[name.replace("k_b", "v_b")]), cfg)
            return [(name.replace("attn_k_b", "attn_kv_b"), kv.numpy(), GGMLQuantizationType.F32)]
        return [] if name.endswith("attn_v_b.weight") else None

    rewrite(path, tmp_path / "whole.gguf", tensors=join)
    llm = hymoe.load(tmp_path / "whole.gguf", progress=False)
    for m in _products(llm):
        for kernel, n in zip(m.up_kernels, (m.nope_dim, m.rank)):  # keys' rows of Dn, values' of R
            assert kernel._args.fmt == int(qtype("Q8_0" if n % 32 == 0 else "F32"))
    want = hymoe.load(path, progress=False).logits(IDS)
    assert ((llm.logits(IDS) - want).abs().max() / want.abs().max()).item() < 2e-2


def test_inspect_prices_the_split_files_blocks_as_the_cpu_holds_them(gguf_model):
    """Every non-expert tensor of a Q4_0 file stays as stored on the CPU in float32 (the linears' and
    embedding's blocks, float32 norms and routers, attn_k_b and attn_v_b read in place): the plan
    places exactly the stored bytes."""
    from hymoe.inspect import inspect_model

    _, path = gguf_model("deepseek_v3", "Q4_0")
    d = inspect_model(path, "cpu", "float32", 512)
    stored = sum(g["bytes"] for name, g in d["groups"].items() if name != "routed experts")
    assert d["dense_bytes_placed"] == stored


def test_a_bfloat16_cache_keeps_torchs_latent_attention(tmp_path):
    """float32 layers over a bfloat16 cache, which the native job does not read: torch's attention,
    within the cache's rounding of the float32 cache's logits."""
    make_model("deepseek_v3", tmp_path)
    want = hymoe.load(tmp_path, dtype="float32", progress=False).logits(IDS)
    got = hymoe.load(tmp_path, dtype="float32", kv_dtype="bfloat16", progress=False).logits(IDS)
    assert ((got - want).abs().max() / want.abs().max()).item() < 5e-2
