"""Native expert kernels against gguf-py's own dequantization, on every path the CPU has."""
import pytest
import torch

from hymoe.experts import native
from quant_utils import dequant, random_weights

pytestmark = pytest.mark.skipif(native.library() is None, reason="native kernels not built")

FORMATS = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "IQ1_S", "TQ2_0", "TQ1_0"]
IS_FLOAT = {"F32", "F16", "BF16"}
K_QUANTS = {"Q4_K", "Q5_K", "Q6_K", "TQ2_0", "TQ1_0"}  # activations per 256


def quantized_activations(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """What the kernels do to activations: int8 per block (256 for the K-quants, else 32), scale = amax / 127."""
    blocks = x.reshape(x.shape[0], -1, block)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    q = torch.where(d > 0, torch.round(blocks / d.clamp_min(1e-30)), torch.zeros_like(blocks))
    return (q * d).reshape_as(x)


def kernel_activations(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """x as the kernels of fmt multiply it: itself for F32/F16, rounded to bf16 for BF16 weights (as
    ggml and torch's bf16 GEMM do), int8 per block for the quantized formats."""
    if fmt == "BF16":
        return x.bfloat16().float()
    return x if fmt in IS_FLOAT else quantized_activations(x, 256 if fmt in K_QUANTS else 32)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tokens", [1, 3, 9])
def test_rows_equal_gguf_dequantized_matmul(fmt, tokens, isa):
    _check_rows(fmt, tokens, 768)


@pytest.mark.parametrize("fmt", ["Q8_0", "Q4_0"])
def test_rows_of_64s_that_are_not_256s(fmt, isa):
    """Rows of whole 256s take Q4_0's unit-of-256 kernel on AVX512; these take its 64-weight one."""
    _check_rows(fmt, 1, 832)


@pytest.mark.parametrize("fmt", ["Q4_K", "Q5_K"])
@pytest.mark.parametrize("grouped,lanes", [(1, 1), (1, 0), (0, 1)])
def test_one_token_in_groups_of_four_blocks(fmt, grouped, lanes, isa):
    """At one token AVX512 takes Q4_K and Q5_K blocks 4 at a time in address order (kq45_groups.h),
    AVX2 2 at a time (kernels_avx2.cpp's qk45_pairs): groups that span rows (rows of 1-3 blocks),
    rows that end a group early, a last group short of blocks. Tuning::kq45_groups = 0 takes the
    per-row kernels, kq4_lanes = 0 Q4_K's groups on the paired activations instead of the lanes
    copy; all must give the exact sum."""
    with native.tuned(kq45_groups=grouped, kq4_lanes=lanes) as old:
        assert min(old.values()) >= 0
        for n, rows in [(256, 1), (256, 7), (512, 3), (768, 5), (768, 13), (1024, 2), (2048, 9), (4096, 3)]:
            _check_rows(fmt, 1, n, rows)


def _check_rows(fmt: str, tokens: int, n: int, rows: int = 12) -> None:
    w = random_weights(fmt, rows, n, seed=tokens)
    x = torch.randn(tokens, n, generator=torch.Generator().manual_seed(tokens))
    xq = kernel_activations(x, fmt)
    ref = xq.double() @ dequant(fmt, w, n).double().T  # the exact sum over gguf-py's weights
    got = native.rows(fmt, w, x).double()
    # only float rounding separates the two: relative to the size of the terms summed
    scale = (xq.double().abs() @ dequant(fmt, w, n).double().abs().T)
    assert ((got - ref).abs() / scale).max().item() < 2e-5


@pytest.mark.parametrize("fmt", ["Q8_0", "Q4_0", "Q4_K", "Q5_K", "IQ1_S", "TQ2_0", "TQ1_0", "BF16", "F16", "F32"])
@pytest.mark.parametrize("tokens", [1, 2, 5, 6, 13, 64])
def test_batch_tiles_equal_gguf_dequantized_matmul(fmt, tokens, isa):
    """From 6 tokens (AVX512) or 2 (AVX2) the kernels repack 16 rows at a time into a tile (the 8
    rows left over take the per-row kernel); BF16 32 rows at a time (AVX512-BF16; the
    last 8 zero-padded) from 2; F32, F16 (and BF16 without AVX512-BF16) 16 rows in f32 from 2.
    Every path must give the same exact sum."""
    n, rows = 512, 40
    w = random_weights(fmt, rows, n, seed=tokens + 100)
    x = torch.randn(tokens, n, generator=torch.Generator().manual_seed(tokens + 100))
    xq = kernel_activations(x, fmt)
    dense = dequant(fmt, w, n).double()
    ref = xq.double() @ dense.T
    got = native.rows(fmt, w, x).double()
    assert ((got - ref).abs() / (xq.double().abs() @ dense.abs().T)).max().item() < 2e-5


@pytest.mark.parametrize("fmt", sorted(set(FORMATS) - IS_FLOAT))
def test_activation_quantization_error_is_bounded(fmt):
    n = 1024
    w = random_weights(fmt, 16, n, seed=5)
    x = torch.randn(4, n, generator=torch.Generator().manual_seed(5))
    ref = x @ dequant(fmt, w, n).T
    got = native.rows(fmt, w, x)
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 0.02  # int8 activations: ~0.5% typical
