"""Linear layers and embeddings whose weights stay in a GGUF block format, and `project`, which a
layer calls for the linears that read the same input (fused into one call where placement can).

The weight is uint8 [out, row_bytes] (a view of the GGUF file, or bytes quantized at load). How
it is multiplied is the placement's choice (`kernel`): the native CPU kernels, or, by default and
on any device, the blocks dequantized with torch ops right before the matmul, so memory holds the
quantized weight and one layer's float copy at a time.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hymoe.quant.formats import dequantize, row_bytes
from hymoe.quant.torch_dequant import TORCH_DEQUANT_FORMATS, dequantize_torch

Kernel = Callable[[torch.Tensor], torch.Tensor]  # x [T, in] -> [T, out] (float32 or x's dtype)
# The torch path dequantizes at most this many weights at a time: its float32 intermediates peak at
# DEQUANT_PEAK_BYTES a weight (torch.profiler's memory events, tests/test_quantized_dense.py), so one
# call holds ~0.4 GiB beside the blocks, where DeepSeek-V3's whole head (927 M weights) took ~11 GiB.
DEQUANT_CHUNK = 1 << 25
DEQUANT_PEAK_BYTES = 13


def dequantize_rows(raw: torch.Tensor, fmt: str, n: int, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [R, row_bytes] -> dtype [R, n] on raw's device (gguf-py's decoder on the CPU for formats
    without a torch decoder)."""
    if fmt in TORCH_DEQUANT_FORMATS:
        return dequantize_torch(raw, fmt, (raw.shape[0], n), dtype)
    return dequantize(raw.cpu(), fmt, (raw.shape[0], n)).to(raw.device, dtype)


class QuantLinear(nn.Module):
    """y = x W^T (+ b) with W [out, in] stored as `qweight`, uint8 [out, row_bytes] in format `fmt`."""

    is_mapped = False  # qweight views a file's mapping (models/assemble.py): kept at no memory cost

    def __init__(self, in_features: int, out_features: int, fmt: str, qweight: torch.Tensor,
                 bias: torch.Tensor | None = None):
        super().__init__()
        assert qweight.shape == (out_features, row_bytes(fmt, in_features)), (qweight.shape, fmt)
        self.in_features, self.out_features, self.fmt = in_features, out_features, fmt
        self.register_buffer("qweight", qweight, persistent=False)
        self.register_parameter("bias", None if bias is None else nn.Parameter(bias, requires_grad=False))
        self.kernel: Kernel | None = None  # set by placement; None: dequantize with torch, then matmul
        self.fused: Callable | None = None  # set by placement on the first linear of a fused group

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt}"

    def nbytes(self) -> int:
        return self.qweight.numel()

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """W as a float [out, in] tensor on the weight's device."""
        return dequantize_rows(self.qweight, self.fmt, self.in_features, dtype)

    def _dequantized_matmul(self, flat: torch.Tensor) -> torch.Tensor:
        """flat [T, in] @ W^T, W dequantized DEQUANT_CHUNK weights (whole rows) at a time."""
        rows = max(1, DEQUANT_CHUNK // self.in_features)
        if rows >= self.out_features:
            return F.linear(flat, self.dequantized(flat.dtype))
        y = flat.new_empty(flat.shape[0], self.out_features)  # [T, out]
        for r0 in range(0, self.out_features, rows):
            w = dequantize_rows(self.qweight[r0:r0 + rows], self.fmt, self.in_features, flat.dtype)
            y[:, r0:r0 + rows] = F.linear(flat, w)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # [T, in]
        y = self.kernel(flat) if self.kernel is not None else self._dequantized_matmul(flat)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)


class QuantEmbedding(nn.Module):
    """Token embeddings kept in a GGUF block format: only the rows looked up are dequantized."""

    is_mapped = False  # as QuantLinear's

    def __init__(self, num_embeddings: int, embedding_dim: int, fmt: str, qweight: torch.Tensor,
                 dtype: torch.dtype):
        super().__init__()
        assert qweight.shape == (num_embeddings, row_bytes(fmt, embedding_dim)), (qweight.shape, fmt)
        self.num_embeddings, self.embedding_dim, self.fmt, self.dtype = num_embeddings, embedding_dim, fmt, dtype
        self.register_buffer("qweight", qweight, persistent=False)
        self.kernel: Kernel | None = None  # set by placement: ids -> float32 rows (the native decoder)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, fmt={self.fmt}"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:
            return self.kernel(ids).to(self.dtype)
        rows = self.qweight[ids.reshape(-1)]  # [N, row_bytes]
        return dequantize_rows(rows, self.fmt, self.embedding_dim, self.dtype).view(*ids.shape, -1)


def project(x: torch.Tensor, *linears: nn.Module) -> tuple[torch.Tensor, ...]:
    """Each linear applied to x; one call when placement fused them (same input, one pass)."""
    fused = getattr(linears[0], "fused", None)
    if fused is not None:
        return fused(x)
    return tuple(m(x) for m in linears)
