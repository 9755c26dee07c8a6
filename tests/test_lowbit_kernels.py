"""The native kernels of llama.cpp's low-bit and older formats (hymoe/csrc/lowbit.h) against gguf-py's
own dequantization, on every path the CPU has: per-row kernels (decode) and batch tiles."""
import pytest
import torch

from hymoe.experts import native
from hymoe.quant.formats import qtype
from quant_utils import dequant, random_weights
from test_native_kernels import quantized_activations

pytestmark = pytest.mark.skipif(native.library() is None, reason="native kernels not built")

LOWBIT = ["Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "Q2_K", "Q3_K", "IQ4_XS", "IQ2_XXS", "IQ2_XS", "IQ2_S",
          "IQ3_XXS", "IQ3_S", "IQ1_M"]
ACT256 = {"Q2_K", "Q3_K", "IQ4_XS"}  # decoders with kAct256: activations per 256, as llama.cpp's Q8_K (lowbit.h)


def per32(x: torch.Tensor) -> torch.Tensor:
    """x as these kernels multiply it: int8 per block of 32, scale amax / 127 (lowbit.h)."""
    blocks = x.reshape(x.shape[0], -1, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    q = torch.where(d > 0, torch.round(blocks / d.clamp_min(1e-30)), torch.zeros_like(blocks))
    return (q * d).reshape_as(x)


def activations(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """x as fmt's kernels multiply it: per 256 for the formats with kAct256, else per 32."""
    return quantized_activations(x, 256) if fmt in ACT256 else per32(x)


@pytest.mark.parametrize("fmt", LOWBIT)
def test_format_is_native(fmt):
    assert native.library().hymoe_has_format(int(qtype(fmt))) == 1


@pytest.mark.parametrize("fmt", LOWBIT)
@pytest.mark.parametrize("tokens,rows", [(1, 12), (3, 12), (9, 12), (2, 40), (6, 40), (13, 40), (64, 40)])
def test_kernels_equal_gguf_dequantized_matmul(fmt, tokens, rows, isa):
    """12 rows: the per-row kernels; 40 rows from 2 tokens (AVX2) or 6 (AVX512): two tiles of 16
    and 8 rows per row. Only float rounding may separate them from the exact sum."""
    n = 768
    w = random_weights(fmt, rows, n, seed=tokens + rows)
    x = torch.randn(tokens, n, generator=torch.Generator().manual_seed(tokens))
    xq = activations(x, fmt).double()
    dense = dequant(fmt, w, n).double()
    got = native.rows(fmt, w, x).double()
    scale = xq.abs() @ dense.abs().T
    assert ((got - xq @ dense.T).abs() / scale).max().item() < 2e-5
