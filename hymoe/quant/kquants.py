"""Quantizers for formats gguf-py can only read: Q4_K, Q5_K, Q6_K and IQ1_S (numpy, vectorized).

Block layouts are GGUF's (checked by dequantizing with gguf-py in the tests). The method is our
own: per sub-block, quantize, then refit scale and offset by least squares to the chosen levels
(a few rounds), then quantize the sub-block scales against the super-block's fp16 scale.
"""
from __future__ import annotations

import functools

import numpy as np

QK = 256  # values per super-block


def _fit_affine(x: np.ndarray, nmax: int, rounds: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """x [B, n] -> scale [B], offset [B] <= 0 with x ~ scale * q + offset, q in 0..nmax."""
    lo, hi = np.minimum(x.min(1), 0.0), x.max(1)
    scale = np.maximum(hi - lo, 1e-30) / nmax
    offset = lo
    for _ in range(rounds):
        q = np.clip(np.rint((x - offset[:, None]) / scale[:, None]), 0, nmax)
        qm, xm = q.mean(1), x.mean(1)
        var = ((q - qm[:, None]) ** 2).mean(1)
        cov = ((q - qm[:, None]) * (x - xm[:, None])).mean(1)
        ok = var > 0
        new_scale = np.where(ok, cov / np.where(ok, var, 1), scale)
        new_scale = np.where(new_scale > 0, new_scale, scale)
        new_offset = np.minimum(xm - new_scale * qm, 0.0)
        scale, offset = new_scale, new_offset
    return scale, offset


def _super_scale(v: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative v [B, 8] -> fp16 d [B] and integer codes [B, 8] in 0..levels with v ~ d * code."""
    d = (v.max(1) / levels).astype(np.float16)
    df = d.astype(np.float32)
    codes = np.clip(np.rint(v / np.where(df > 0, df, 1)[:, None]), 0, levels).astype(np.uint8)
    return d, codes


def _pack_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """6-bit scales and mins [B, 8] -> GGUF's 12-byte packing [B, 12]."""
    out = np.zeros((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (m[:, 0:4] & 63) | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)
    return out


def _q45k(x: np.ndarray, nmax: int):
    """Shared Q4_K/Q5_K quantization: rows [N, n] -> (d, dmin, packed scales, q [B, 256])."""
    blocks = x.reshape(-1, QK).astype(np.float32)  # [B, 256]
    sub = blocks.reshape(-1, 32)  # [B*8, 32]
    scale, offset = _fit_affine(sub, nmax)
    d, sc = _super_scale(scale.reshape(-1, 8), 63)
    dmin, m = _super_scale(-offset.reshape(-1, 8), 63)
    eff_scale = (d.astype(np.float32)[:, None] * sc).reshape(-1, 1)  # [B*8, 1]
    eff_min = (dmin.astype(np.float32)[:, None] * m).reshape(-1, 1)
    q = np.clip(np.rint((sub + eff_min) / np.where(eff_scale > 0, eff_scale, 1)), 0, nmax)
    q = np.where(eff_scale > 0, q, 0).astype(np.uint8).reshape(-1, QK)
    return d, dmin, _pack_scales(sc, m), q


def _nibbles(q: np.ndarray) -> np.ndarray:
    """q [B, 256] of 4-bit values -> [B, 128]: per 64-value chunk, sub-block 2c low, 2c+1 high."""
    c = (q & 15).reshape(-1, 4, 2, 32)
    return (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(-1, 128)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _q45k(x, 15)
    head = np.stack([d, dmin], 1).view(np.uint8)  # [B, 4]
    return np.concatenate([head, scales, _nibbles(q)], 1).reshape(*x.shape[:-1], -1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _q45k(x, 31)
    high = (q >> 4).reshape(-1, 8, 32)  # [B, sub-block, l]: bit j of qh[l] is sub-block j's fifth bit
    qh = np.zeros((q.shape[0], 32), np.uint8)
    for j in range(8):
        qh |= high[:, j] << j
    head = np.stack([d, dmin], 1).view(np.uint8)
    return np.concatenate([head, scales, qh, _nibbles(q)], 1).reshape(*x.shape[:-1], -1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    blocks = x.reshape(-1, QK).astype(np.float32)
    sub = blocks.reshape(-1, 16)  # [B*16, 16]
    # the value of largest magnitude maps to -32, so the full signed range is used
    idx = np.abs(sub).argmax(1)
    extreme = sub[np.arange(sub.shape[0]), idx]
    scale = -extreme / 32
    d = (np.abs(scale).reshape(-1, 16).max(1) / 127).astype(np.float16)  # [B]
    df = d.astype(np.float32)
    sc = np.clip(np.rint(scale.reshape(-1, 16) / np.where(df > 0, df, 1)[:, None]), -128, 127).astype(np.int8)
    eff = (df[:, None] * sc).reshape(-1, 1)
    q = np.clip(np.rint(sub / np.where(eff != 0, eff, 1)) + 32, 0, 63)
    q = np.where(eff != 0, q, 32).astype(np.uint8).reshape(-1, 2, 4, 32)  # [B, half, quarter, l]
    ql = np.concatenate([q[:, :, 0] & 15 | (q[:, :, 2] & 15) << 4,
                         q[:, :, 1] & 15 | (q[:, :, 3] & 15) << 4], 2).reshape(-1, 128)
    qh = (q[:, :, 0] >> 4 | (q[:, :, 1] >> 4) << 2 | (q[:, :, 2] >> 4) << 4 | (q[:, :, 3] >> 4) << 6).reshape(-1, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), d[:, None].view(np.uint8)], 1).reshape(*x.shape[:-1], -1)


QUANTIZERS = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}


def _grid_search(y: np.ndarray, grid_t, g2_t, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """y [G, 8] -> the best IQ1_S grid index per group and its squared error."""
    import torch

    idx = np.empty(len(y), np.int64)
    err = np.empty(len(y), np.float32)
    for a in range(0, len(y), chunk):
        yc = torch.from_numpy(np.ascontiguousarray(y[a:a + chunk]))
        score = torch.addmm(-g2_t, yc, grid_t.T, alpha=2.0)  # [c, 2048]: maximise 2 y.g - |g|^2
        best, i = score.max(1)
        idx[a:a + chunk] = i.numpy()
        err[a:a + chunk] = ((yc ** 2).sum(1) - best).numpy()
    return idx, err


def _shift_and_scale(sub: np.ndarray, amax: np.ndarray, search, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """sub [S, 32] -> each sub-block's scale and shift sign (+-1) of least error: both shifts times
    a ladder of scales around the largest magnitude, each with its best grid vectors."""
    n_sub = sub.shape[0]
    best_err = np.full(n_sub, np.inf, np.float32)
    best_scale = np.zeros(n_sub, np.float32)
    best_sign = np.ones(n_sub, np.float32)
    for sign in (1.0, -1.0):
        for f in (0.45, 0.55, 0.65, 0.75, 0.85, 1.0, 1.15):
            s = amax * f  # [S]
            y = (sub / s[:, None] - sign * delta).reshape(-1, 8)
            _, err = search(y)
            err = err.reshape(n_sub, 4).sum(1) * s ** 2
            better = err < best_err
            best_err, best_scale, best_sign = (np.where(better, err, best_err), np.where(better, s, best_scale),
                                               np.where(better, sign, best_sign))
    return best_scale, best_sign


def quantize_iq1_s(x: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """IQ1_S (1.5625 bits per weight): per 32 values a 3-bit scale and a shift of +-1/8, per 8 values
    one of 2048 ternary grid vectors. Searched exhaustively: for each sub-block, both shifts and a
    ladder of scales, the best grid vector per group; then the scales are refit by least squares and
    quantized against the block's fp16 scale, and the grid re-searched with them. No importance
    matrix: every weight counts the same."""
    from gguf.quants import IQ1_S

    IQ1_S.init_grid()
    grid = IQ1_S.grid.reshape(2048, 8)  # values in {-1, 0, 1}
    g2 = (grid ** 2).sum(1)  # [2048]
    blocks = x.reshape(-1, QK).astype(np.float32)
    sub = blocks.reshape(-1, 32)  # [S, 32]
    n_sub = sub.shape[0]
    amax = np.abs(sub).max(1) + 1e-30  # [S]

    import torch  # its matmul and argmax use every core

    grid_t, g2_t = torch.from_numpy(grid), torch.from_numpy(g2)
    search = functools.partial(_grid_search, grid_t=grid_t, g2_t=g2_t, chunk=chunk)
    best_scale, best_sign = _shift_and_scale(sub, amax, search, IQ1_S.delta)
    # refit each sub-block's scale to its chosen levels, then quantize the scales: s = d * (2k + 1)
    y = (sub / best_scale[:, None] - best_sign[:, None] * IQ1_S.delta).reshape(-1, 8)
    idx, _ = search(y)
    levels = grid[idx].reshape(n_sub, 32) + best_sign[:, None] * IQ1_S.delta
    den = (levels ** 2).sum(1)
    scale = np.where(den > 0, (sub * levels).sum(1) / np.where(den > 0, den, 1), best_scale)
    scale = np.maximum(scale, 0).reshape(-1, 8)
    d = (scale.max(1) / 15).astype(np.float16)
    df = d.astype(np.float32)
    k = np.clip(np.rint((scale / np.where(df > 0, df, 1)[:, None] - 1) / 2), 0, 7).astype(np.uint16)  # [B, 8]
    eff = (df[:, None] * (2 * k + 1)).reshape(-1)  # [S]
    y = (sub / np.where(eff > 0, eff, 1)[:, None] - best_sign[:, None] * IQ1_S.delta).reshape(-1, 8)
    idx, _ = search(y)
    idx = idx.reshape(-1, 8, 4).astype(np.uint16)  # [B, sub-block, group]
    qs = (idx & 0xFF).astype(np.uint8).reshape(-1, 32)
    qh = ((idx[:, :, 0] >> 8) | ((idx[:, :, 1] >> 8) << 3) | ((idx[:, :, 2] >> 8) << 6) | ((idx[:, :, 3] >> 8) << 9)
          | (k << 12) | ((best_sign.reshape(-1, 8) < 0).astype(np.uint16) << 15))
    return np.concatenate([d[:, None].view(np.uint8), qs, qh.astype(np.uint16).view(np.uint8)], 1).reshape(
        *x.shape[:-1], -1)


QUANTIZERS["IQ1_S"] = quantize_iq1_s
