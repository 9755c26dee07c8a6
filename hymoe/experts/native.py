"""The native CPU expert backend: GGUF-format expert weights computed in place by hymoe/csrc.

The library is called through ctypes, which releases the GIL: submit() starts the job on the
native thread pool and returns, so the calling thread can drive the GPU until sync().
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import platform
from pathlib import Path

import torch

from hymoe.errors import HymoeError
from hymoe.experts.base import ExpertBackend, StoredWeights
from hymoe.experts.numa import bind_rows, parse_numa
from hymoe.quant.formats import check_groups, native_id, row_bytes

log = logging.getLogger("hymoe")
# the levels of csrc/dispatch.cpp by name; level 1 is AVX2 on x86 and NEON dot products on aarch64
ISAS = {"generic": 0, "avx2": 1, "avx512": 2} if platform.machine().lower() not in ("aarch64", "arm64") \
    else {"generic": 0, "neon": 1}


class _MoeArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in ("num_tokens", "hidden", "inter", "topk", "num_experts",
                                              "fmt_gate", "fmt_up", "fmt_down")] + \
               [(n, ctypes.c_void_p) for n in ("x", "ids", "weights", "out", "gate", "up", "down")] + \
               [(n, ctypes.c_int64) for n in ("gate_stride", "up_stride", "down_stride", "gate_bytes", "up_bytes",
                                              "down_bytes")]

# What the C side's codes mean where every entry point shares them (csrc/moe.cpp)
BUSY = -5
NATIVE_ERRORS = {-4: "a buffer smaller than its sizes reached the native engine",
                 BUSY: "the native engine is busy with another thread's work: one engine serves one thread at "
                       "a time (share an LLM between threads through its own methods, which take its lock)"}


def native_error(rc: int, refused: str) -> HymoeError:
    """The error for a native call's non-zero code: one every entry point shares, or `refused`."""
    return HymoeError(NATIVE_ERRORS.get(rc, refused))


_lib: ctypes.CDLL | None = None
_lib_tried = False


def library() -> ctypes.CDLL | None:
    """The kernels library, or None (said once) when the install could not build it."""
    global _lib, _lib_tried
    if _lib_tried:
        return _lib
    _lib_tried = True
    found = sorted(Path(__file__).resolve().parents[1].glob("_kernels*.so"))
    if not found:
        log.warning("hymoe: native CPU kernels are not built; routed experts use the slower torch backend")
        return None
    lib = ctypes.CDLL(str(found[0]))
    lib.hymoe_isa_name.restype = ctypes.c_char_p
    lib.hymoe_engine_create.restype = ctypes.c_void_p
    lib.hymoe_engine_create_numa.restype = ctypes.c_void_p
    lib.hymoe_engine_nodes.argtypes = [ctypes.c_void_p]
    lib.hymoe_engine_destroy.argtypes = [ctypes.c_void_p]
    lib.hymoe_engine_threads.argtypes = [ctypes.c_void_p]
    lib.hymoe_engine_busy_seconds.restype = ctypes.c_double
    lib.hymoe_engine_busy_seconds.argtypes = [ctypes.c_void_p]
    vp = ctypes.c_void_p
    i64 = ctypes.c_int64
    lib.hymoe_moe_start.argtypes = [vp, ctypes.POINTER(_MoeArgs), ctypes.c_int, ctypes.c_int, vp, vp, vp, vp,
                                    i64, i64, i64, ctypes.c_int]
    lib.hymoe_engine_wake.argtypes = [ctypes.c_void_p]
    lib.hymoe_engine_linger.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.hymoe_moe_sync.argtypes = [ctypes.c_void_p]
    lib.hymoe_moe_is_done.argtypes = [ctypes.c_void_p]
    lib.hymoe_row_bytes.restype = ctypes.c_int64
    lib.hymoe_read_gbps.restype = ctypes.c_double
    lib.hymoe_read_gbps.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    lib.hymoe_rows.argtypes = [ctypes.c_int, vp, i64, ctypes.c_int, ctypes.c_int, vp, i64, ctypes.c_int, vp, i64]
    lib.hymoe_regroup.argtypes = [ctypes.c_int, vp, i64, vp, i64]
    lib.hymoe_bench_tune.argtypes = [ctypes.c_char_p, ctypes.c_int]
    forced = os.environ.get("HYMOE_ISA")  # lets CI run the whole suite on the portable path
    if forced:
        set_isa(forced, lib)
    _lib = lib
    return lib


def set_isa(name: str, lib: ctypes.CDLL | None = None) -> str:
    """Force a kernel path no wider than the CPU has ('generic', 'avx2', 'avx512'; ARM: 'neon'); returns the one used."""
    lib = lib or library()
    if name not in ISAS:
        raise HymoeError(f"unknown ISA {name!r} (use one of {', '.join(ISAS)})")
    lib.hymoe_force_isa(ISAS[name])
    return lib.hymoe_isa_name().decode()


def bench_tune(name: str, value: int = -1) -> int:
    """Benchmarks only: sets one of the kernels' tuning values (Tuning in hymoe/csrc/common.h) for
    this process, or only reads it (value < 0); returns the value it had."""
    lib = library()
    if lib is None:
        raise HymoeError("the native CPU kernels are not built")
    old = lib.hymoe_bench_tune(name.encode(), value)
    if old < 0:
        raise HymoeError(f"unknown kernel tuning value {name!r} (see Tuning in hymoe/csrc/common.h)")
    return old


@contextlib.contextmanager
def tuned(**values: int):
    """Benchmarks and tests: the kernels' tuning values set for a block and put back after it;
    yields the values they had."""
    old = {}
    try:
        for name, value in values.items():
            old[name] = bench_tune(name, value)
        yield old
    finally:
        for name, value in old.items():
            bench_tune(name, value)


def isa_name() -> str:
    lib = library()
    return lib.hymoe_isa_name().decode() if lib else "none"


def rows(fmt: str, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The bare kernel, for tests: weight [R, row_bytes] uint8 in fmt, x [T, n] float32 -> [T, R]."""
    lib = library()
    if x.dim() != 2 or x.shape[1] == 0 or not x.is_floating_point() or weight.dim() != 2 or weight.dtype != torch.uint8:
        raise HymoeError(f"rows takes weight [R, row_bytes] uint8 and float x [T, n>0]; got {tuple(weight.shape)} "
                         f"{weight.dtype} and {tuple(x.shape)} {x.dtype}")
    if weight.shape[1] != row_bytes(fmt, x.shape[1]) or not weight.is_contiguous():
        raise HymoeError(f"{fmt} rows of {x.shape[1]} values take {row_bytes(fmt, x.shape[1])} contiguous bytes "
                         f"each; the weight has {weight.shape[1]}")
    check_groups(weight, fmt)
    x = x.float().contiguous()
    out = torch.empty(x.shape[0], weight.shape[0], dtype=torch.float32)
    rc = lib.hymoe_rows(native_id(fmt), weight.data_ptr(), weight.numel(), weight.shape[0], x.shape[1],
                        x.data_ptr(), x.numel(), x.shape[0], out.data_ptr(), out.numel())
    if rc:
        raise native_error(rc, f"the native kernels cannot compute {fmt} rows of {x.shape[1]}")
    return out


def default_threads(is_async: bool) -> int:
    """All cores; with a CUDA GPU to drive, one is left to the thread that launches its work."""
    cores = os.cpu_count() or 1
    return cores - 1 if is_async and cores > 2 and torch.cuda.is_available() else cores


def _as_cpu(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # the cheapest checks first: each torch attribute costs microseconds when the layer before has
    # flushed the caches (t.device builds an object: ~10 us then)
    if t.is_cpu and t.dtype is dtype and t.is_contiguous():
        return t
    return t.detach().to("cpu", dtype).contiguous()


class _PinnedStaging:
    """Page-locked host buffers for one layer whose activations live on a CUDA device: the copies
    in and out are DMA without a bounce buffer, and the copy back does not block the caller."""

    def __init__(self):
        self.rows = 0
        self.bufs: tuple[torch.Tensor, ...] = ()

    def stage(self, hidden, topk_ids, topk_weights, wait: bool = True):
        t, h = hidden.shape
        k = topk_ids.shape[1]
        if t > self.rows or self.bufs[1].shape[1] != k:
            self.rows = max(t, 2 * self.rows)
            pin = dict(pin_memory=True)
            self.bufs = (torch.empty(self.rows, h, **pin), torch.empty(self.rows, k, dtype=torch.int64, **pin),
                         torch.empty(self.rows, k, **pin), torch.empty(self.rows, h, **pin))
        x, ids, w, out = (b[:t] for b in self.bufs)
        x.copy_(hidden.float(), non_blocking=True)
        ids.copy_(topk_ids, non_blocking=True)
        w.copy_(topk_weights.float(), non_blocking=True)
        if wait:  # the engine reads host memory: wait for these copies (and the GPU work before them)
            torch.cuda.current_stream(hidden.device).synchronize()
        return x, ids, w, out


class NativeEngine:
    """One thread pool, shared by every MoE layer of a model (their jobs run one after another).

    is_async: submit() returns at once and the pool computes meanwhile (the caller drives a GPU);
    otherwise submit() computes in the calling thread with the pool's help (CPU-only: nothing to
    overlap, and it saves two thread wake-ups per layer).
    """

    def __init__(self, threads: int | None = None, is_async: bool = True, numa: str | None = None):
        lib = library()
        if lib is None:
            raise HymoeError("the native CPU kernels are not built")
        self.lib, self.is_async = lib, is_async
        self.nodes, self.is_real_numa = parse_numa(numa, lib.hymoe_numa_nodes())
        threads = threads or default_threads(is_async)
        if self.nodes > threads:
            raise HymoeError(f"--numa: {self.nodes} nodes need at least as many threads (--threads {threads})")
        self.handle = lib.hymoe_engine_create_numa(threads, self.nodes, int(self.is_real_numa))
        self.capture = None  # a CUDA graph capture in progress (engine/cuda_graphs.py), or None

    @property
    def threads(self) -> int:
        return self.lib.hymoe_engine_threads(self.handle)

    @property
    def busy_seconds(self) -> float:
        """Time spent inside MoE jobs since the engine started (the CPU side's busy time)."""
        return self.lib.hymoe_engine_busy_seconds(self.handle)

    def linger(self, on: bool) -> None:
        """Pool helpers spin a while after each job in the calling thread (the next follows within
        microseconds when dense layers run on the pool too) instead of sleeping at once."""
        self.lib.hymoe_engine_linger(self.handle, int(on))

    @contextlib.contextmanager
    def step_scope(self, tokens_per_row: int, is_all_native: bool = False):
        """A forward pass of a CPU placement whose dense layers this pool computes too. torch runs
        the small operations between jobs single-threaded and the pool's helpers spin between jobs:
        torch's own threads, spinning after each of their operations, would fight the pool for the
        cores (a third of a qwen3-shaped decode step on 2 cores). That holds for every step
        when attention runs here too (is_all_native); otherwise long steps give torch every thread
        for its attention and let the helpers sleep between jobs."""
        if tokens_per_row > 16 and not is_all_native:
            yield
            return
        threads, was_collecting = torch.get_num_threads(), gc.isenabled()
        torch.set_num_threads(1)
        self.linger(True)
        gc.disable()  # a step frees what it allocates by reference counting; no collector pass mid-step
        try:
            yield
        finally:
            if was_collecting:
                gc.enable()
            self.linger(False)
            torch.set_num_threads(threads)

    def read_gbps(self, buf: torch.Tensor, reps: int = 3) -> float:
        """Streaming-read bandwidth over buf (make it far larger than the last-level cache)."""
        gbps = self.lib.hymoe_read_gbps(self.handle, buf.data_ptr(), buf.numel() * buf.element_size(), reps)
        if gbps < 0:
            raise HymoeError(NATIVE_ERRORS[BUSY])
        return gbps

    def __del__(self):
        if getattr(self, "handle", None):
            self.lib.hymoe_engine_destroy(self.handle)
            self.handle = None


class NativeExperts(ExpertBackend):
    """One layer's experts: gate/up [E, I, H] and down [E, H, I], each raw bytes in a GGUF format or a
    layout of one (formats.LAYOUTS). stored: the file's blocks where these are regrouped, which
    stored_weights() hands on (GPU prefill, hot experts)."""

    label = "native"

    def __init__(self, engine: NativeEngine, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                 formats: tuple[str, str, str], hidden: int, inter: int, stored: StoredWeights | None = None):
        self.engine, self.formats, self.hidden, self.inter = engine, formats, hidden, inter
        self.stored = stored
        self.num_experts = gate.shape[0]
        for t, f, rows_, n in ((gate, formats[0], inter, hidden), (up, formats[1], inter, hidden),
                               (down, formats[2], hidden, inter)):
            expected = rows_ * row_bytes(f, n)
            got = t[0].numel() * t.element_size()
            if got != expected:
                raise HymoeError(f"{f} expert tensor holds {got} bytes per expert, expected {expected}")
            if not t.is_contiguous():
                raise HymoeError(f"{f} expert tensor of shape {tuple(t.shape)} is not contiguous")
            if engine.lib.hymoe_has_format(native_id(f)) == 0:
                raise HymoeError(f"the native kernels have no {f} path")
            check_groups(t, f, t.shape[0])
        self.gate, self.up, self.down = gate, up, down
        if engine.is_real_numa:  # each node's share of every expert's rows in that node's memory
            bind_rows(engine.lib, (gate, up, down), (inter, inter, hidden),
                      (row_bytes(formats[0], hidden), row_bytes(formats[1], hidden), row_bytes(formats[2], inter)),
                      engine.nodes)
        self._pending = None
        self._out: torch.Tensor | None = None
        self._staging = _PinnedStaging()
        # the per-layer part of the arguments, set once
        self._args = _MoeArgs(0, hidden, inter, 0, self.num_experts, *(native_id(f) for f in formats),
                              0, 0, 0, 0, gate.data_ptr(), up.data_ptr(), down.data_ptr(),
                              gate[0].numel() * gate.element_size(), up[0].numel() * up.element_size(),
                              down[0].numel() * down.element_size(),
                              *(t.numel() * t.element_size() for t in (gate, up, down)))
        self._args_ref = ctypes.byref(self._args)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.gate, self.up, self.down))

    def twin(self) -> "NativeExperts":
        """A second handle on the same weights with its own buffers (a second job in flight)."""
        return NativeExperts(self.engine, self.gate, self.up, self.down, self.formats, self.hidden, self.inter,
                             self.stored)

    def stored_weights(self) -> StoredWeights:
        return self.stored or StoredWeights(self.gate, self.up, self.down, self.formats, self.hidden, self.inter)

    def graph_engine(self) -> NativeEngine:
        """Captured: submit() and sync() see `engine.capture` set and record their host steps there."""
        return self.engine

    def _check(self, hidden, topk_ids, topk_weights) -> None:
        """Shapes and dtypes before any pointer crosses: the engine reads T x K ids and weights and
        T rows of H values from what it is given."""
        if hidden.dim() != 2 or hidden.shape[1] != self.hidden:
            raise HymoeError(f"experts take hidden [T, {self.hidden}]; got {tuple(hidden.shape)}")
        if topk_ids.dim() != 2 or topk_ids.shape[0] != hidden.shape[0] or topk_weights.shape != topk_ids.shape:
            raise HymoeError(f"experts take topk_ids and topk_weights [{hidden.shape[0]}, K]; got "
                             f"{tuple(topk_ids.shape)} and {tuple(topk_weights.shape)}")
        if topk_ids.is_floating_point() or topk_ids.is_complex() or topk_ids.dtype is torch.bool or \
                not hidden.is_floating_point() or topk_weights.is_complex():
            raise HymoeError(f"experts take float hidden, integer ids and real weights; got {hidden.dtype}, "
                             f"{topk_ids.dtype} and {topk_weights.dtype}")

    def submit(self, hidden, topk_ids, topk_weights) -> None:
        self._check(hidden, topk_ids, topk_weights)
        if self.engine.capture is not None:
            return self._submit_captured(hidden, topk_ids, topk_weights)
        self.engine.lib.hymoe_engine_wake(self.engine.handle)  # threads wake while the inputs are staged
        if hidden.is_cuda:
            x, ids, w, out = self._staging.stage(hidden, topk_ids, topk_weights)
        else:
            x = _as_cpu(hidden, torch.float32)
            ids = _as_cpu(topk_ids, torch.int64)
            w = _as_cpu(topk_weights, torch.float32)
            out = self._out if self._out is not None and self._out.shape == x.shape else torch.empty_like(x)
            self._out = out  # reused by the next call of this layer: the caller consumes it before then
        self._start(x, ids, w, out)
        # keep the buffers alive until sync, and where the result goes (None: the CPU)
        self._pending = (x, ids, w, out, hidden.device if hidden.is_cuda else None)

    def _start(self, x, ids, w, out) -> None:
        engine = self.engine
        rc = engine.lib.hymoe_moe_start(engine.handle, self._args_ref, x.shape[0], ids.shape[1], x.data_ptr(),
                                        ids.data_ptr(), w.data_ptr(), out.data_ptr(), x.numel(),
                                        min(ids.numel(), w.numel()), out.numel(), engine.is_async)
        if rc:
            raise native_error(rc, {-1: "unsupported expert format", -2: "expert rows do not split into blocks",
                                    -3: "an expert id is out of range"}.get(rc, f"native MoE failed ({rc})"))

    def _submit_captured(self, hidden, topk_ids, topk_weights) -> None:
        """While a decode step is captured as CUDA graph segments: the copies to host memory close
        the segment, and starting the engine becomes a host step run between segments at replay.
        The graph owns its page-locked buffers, so eager calls never move them."""
        capture = self.engine.capture
        staging = _PinnedStaging()
        x, ids, w, out = staging.stage(hidden, topk_ids, topk_weights, wait=False)
        capture.keep.append(staging)

        def start():
            torch.cuda.current_stream().synchronize()  # the segment's copies have landed
            self._start(x, ids, w, out)

        capture.host(start)
        self._pending = (x, ids, w, out, hidden.device)

    def is_done(self) -> bool:
        """Whether the submitted job has finished (never waits)."""
        return bool(self.engine.lib.hymoe_moe_is_done(self.engine.handle))

    def sync(self) -> torch.Tensor:
        if self.engine.capture is not None:  # at replay: wait for the job between two segments
            self.engine.capture.host(lambda: self.engine.lib.hymoe_moe_sync(self.engine.handle))
        elif self.engine.is_async:  # otherwise submit() ran the job to its end
            self.engine.lib.hymoe_moe_sync(self.engine.handle)
        x, ids, w, out, device = self._pending
        self._pending = None
        # from pinned memory the copy back is asynchronous; this layer's next submit waits for the
        # stream before the engine writes `out` again
        return out if device is None else out.to(device, non_blocking=True)
