"""Rotary position embedding: default, linear and YaRN frequency tables; half or interleaved layout."""
from __future__ import annotations

import math

import torch

from hymoe.config import RopeConfig


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_inv_freq(rc: RopeConfig, dim: int) -> tuple[torch.Tensor, float]:
    pos_freqs = rc.theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (rc.factor * pos_freqs)
    orig = rc.original_max_position

    def correction_dim(rotations: float) -> float:
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(rc.theta))

    low, high = correction_dim(rc.beta_fast), correction_dim(rc.beta_slow)
    if rc.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1 = high-frequency dims kept as trained (extrapolation)
    inv_freq = interpolation * (1 - keep) + extrapolation * keep
    if rc.attention_factor is not None:
        factor = rc.attention_factor
    elif rc.mscale and rc.mscale_all_dim:
        factor = yarn_mscale(rc.factor, rc.mscale) / yarn_mscale(rc.factor, rc.mscale_all_dim)
    else:
        factor = yarn_mscale(rc.factor)
    return inv_freq, float(factor)


class Rope:
    """Not an nn.Module: the table is derived from the config, never loaded."""

    def __init__(self, rc: RopeConfig, dim: int):
        self.is_interleaved = rc.is_interleaved
        self._inv_freq_on: dict = {}  # device -> inv_freq there
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None  # table()'s, grown on demand
        if rc.kind == "yarn":
            self.inv_freq, self.scale = _yarn_inv_freq(rc, dim)
        else:
            self.inv_freq = 1.0 / rc.theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim)
            self.scale = 1.0
            if rc.kind == "linear":
                self.inv_freq = self.inv_freq / rc.factor

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # positions [B, T] -> cos, sin [B, T, 1, D/2]
        inv_freq = self._inv_freq_on.get(positions.device)
        if inv_freq is None:  # copied once per device (a copy inside a captured CUDA graph is not allowed)
            inv_freq = self._inv_freq_on[positions.device] = self.inv_freq.to(positions.device)
        freqs = positions[:, :, None].float() * inv_freq  # [B, T, D/2]
        cos, sin = freqs.cos(), freqs.sin()
        if self.scale != 1.0:
            cos, sin = cos * self.scale, sin * self.scale
        if dtype is not torch.float32:  # each no-op a dispatcher call too: a decode step counts them
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos[:, :, None], sin[:, :, None]

    def table(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [P, D/2] float32 on the CPU, P >= n: row p is what cos_sin gives position p
        (the same operations, so the same bits), for kernels that read a token's row at its position.
        Built once and grown in powers of two."""
        if self._table is None or self._table[0].shape[0] < n:
            rows = max(1024, 1 << max(n - 1, 0).bit_length())
            cos, sin = self.cos_sin(torch.arange(rows)[None], torch.float32)  # [1, P, 1, D/2] each
            self._table = (cos[0, :, 0].contiguous(), sin[0, :, 0].contiguous())
        return self._table

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x [B, T, N, D]. Interleaved pairs (x0,x1),(x2,x3) come out de-interleaved; q and k get
        # the same permutation, so their dot products are unchanged.
        if self.is_interleaved:
            x1, x2 = x[..., 0::2], x[..., 1::2]
        else:
            x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
