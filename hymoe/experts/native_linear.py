"""Dense linear layers kept in a GGUF block format, computed on the native engine's pool by the
same kernels as the routed experts (csrc/linear.cpp): attention projections, shared experts,
dense FFNs and the output head on the CPU.

One call computes up to four weight matrices that read the same input (q, k, v; gate, up), so
they share one quantization of the activations and one trip through the pool.
"""
from __future__ import annotations

import ctypes

import torch

from hymoe.errors import HymoeError
from hymoe.experts.native import check_groups, native_error
from hymoe.quant.formats import FLOAT_DTYPES, native_id, row_bytes

MAX_PARTS = 4


class _Part(ctypes.Structure):
    _fields_ = [("fmt", ctypes.c_int32), ("rows", ctypes.c_int32), ("w", ctypes.c_void_p), ("w_bytes", ctypes.c_int64)]


class _LinearArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in ("num_tokens", "n", "num_parts", "out_stride")] + \
               [("x", ctypes.c_void_p), ("out", ctypes.c_void_p), ("parts", _Part * MAX_PARTS)]


class _HeadLinearArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in ("fmt", "heads", "rows", "n", "num_tokens")] + \
               [("w", ctypes.c_void_p), ("w_bytes", ctypes.c_int64), ("x", ctypes.c_void_p), ("x_len", ctypes.c_int64),
                ("out", ctypes.c_void_p), ("out_len", ctypes.c_int64)]


def _bind(lib) -> None:
    if getattr(lib, "_linear_bound", False):
        return
    vp = ctypes.c_void_p
    lib.hymoe_linear.argtypes = [vp, ctypes.POINTER(_LinearArgs), ctypes.c_int, vp, ctypes.c_int64, vp, ctypes.c_int64]
    lib.hymoe_head_linear.argtypes = [vp, ctypes.POINTER(_HeadLinearArgs)]
    lib.hymoe_rms_norm.argtypes = [vp, vp, vp, ctypes.c_int, ctypes.c_int, ctypes.c_float]
    lib.hymoe_rms_norm.restype = None
    lib._linear_bound = True


def checked_weight(weight: torch.Tensor, fmt: str, rows: int, n: int) -> torch.Tensor:
    """The bytes a kernel will read: uint8, contiguous, on the CPU, exactly rows x row_bytes."""
    if weight.dtype != torch.uint8 or weight.device.type != "cpu" or not weight.is_contiguous():
        layout = "contiguous" if weight.is_contiguous() else "strided"
        raise HymoeError(f"a native {fmt} weight must be contiguous uint8 CPU bytes "
                         f"(got {layout} {weight.dtype} on {weight.device})")
    expected = rows * row_bytes(fmt, n)
    if weight.numel() != expected:
        raise HymoeError(f"a {fmt} weight of {rows} rows of {n} holds {expected} bytes, got {weight.numel()}")
    check_groups(weight, fmt)
    return weight


class NativeLinear:
    """x [T, n] -> [T, sum of rows] float32 for weights [(fmt, rows, uint8 bytes), ...] of width n."""

    def __init__(self, engine, n: int, weights: list[tuple[str, int, torch.Tensor]]):
        if not 1 <= len(weights) <= MAX_PARTS:
            raise HymoeError(f"a native linear call takes 1 to {MAX_PARTS} weights, got {len(weights)}")
        lib = engine.lib
        _bind(lib)
        for fmt, rows, w in weights:
            if not lib.hymoe_has_format(native_id(fmt)):
                raise HymoeError(f"the native kernels have no {fmt} path")
            if fmt not in FLOAT_DTYPES and n % 32:
                raise HymoeError(f"a {fmt} weight needs rows of a multiple of 32 values, got {n}")
            checked_weight(w, fmt, rows, n)
        self.engine, self.n = engine, n
        self.weights = weights  # keeps the bytes alive while the C side holds their address
        self.splits = [rows for _, rows, _ in weights]
        self.out_features = sum(self.splits)
        self._args = _LinearArgs(0, n, len(weights), self.out_features)
        for i, (fmt, rows, w) in enumerate(weights):
            self._args.parts[i] = _Part(native_id(fmt), rows, w.data_ptr(), w.numel())
        self._args_ref = ctypes.byref(self._args)

    def checked_input(self, x: torch.Tensor) -> torch.Tensor:
        """x as the C side reads it: a float32 CPU matrix [T >= 1, n], contiguous (or a clear error)."""
        if x.dim() != 2 or x.shape[1] != self.n:
            raise HymoeError(f"a native linear of width {self.n} got input of shape {list(x.shape)}")
        if not (x.is_cpu and x.dtype is torch.float32 and x.is_contiguous()):
            x = x.detach().to("cpu", torch.float32).contiguous()
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.checked_input(x)
        out = torch.empty(x.shape[0], self.out_features)
        if x.shape[0] == 0:
            return out
        rc = self.engine.lib.hymoe_linear(self.engine.handle, self._args_ref, x.shape[0], x.data_ptr(), x.numel(),
                                          out.data_ptr(), out.numel())
        if rc:
            raise native_error(rc, f"the native linear cannot compute these weights ({rc})")
        return out


class NativeHeadLinear:
    """One matrix per head, each against its head's own input: x [..., N, n] -> [..., N, rows] float32,
    for weights of N x rows rows of width n in one format (MLA's absorbed up-projections: a
    batched matrix-vector product that torch's bmm read at 8-12 GB/s on a CPU)."""

    def __init__(self, engine, fmt: str, heads: int, rows: int, n: int, weight: torch.Tensor):
        lib = engine.lib
        _bind(lib)
        if not lib.hymoe_has_format(native_id(fmt)):
            raise HymoeError(f"the native kernels have no {fmt} path")
        if fmt not in FLOAT_DTYPES and n % 32:
            raise HymoeError(f"a {fmt} weight needs rows of a multiple of 32 values, got {n}")
        self.engine, self.heads, self.rows, self.n = engine, heads, rows, n
        self.weight = checked_weight(weight, fmt, heads * rows, n)  # kept alive: the C side holds its address
        self._args = _HeadLinearArgs(native_id(fmt), heads, rows, n, 0, weight.data_ptr(), weight.numel())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or tuple(x.shape[-2:]) != (self.heads, self.n):
            raise HymoeError(f"a native per-head linear of {self.heads} heads x {self.n} got input of shape "
                             f"{list(x.shape)}")
        if not (x.is_cpu and x.dtype is torch.float32 and x.is_contiguous()):
            x = x.detach().to("cpu", torch.float32).contiguous()
        out = torch.empty(*x.shape[:-1], self.rows)
        tokens = x.numel() // (self.heads * self.n)
        if tokens == 0:
            return out
        a = self._args
        a.num_tokens, a.x, a.x_len, a.out, a.out_len = tokens, x.data_ptr(), x.numel(), out.data_ptr(), out.numel()
        rc = self.engine.lib.hymoe_head_linear(self.engine.handle, ctypes.byref(a))
        if rc:
            raise native_error(rc, f"the native per-head linear cannot compute these weights ({rc})")
        return out


class NativeRMSNorm:
    """RMSNorm of float32 CPU rows in one foreign call (~1 us; torch's eight operations ~30)."""

    def __init__(self, lib, weight: torch.Tensor, eps: float):
        _bind(lib)
        if weight.dim() != 1 or not weight.is_floating_point():
            raise HymoeError(f"a native RMSNorm takes a float weight [n], got {weight.dtype} {list(weight.shape)}")
        self.lib, self.eps = lib, eps
        self.weight = weight.detach().float().contiguous()
        self.n = self.weight.numel()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.n:
            raise HymoeError(f"a native RMSNorm of width {self.n} got input of shape {list(x.shape)}")
        if not (x.is_cpu and x.dtype is torch.float32 and x.is_contiguous()):
            x = x.detach().to("cpu", torch.float32).contiguous()
        out = torch.empty_like(x)
        self.lib.hymoe_rms_norm(x.data_ptr(), self.weight.data_ptr(), out.data_ptr(), x.numel() // self.n, self.n,
                                self.eps)
        return out


class NativeEmbedding:
    """Rows of a block-format table decoded in one foreign call (csrc/dequant.cpp): ids [...] int64
    -> float32 [..., n], the values gguf-py decodes. A decode step looks up one row: torch's
    decoder took ~20 operations for it."""

    @staticmethod
    def decodes(lib, fmt: str) -> bool:
        return bool(lib.hymoe_has_dequant(native_id(fmt)))

    def __init__(self, lib, fmt: str, weight: torch.Tensor, num_rows: int, n: int):
        if not self.decodes(lib, fmt):
            raise HymoeError(f"the native kernels cannot decode {fmt} rows")
        lib.hymoe_dequant_rows.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                                           ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int64]
        self.lib, self.fmt, self.num_rows, self.n = lib, native_id(fmt), num_rows, n
        self.weight = checked_weight(weight.reshape(-1), fmt, num_rows, n)  # kept alive: C reads its address

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype is not torch.int64 or not ids.is_cpu:
            raise HymoeError(f"a native embedding takes int64 CPU ids, got {ids.dtype} on {ids.device}")
        flat = ids.reshape(-1).contiguous()
        out = torch.empty(flat.numel(), self.n)
        rc = self.lib.hymoe_dequant_rows(self.fmt, self.weight.data_ptr(), self.weight.numel(), self.num_rows, self.n,
                                         flat.data_ptr(), flat.numel(), out.data_ptr(), out.numel())
        if rc == -2:
            raise HymoeError(f"a token id outside the embedding's {self.num_rows} rows")
        if rc:
            raise native_error(rc, f"the native embedding refused its sizes ({rc})")
        return out.view(*ids.shape, self.n)


class _RouteArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in ("num_tokens", "num_experts", "topk", "is_sigmoid", "group_rule",
                                              "num_groups", "topk_groups", "is_norm")] + \
               [("scale", ctypes.c_float)] + [(n, ctypes.c_void_p) for n in ("bias", "logits", "ids", "weights")]


class NativeRouter:
    """A router's logits (float32 weights on the native engine) and its top-k choice in C
    (csrc/route.cpp): x [T, H] -> ids [T, K] int64, weights [T, K] float32, as layers/router.py."""

    def __init__(self, engine, router, copies=lambda t: t):
        cfg = router.cfg
        lib = engine.lib
        lib.hymoe_route.argtypes = [ctypes.POINTER(_RouteArgs)]
        w = copies(router.weight.detach().float().contiguous())  # copies: placement/large_pages.py
        self.logits = NativeLinear(engine, w.shape[1], [("F32", w.shape[0], w.view(torch.uint8))])
        bias = getattr(router, "e_score_correction_bias", None) if cfg.topk_method == "noaux_tc" else None
        self.bias = None if bias is None else bias.detach().float().contiguous()
        grouped = cfg.topk_method in ("noaux_tc", "group_limited_greedy") and cfg.num_groups > 1
        rule = (2 if cfg.group_score == "top2-sum" else 1) if grouped else 0
        lib.hymoe_router.argtypes = [ctypes.c_void_p, ctypes.POINTER(_LinearArgs), ctypes.POINTER(_RouteArgs),
                                     ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
        self.lib, self.k = lib, cfg.num_experts_per_tok
        self._args = _RouteArgs(0, cfg.num_experts, self.k, int(cfg.scoring == "sigmoid"), rule, cfg.num_groups,
                                cfg.topk_groups, int(cfg.is_norm_topk_prob), cfg.routed_scaling_factor,
                                0 if self.bias is None else self.bias.data_ptr())
        self._args_ref = ctypes.byref(self._args)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.logits.checked_input(x)
        t = x.shape[0]
        logits = torch.empty(t, self._args.num_experts)
        ids, weights = torch.empty(t, self.k, dtype=torch.int64), torch.empty(t, self.k)
        if t == 0:
            return ids, weights
        self._args.ids, self._args.weights = ids.data_ptr(), weights.data_ptr()
        rc = self.lib.hymoe_router(self.logits.engine.handle, self.logits._args_ref, self._args_ref, t, x.data_ptr(),
                                   x.numel(), logits.data_ptr())
        if rc:
            raise native_error(rc, f"the native router refused its sizes ({rc})")
        return ids, weights
