"""The native per-head product (csrc/linear.cpp head_linear_run, NativeHeadLinear): each head's
matrix against that head's own input, as MLA's absorbed up-projections read them on the CPU,
against gguf-py's dequantized weights; and MLA layers on the CPU taking it (the model's logits
against transformers are test_models' and test_gguf_llama_cpp's)."""
from __future__ import annotations

import pytest
import torch

import hymoe
from hymoe.errors import HymoeError
from hymoe.experts import native
from hymoe.experts.native_linear import NativeHeadLinear
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
        elif bad == "format":
            NativeHeadLinear(engine, "Q3_K", 4, 8, 64, w)
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
    assert layers and all(m.up_kernels is not None and m.kv_b_proj is None for m in layers)
    assert {k._args.fmt for m in layers for k in m.up_kernels} == {int(qtype("F32"))}
    with torch.no_grad():
        ref = hf(torch.tensor([IDS])).logits[0].float()
    assert (llm.logits(IDS) - ref).abs().max().item() <= 1e-4


def test_mla_of_a_gguf_file_takes_q8_0_rows_where_they_split(gguf_model, monkeypatch):
    """Block linears: Q8_0 rows where a row splits into blocks of 32, float32 otherwise; the logits
    stay within Q8_0's rounding of torch's products over the float weights (the same file loaded
    without the native products)."""
    _, path = gguf_model("deepseek_v3", "Q8_0")
    llm = hymoe.load(path, progress=False)
    layers = _products(llm)
    assert layers and all(m.up_kernels is not None for m in layers)
    for m in layers:
        for kernel, n in zip(m.up_kernels, (m.nope_dim, m.rank)):  # keys' rows of Dn, values' of R
            assert kernel._args.fmt == int(qtype("Q8_0" if n % 32 == 0 else "F32"))
    assert any(k._args.fmt == int(qtype("Q8_0")) for m in layers for k in m.up_kernels)
    got = llm.logits(IDS)
    monkeypatch.setattr("hymoe.placement.kernels._mla_up_kernels", lambda engine, mla: None)
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
    monkeypatch.setattr("hymoe.placement.kernels._mla_up_kernels", lambda engine, mla: None)
    assert cpu_bytes_per_token(hymoe.load(tmp_path, dtype="float32", progress=False)) == native_rows
