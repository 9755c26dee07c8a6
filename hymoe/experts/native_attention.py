"""Grouped-query attention on the native engine (csrc/attention.cpp): q/k RMSNorm, rotary
embedding, the cache write and attention over each token's cached positions in one call, for
float32 layers on the CPU (their cache float32, float16 or bfloat16), prompts and decode steps alike.
Placement installs it as a GQA layer's `kernel`."""
from __future__ import annotations

import ctypes
import weakref

import torch

from hymoe.errors import HymoeError
from hymoe.experts.native import native_error

_i32, _i64, _f32, _p = ctypes.c_int32, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p


class _GqaArgs(ctypes.Structure):
    _fields_ = [(n, _i32) for n in ("num_rows", "tokens", "heads", "kv_heads", "head_dim", "kv_len", "window",
                                    "is_interleaved", "num_blocks", "block_size", "table_width",
                                    "cache_type")] + \
               [("eps", _f32), ("scale", _f32)] + [(n, _i64) for n in ("q_stride", "k_stride", "v_stride")] + \
               [(n, _p) for n in ("q", "k", "v", "q_norm", "k_norm", "cos", "sin", "k_cache", "v_cache", "table",
                                  "slots", "positions", "out")] + \
               [(n, _i64) for n in ("q_len", "k_len", "v_len", "rope_len", "cache_len", "out_len", "positions_len",
                                    "slots_len", "table_len")] + [("rope_at_position", _i32)]


# the cache's element type, as csrc/common.h's CacheType numbers it
CACHE_TYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _rows(t: torch.Tensor, b: int, n: int, width: int) -> tuple[torch.Tensor, int]:
    """t [B, T, width] float32 CPU as rows of `width` values a fixed stride apart: (t, stride)."""
    if t.dtype is not torch.float32 or not t.is_cpu or t.shape != (b, n, width):
        raise HymoeError(f"native attention takes float32 CPU rows [{b}, {n}, {width}], got {t.dtype} {list(t.shape)}")
    if t.stride(2) != 1 or (b > 1 and t.stride(0) != n * t.stride(1)):
        t = t.contiguous()
    return t, t.stride(1)


def _extent(t: torch.Tensor) -> int:
    """The values from t's first element to the end of its storage: what the C side may read."""
    return t.untyped_storage().nbytes() // t.element_size() - t.storage_offset()


def _step_tables(step) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step's positions, block tables and slots as the C side reads them: contiguous int64,
    positions and slots [B, T], tables [B, M] (or a clear error)."""
    positions, table, slots = (t if t.is_contiguous() else t.contiguous()  # each call a dispatch
                               for t in (step.positions, step.table, step.slots))
    if positions.dim() != 2 or table.dim() != 2 or table.shape[0] != positions.shape[0] or \
            slots.shape != positions.shape or any(t.dtype is not torch.int64 for t in (positions, table, slots)):
        raise HymoeError("native attention needs int64 positions and slots [B, T] and block tables [B, M]")
    return positions, table, slots


def _point_at_tables(a: "_GqaArgs", positions: torch.Tensor, table: torch.Tensor, slots: torch.Tensor) -> None:
    """a's positions, block tables and slots (as _step_tables gives them): addresses and lengths."""
    a.table, a.slots, a.positions = table.data_ptr(), slots.data_ptr(), positions.data_ptr()
    a.table_len, a.slots_len, a.positions_len = table.numel(), slots.numel(), positions.numel()


class StepInputs:
    """What every layer of one forward pass reads alike (positions, block tables, rotation), converted once
    per step and shared by the model's attention kernels."""

    def __init__(self):
        self.key = self.args_key = None
        self.args_ahead = 0

    def get(self, step, cos_sin, head_dim: int):
        if self.key is not step:
            positions, table, slots = _step_tables(step)
            b, t = positions.shape
            if any(c.numel() != b * t * (head_dim // 2) or not c.is_floating_point() for c in cos_sin):
                raise HymoeError(f"native attention needs cos and sin of {b * t} x {head_dim // 2} values")
            cos, sin = (c.reshape(b * t, head_dim // 2) for c in cos_sin)
            cos, sin = (c if c.dtype is torch.float32 and c.is_contiguous() else c.float().contiguous()
                        for c in (cos, sin))
            self.key, self.value = step, (positions, table, slots, cos, sin)
        return self.value

    def step_args(self, step, rope, head_dim: int, ahead: int = 0) -> "_GqaArgs":
        """The step's fields as a GqaArgs, which csrc/layer.cpp copies into each layer's (built once
        per step). The rotation is `rope`'s table, read at each token's position (and `ahead`
        positions past the last, for the decode steps one call runs): a decode step computes none
        (cos and sin in torch were ~80 us of its Python)."""
        if self.args_key is not step or self.args_ahead < ahead:
            positions, table, slots = _step_tables(step)
            b, t = positions.shape
            cos, sin = rope.table(max(positions.view(-1).tolist(), default=0) + 1 + ahead)  # [P, D/2] each
            if cos.shape[1] != head_dim // 2:
                raise HymoeError(f"native attention needs a rotation of {head_dim // 2} values, got {cos.shape[1]}")
            a = _GqaArgs(b, t, 0, 0, head_dim, step.kv_len, 0, 0, 0, 0, table.shape[1])
            a.cos, a.sin, a.rope_len, a.rope_at_position = cos.data_ptr(), sin.data_ptr(), cos.numel(), 1
            _point_at_tables(a, positions, table, slots)
            # held with the struct: the C side reads these addresses
            self.args_key, self.args, self.held = step, a, (positions, table, slots, cos, sin)
            self.args_ahead = ahead
        return self.args


class NativeGqaAttention:
    """attention(q, k, v, step, cache, cos_sin) -> [B, T, N*D]."""

    def __init__(self, engine, attn, window: int, inputs: StepInputs | None = None):
        lib = engine.lib
        lib.hymoe_gqa_attention.argtypes = [_p, ctypes.POINTER(_GqaArgs)]
        self.engine, self.inputs = engine, inputs or StepInputs()
        n, g, d = self.heads, self.kv_heads, self.head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
        norms = (attn.q_norm, attn.k_norm) if attn.is_qk_norm else (None, None)
        # float32 copies of the per-head norms (the layer's may be in another dtype)
        self.norms = tuple(None if m is None else m.weight.detach().float().contiguous() for m in norms)
        # the per-layer fields, set once; __call__ sets the rest
        self._args = _GqaArgs(0, 0, n, g, d, 0, window, int(attn.rope.is_interleaved), 0, 0, 0, 0,
                              norms[0].eps if norms[0] is not None else 0.0, d ** -0.5)
        self._args.q_norm, self._args.k_norm = (0 if w is None else w.data_ptr() for w in self.norms)
        self._args_ref = ctypes.byref(self._args)
        self._cache = None  # the address, shape, strides and dtype of the cache _args points at
        self._bound = None  # weak references to that cache's k and v tensors

    def __call__(self, q, k, v, step, cache: dict, cos_sin) -> torch.Tensor:
        if q.dim() != 3:
            raise HymoeError(f"native attention takes q [B, T, N*D], got {list(q.shape)}")
        b, t, _ = q.shape
        n, g, d = self.heads, self.kv_heads, self.head_dim
        (q, qs), (k, ks), (v, vs) = _rows(q, b, t, n * d), _rows(k, b, t, g * d), _rows(v, b, t, g * d)
        self.bind_cache(cache)
        positions, table, slots, cos, sin = self.inputs.get(step, cos_sin, d)
        if positions.shape != (b, t):
            raise HymoeError(f"native attention got positions of shape {list(positions.shape)} for [{b}, {t}] tokens")
        out = torch.empty(b, t, n * d)
        a = self._args
        a.num_rows, a.tokens, a.kv_len = b, t, step.kv_len
        a.table_width = table.shape[1]
        a.q_stride, a.k_stride, a.v_stride = qs, ks, vs
        a.q, a.k, a.v, a.cos, a.sin = q.data_ptr(), k.data_ptr(), v.data_ptr(), cos.data_ptr(), sin.data_ptr()
        a.out = out.data_ptr()
        _point_at_tables(a, positions, table, slots)
        a.q_len, a.k_len, a.v_len = _extent(q), _extent(k), _extent(v)  # strided views of a fused projection
        a.rope_len, a.rope_at_position = min(cos.numel(), sin.numel()), 0  # a stacked step may have set it
        a.out_len = out.numel()
        rc = self.engine.lib.hymoe_gqa_attention(self.engine.handle, self._args_ref)
        if rc:
            raise native_error(rc, f"native attention refused its arguments ({rc}: a block, slot or position outside the cache)")
        return out

    def bind_cache(self, cache: dict) -> None:
        """The layer's KV cache (checked, then its fields set), unless it is the one already bound."""
        kc, vc = cache["k"], cache["v"]
        bound = self._bound  # the tensors bound last, weakly: identity is ~10x cheaper than the key
        if bound is not None and bound[0]() is kc and bound[1]() is vc:  # (a cache keeps its storage)
            return
        key = (kc.data_ptr(), vc.data_ptr(), kc.shape, vc.shape, kc.stride(), vc.stride(), kc.dtype, vc.dtype)
        if self._cache == key:
            self._bound = (weakref.ref(kc), weakref.ref(vc))
            return
        g, d = self.kv_heads, self.head_dim
        if kc.dtype not in CACHE_TYPES or vc.dtype is not kc.dtype or not kc.is_contiguous() \
                or not vc.is_contiguous() or kc.shape[2:] != (g, d) or vc.shape != kc.shape or not kc.is_cpu:
            raise HymoeError("native attention needs contiguous float32, float16 or bfloat16 CPU KV caches of this "
                             "layer's shape")
        a = self._args
        a.num_blocks, a.block_size, a.cache_type = kc.shape[0], kc.shape[1], CACHE_TYPES[kc.dtype]
        a.k_cache, a.v_cache, a.cache_len = kc.data_ptr(), vc.data_ptr(), min(kc.numel(), vc.numel())
        # the key and weak references, not the tensors: every call passes its cache (so the addresses
        # are live) and an old pool must not be kept alive by the layer while a new one is allocated
        self._cache, self._bound = key, (weakref.ref(kc), weakref.ref(vc))


class NativeLatentAttention:
    """MLA's attention over its latent cache on the native engine (csrc/attention.cpp with prepared
    queries): one kv head whose cached rows [R latent | Dr rotary key] are the keys, and whose first
    R values are the values. attention(query [B, N, T, R+Dr] float32, step, latent cache [blocks,
    bs, R+Dr], already written) -> [B, N, T, R]."""

    def __init__(self, engine, heads: int, rank: int, rope_dim: int, scale: float):
        engine.lib.hymoe_gqa_attend.argtypes = [_p, ctypes.POINTER(_GqaArgs)]
        self.engine, self.rank, width = engine, rank, rank + rope_dim
        self._args = _GqaArgs(0, 0, heads, 1, width, 0, 0, 0, 0, 0, 0, 0, 0.0, scale)

    def __call__(self, query: torch.Tensor, step, cache: torch.Tensor) -> torch.Tensor:
        a = self._args
        b, n, t, d = query.shape
        if (n, d) != (a.heads, a.head_dim) or query.dtype is not torch.float32 or not query.is_cpu:
            raise HymoeError(f"native latent attention takes float32 CPU queries [B, {a.heads}, T, {a.head_dim}], "
                             f"got {query.dtype} {list(query.shape)}")
        if cache.dim() != 3 or cache.shape[2] != d or cache.dtype not in CACHE_TYPES \
                or not cache.is_contiguous() or not cache.is_cpu:
            raise HymoeError(f"native latent attention needs a contiguous float32, float16 or bfloat16 CPU cache "
                             f"[blocks, bs, {d}], got {cache.dtype} {list(cache.shape)}")
        positions, table, slots = _step_tables(step)
        if positions.shape != (b, t):
            raise HymoeError(f"native latent attention got positions of shape {list(positions.shape)} for "
                             f"[{b}, {t}] tokens")
        q = query.transpose(1, 2).contiguous()  # [B, T, N, D]: a token's heads side by side
        out = torch.empty(b, t, n, d)
        a.num_rows, a.tokens, a.kv_len, a.table_width = b, t, step.kv_len, table.shape[1]
        a.num_blocks, a.block_size, a.cache_type = cache.shape[0], cache.shape[1], CACHE_TYPES[cache.dtype]
        a.q, a.q_stride, a.q_len, a.out, a.out_len = q.data_ptr(), n * d, q.numel(), out.data_ptr(), out.numel()
        a.k_cache = a.v_cache = cache.data_ptr()
        a.cache_len = cache.numel()
        _point_at_tables(a, positions, table, slots)
        rc = self.engine.lib.hymoe_gqa_attend(self.engine.handle, ctypes.byref(a))
        if rc:
            raise native_error(rc, f"native latent attention refused its arguments ({rc}: a block, slot or position "
                                   f"outside the cache)")
        return out[..., :self.rank].transpose(1, 2)  # [B, N, T, R]
