"""The peer of `hymoe bench experts --backend llama.cpp`: llama.cpp's own MoE layer on the same
random GGUF blocks, timed the same way as hymoe's.

The layer is the graph llama.cpp's build_moe_ffn makes for Qwen3-MoE and DeepSeek (ggml_mul_mat_id
for gate, up and down, swiglu, the routing weights, the sum over k), computed by ggml's CPU
backend on a persistent thread pool, as llama.cpp decodes. ggml comes from llama-cpp-python's
shared libraries (the test extra installs it) through ctypes, on the public C API of ggml.h and
ggml-cpu.h only. The weights are in GGUF's block layouts as stored: llama.cpp's load-time
repacking of some formats into row-interleaved layouts (Q4_0, Q4_K, IQ4_NL on x86) is not applied,
as hymoe computes the blocks in place too.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType

from hymoe.errors import HymoeError
from hymoe.host_memory import host_bytes
from hymoe.quant.formats import row_bytes

GGML_I32 = 26
_lib = None
_pools: dict[int, int] = {}


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class _ThreadpoolParams(ctypes.Structure):  # ggml.h, GGML_MAX_N_THREADS = 512
    _fields_ = [("cpumask", ctypes.c_bool * 512), ("n_threads", ctypes.c_int), ("prio", ctypes.c_int),
                ("poll", ctypes.c_uint32), ("strict_cpu", ctypes.c_bool), ("paused", ctypes.c_bool)]


class _Cplan(ctypes.Structure):  # ggml-cpu.h
    _fields_ = [("work_size", ctypes.c_size_t), ("work_data", ctypes.c_void_p), ("n_threads", ctypes.c_int),
                ("threadpool", ctypes.c_void_p), ("abort_callback", ctypes.c_void_p),
                ("abort_callback_data", ctypes.c_void_p), ("use_ref", ctypes.c_bool)]


def ggml() -> ctypes.CDLL:
    """ggml's base and CPU libraries from llama-cpp-python, with the signatures used here."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        import llama_cpp
    except ImportError as e:
        raise HymoeError("--backend llama.cpp needs llama-cpp-python (pip install 'hymoe[test]')") from e
    libdir = Path(llama_cpp.__file__).parent / "lib"
    base = ctypes.CDLL(str(libdir / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(libdir / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    p, i64, sz = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
    for lib, name, res, args in [
        (base, "ggml_init", p, [_InitParams]), (base, "ggml_free", None, [p]),
        (base, "ggml_new_tensor_2d", p, [p, ctypes.c_int, i64, i64]),
        (base, "ggml_new_tensor_3d", p, [p, ctypes.c_int, i64, i64, i64]),
        (base, "ggml_get_data", p, [p]), (base, "ggml_nbytes", sz, [p]),
        (base, "ggml_tensor_overhead", sz, []), (base, "ggml_graph_overhead", sz, []),
        (base, "ggml_mul_mat_id", p, [p, p, p, p]), (base, "ggml_swiglu_split", p, [p, p, p]),
        (base, "ggml_mul", p, [p, p, p]), (base, "ggml_add", p, [p, p, p]),
        (base, "ggml_view_2d", p, [p, p, i64, i64, sz, sz]),
        (base, "ggml_new_graph", p, [p]), (base, "ggml_build_forward_expand", None, [p, p]),
        (base, "ggml_threadpool_params_default", _ThreadpoolParams, [ctypes.c_int]),
        (cpu, "ggml_cpu_init", None, []), (cpu, "ggml_threadpool_new", p, [ctypes.POINTER(_ThreadpoolParams)]),
        (cpu, "ggml_threadpool_pause", None, [p]), (cpu, "ggml_threadpool_resume", None, [p]),
        (cpu, "ggml_graph_plan", _Cplan, [p, ctypes.c_int, p]),
        (cpu, "ggml_graph_compute", ctypes.c_int, [p, ctypes.POINTER(_Cplan)]),
    ]:
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
        setattr(base, name, f)
    base.ggml_cpu_init()
    _lib = base
    return _lib


def thread_pool(threads: int) -> int:
    """One persistent ggml thread pool per thread count, shared by all layers (as llama.cpp has one);
    its threads poll for work between graphs, at ggml's default polling level."""
    if threads not in _pools:
        g = ggml()
        params = g.ggml_threadpool_params_default(threads)
        _pools[threads] = g.ggml_threadpool_new(ctypes.byref(params))
    return _pools[threads]


def pause(threads: int) -> None:
    """Park the pool's polling threads (around the bench's bandwidth probes, which they would slow)."""
    ggml().ggml_threadpool_pause(thread_pool(threads))


def resume(threads: int) -> None:
    ggml().ggml_threadpool_resume(thread_pool(threads))


def _as_numpy(ptr: int, nbytes: int) -> np.ndarray:
    return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint8)), shape=(nbytes,))


class LlamaCppExperts:
    """One MoE layer's experts in ggml tensors, computed by llama.cpp's graph; submit()/sync() as
    the bench drives an ExpertBackend (the work happens in submit)."""

    def __init__(self, fmt: str, experts: int, hidden: int, inter: int, threads: int, fill) -> None:
        g = self.g = ggml()
        self.fmt, self.hidden, self.inter, self.threads = fmt, hidden, inter, threads
        qtype = int(GGMLQuantizationType[fmt])
        shapes = ((hidden, inter), (hidden, inter), (inter, hidden))  # (row length, rows)
        nbytes = sum(experts * rows * row_bytes(fmt, n) for n, rows in shapes)
        size = nbytes + 3 * (g.ggml_tensor_overhead() + 4096)
        self._mem = host_bytes(size)  # large pages, like hymoe's weights
        self.ctx = g.ggml_init(_InitParams(size, self._mem.data_ptr(), False))
        self.tensors, views = [], []  # ggml's gate, up, down; their bytes as torch views
        for j, (n, rows) in enumerate(shapes):
            t = g.ggml_new_tensor_3d(self.ctx, qtype, n, rows, experts)
            data = _as_numpy(g.ggml_get_data(t), g.ggml_nbytes(t))
            fill(data, j)
            self.tensors.append(t)
            views.append(torch.from_numpy(data))
        self.gate, self.up, self.down = views
        self.pool = thread_pool(threads)
        self._graphs: dict = {}
        self._out = None

    def _graph(self, tokens: int, k: int):
        """Inputs, output, graph and plan for this many tokens, built once."""
        key = (tokens, k)
        if key in self._graphs:
            return self._graphs[key]
        g, h, i = self.g, self.hidden, self.inter
        size = 4 * tokens * k * (3 * i + 3 * h) + 4 * tokens * (2 * h + 2 * k) + 64 * g.ggml_tensor_overhead() \
            + g.ggml_graph_overhead() + (1 << 20)
        mem = host_bytes(size)
        ctx = g.ggml_init(_InitParams(size, mem.data_ptr(), False))
        x = g.ggml_new_tensor_3d(ctx, 0, h, 1, tokens)
        ids = g.ggml_new_tensor_2d(ctx, GGML_I32, k, tokens)
        w = g.ggml_new_tensor_3d(ctx, 0, 1, k, tokens)
        gate, up, down = self.tensors
        hidden_act = g.ggml_swiglu_split(ctx, g.ggml_mul_mat_id(ctx, gate, x, ids), g.ggml_mul_mat_id(ctx, up, x, ids))
        experts = g.ggml_mul(ctx, g.ggml_mul_mat_id(ctx, down, hidden_act, ids), w)  # [H, k, T]
        out = g.ggml_view_2d(ctx, experts, h, tokens, 4 * h * k, 0)
        for j in range(1, k):
            out = g.ggml_add(ctx, out, g.ggml_view_2d(ctx, experts, h, tokens, 4 * h * k, 4 * h * j))
        graph = g.ggml_new_graph(ctx)
        g.ggml_build_forward_expand(graph, out)
        plan = g.ggml_graph_plan(graph, self.threads, self.pool)
        work = host_bytes(max(plan.work_size, 1))
        plan.work_data = work.data_ptr()
        views = [torch.frombuffer(_as_numpy(g.ggml_get_data(t), g.ggml_nbytes(t)), dtype=dt)
                 for t, dt in ((x, torch.float32), (ids, torch.int32), (w, torch.float32), (out, torch.float32))]
        self._graphs[key] = (ctx, mem, work, graph, plan, views)
        return self._graphs[key]

    def submit(self, hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> None:
        tokens, k = topk_ids.shape
        _, _, _, graph, plan, (x, ids, w, out) = self._graph(tokens, k)
        x.copy_(hidden.reshape(-1))
        ids.copy_(topk_ids.reshape(-1))
        w.copy_(topk_weights.reshape(-1))
        if self.g.ggml_graph_compute(graph, ctypes.byref(plan)) != 0:
            raise HymoeError("llama.cpp's graph compute failed")
        self._out = out

    def sync(self) -> torch.Tensor:
        out, self._out = self._out, None  # the last ggml_add: contiguous [T, H] (k >= 2)
        return out.view(-1, self.hidden)
