"""Grouped-query attention on the native engine (csrc/attention.cpp): q/k RMSNorm, rotary
embedding, the cache write and attention over each token's cached positions in one call, for
float32 layers on the CPU, prompts and decode steps alike. Placement installs it as a GQA layer's
`kernel`."""
from __future__ import annotations

import ctypes

import torch

from hymoe.errors import HymoeError

_i32, _i64, _f32, _p = ctypes.c_int32, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p


class _GqaArgs(ctypes.Structure):
    _fields_ = [(n, _i32) for n in ("num_rows", "tokens", "heads", "kv_heads", "head_dim", "kv_len", "window",
                                    "is_interleaved", "num_slots", "max_len")] + \
               [("eps", _f32), ("scale", _f32)] + [(n, _i64) for n in ("q_stride", "k_stride", "v_stride")] + \
               [(n, _p) for n in ("q", "k", "v", "q_norm", "k_norm", "cos", "sin", "k_cache", "v_cache", "slots",
                                  "positions", "out")]


def _rows(t: torch.Tensor, width: int) -> tuple[torch.Tensor, int]:
    """t [B, T, width] float32 CPU as rows of `width` values a fixed stride apart: (t, stride)."""
    b, n = t.shape[0], t.shape[1]
    if t.dtype is not torch.float32 or not t.is_cpu or t.shape[2] != width:
        raise HymoeError(f"native attention takes float32 CPU rows of {width}, got {t.dtype} {list(t.shape)}")
    if t.stride(2) != 1 or (b > 1 and t.stride(0) != n * t.stride(1)):
        t = t.contiguous()
    return t, t.stride(1)


class NativeGqaAttention:
    """attention(q, k, v, step, cache, cos_sin) -> [B, T, N*D]."""

    def __init__(self, engine, attn, window: int):
        lib = engine.lib
        lib.hymoe_gqa_attention.argtypes = [_p, ctypes.POINTER(_GqaArgs)]
        self.engine, self.window = engine, window
        self.heads, self.kv_heads, self.head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
        self.is_interleaved = attn.rope.is_interleaved
        norms = (attn.q_norm, attn.k_norm) if attn.is_qk_norm else (None, None)
        self.eps = norms[0].eps if norms[0] is not None else 0.0
        # float32 copies of the per-head norms (the layer's may be in another dtype)
        self.norms = tuple(None if m is None else m.weight.detach().float().contiguous() for m in norms)

    def __call__(self, q, k, v, step, cache: dict, cos_sin) -> torch.Tensor:
        b, t, _ = q.shape
        n, g, d = self.heads, self.kv_heads, self.head_dim
        (q, qs), (k, ks), (v, vs) = _rows(q, n * d), _rows(k, g * d), _rows(v, g * d)
        kc, vc = cache["k"], cache["v"]
        if kc.dtype is not torch.float32 or not kc.is_contiguous() or kc.shape[2:] != (g, d) or vc.shape != kc.shape:
            raise HymoeError("native attention needs a contiguous float32 KV cache of this layer's shape")
        cos, sin = (c.reshape(b * t, d // 2).float().contiguous() for c in cos_sin)
        positions = step.positions.contiguous()
        slots = None if step.rows is None else step.rows.contiguous()
        out = torch.empty(b, t, n * d)
        a = _GqaArgs(b, t, n, g, d, step.kv_len, self.window, int(self.is_interleaved), kc.shape[0], kc.shape[1] - 1,
                     self.eps, d ** -0.5, qs, ks, vs, q.data_ptr(), k.data_ptr(), v.data_ptr(),
                     *(0 if w is None else w.data_ptr() for w in self.norms), cos.data_ptr(), sin.data_ptr(),
                     kc.data_ptr(), vc.data_ptr(), 0 if slots is None else slots.data_ptr(), positions.data_ptr(),
                     out.data_ptr())
        if positions.dtype is not torch.int64 or positions.shape != (b, t) or (slots is not None and slots.shape != (b,)):
            raise HymoeError("native attention needs int64 positions [B, T] and slots [B]")
        rc = self.engine.lib.hymoe_gqa_attention(self.engine.handle, ctypes.byref(a))
        if rc:
            raise HymoeError(f"native attention refused its arguments ({rc}: a slot or position outside the cache)")
        return out
