"""`hymoe bench experts`: one MoE layer of a real model's shape on random weights, timed.

Weights are larger than the cache and each call routes to fresh random experts, so every call
streams its experts from DRAM as a real decode step does.
"""
from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from tqdm import tqdm

from hymoe.bench import llama_peer
from hymoe.bench.llama_peer import LlamaCppExperts
from hymoe.bench.machine import bf16_gemm_gflops, cold_bytes, read_gbps
from hymoe.errors import HymoeError
from hymoe.experts import native, regroup
from hymoe.host_memory import host_bytes
from hymoe.experts.torch_backend import TorchExperts
from hymoe.placement.large_pages import LargePageCopies
from hymoe.quant.formats import FLOAT_DTYPES, FP16_SCALE_OFFSETS, row_bytes, sane_scales

PROBE_BYTES = 32 << 20  # one paired bandwidth read: ~1 ms

SHAPES = {  # hidden, expert intermediate, routed experts, experts per token
    "deepseek-v3": (7168, 2048, 256, 8),
    "qwen3-30b-a3b": (2048, 768, 128, 8),
    "mixtral-8x7b": (4096, 14336, 8, 2),
}


def fill_random(dst: np.ndarray, fmt: str, seed: int) -> None:
    """Fill uint8 dst with fmt's blocks: a random 16 MiB tile with sane scales, repeated (distinct
    addresses, so no cache reuse)."""
    rng = np.random.default_rng(seed)
    if fmt in FLOAT_DTYPES:
        tile = torch.from_numpy(rng.standard_normal(1 << 22, dtype=np.float32) * 0.02).to(FLOAT_DTYPES[fmt])
        tile = tile.view(torch.uint8).numpy()
    else:
        block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[fmt]]
        tile = rng.integers(0, 256, size=((16 << 20) // nbytes, nbytes), dtype=np.uint8)
        sane_scales(tile, fmt, lambda count: rng.uniform(1e-3, 1e-2, count))
        tile = tile.reshape(-1)
    def copy(off: int) -> None:
        dst[off:off + tile.size] = tile[:dst.size - off]

    # the first touch of fresh pages dominates (about 0.5 GB/s a thread on these VMs): one thread
    # per core, numpy's copies release the GIL
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(copy, range(0, dst.size, tile.size)))


def random_experts(fmt: str, experts: int, rows: int, n: int, seed: int) -> torch.Tensor:
    """uint8 [experts, rows * row_bytes] of random blocks, in large pages as a GGUF's mmap is."""
    out = host_bytes(experts * rows * row_bytes(fmt, n))
    fill_random(out.numpy(), fmt, seed)
    return out.view(experts, -1)


def _routing(batch: int, k: int, experts: int, gen: torch.Generator):
    scores = torch.rand(batch, experts, generator=gen)
    ids = scores.topk(k, dim=-1).indices
    return ids, torch.rand(batch, k, generator=gen)


def cold_layers(engine, shape: str, fmt: str, backend: str = "native", max_gb: float = 8.0,
                seed: int = 0, progress: bool = False) -> tuple[list, int, int]:
    """Random layers of a model shape: as many as make the working set larger than the cache
    (calls rotate through them), each with as many experts as max_gb allows.

    Returns the layers (ExpertBackends, or llama.cpp's graph: llama_peer), the experts per layer and
    the bytes per expert.
    """
    hidden, inter, num_experts, k = SHAPES[shape]
    per_expert = 2 * inter * row_bytes(fmt, hidden) + hidden * row_bytes(fmt, inter)
    allocated = max(k, min(num_experts, int(max_gb * 2**30 // per_expert)))
    layers, copies = [], LargePageCopies()
    count = max(1, -(-cold_bytes() // (allocated * per_expert)))
    for j in tqdm(range(count), desc=f"random {fmt} layers", unit="layer", disable=not progress, leave=False):
        if backend == "llama.cpp":  # its own tensors, filled with the same blocks
            layers.append(LlamaCppExperts(fmt, allocated, hidden, inter, engine.threads,
                                          lambda dst, i, j=j: fill_random(dst, fmt, seed + 3 * j + i)))
            continue
        gate, up, down = (random_experts(fmt, allocated, rows, n, seed + 3 * j + i)
                          for i, (rows, n) in enumerate(((inter, hidden), (inter, hidden), (hidden, inter))))
        if backend == "torch":
            layers.append(TorchExperts(gate.view(torch.bfloat16).view(allocated, inter, hidden),
                                       up.view(torch.bfloat16).view(allocated, inter, hidden),
                                       down.view(torch.bfloat16).view(allocated, hidden, inter)))
        else:  # what a load streams: Q4_K regrouped for the AVX512 kernels (large_pages.py)
            streamed = [copies.for_kernels(w, fmt, allocated, is_mapped=True) if regroup.regroups(fmt) else (w, fmt)
                        for w in (gate, up, down)]  # is_mapped: nothing keeps the random blocks but the copy
            layers.append(native.NativeExperts(engine, *(w for w, _ in streamed), tuple(f for _, f in streamed),
                                               hidden, inter))
    return layers, allocated, per_expert


def _timed_calls(engine, layers, probe, x, k: int, allocated: int, per_expert: int, backend: str, iters: int,
                 gen) -> tuple[list[float], list[int], list[float]]:
    """Time layer calls on batch x [B, H], cycling through the cold layers, each right after a
    streaming read of a cold probe slice: (seconds, weight bytes read, probe GB/s) per call."""
    n_iter, threads = iters or 40, engine.threads
    slices = probe.numel() // PROBE_BYTES
    times, bytes_read, probes = [], [], []
    t_start = time.perf_counter()
    for it in range(n_iter + 2):
        if not iters and len(times) >= 3 and time.perf_counter() - t_start > 3.0:
            break  # enough for a median: big batches take seconds per call
        ids, w = _routing(x.shape[0], k, allocated, gen)
        experts = layers[it % len(layers)]
        s = (it % slices) * PROBE_BYTES
        if backend == "torch":  # its OpenMP workers spin ~10 ms after a parallel op: not during the
            time.sleep(0.02)    # probe (native calls go without: an idle pause slows the next call)
        if backend == "llama.cpp":  # ggml's pool polls between graphs: parked during the probe
            llama_peer.pause(threads)
        probe_gbps = engine.read_gbps(probe[s:s + PROBE_BYTES], 1)
        if backend == "llama.cpp":  # polling again when the layer starts, as between llama.cpp's
            llama_peer.resume(threads)  # layers (its threads compute attention too, never sleep)
            time.sleep(0.002)
        t0 = time.perf_counter()
        experts.submit(x, ids, w)
        experts.sync()
        if it >= 2:  # two warm-up calls
            times.append(time.perf_counter() - t0)
            bytes_read.append(len(torch.unique(ids)) * per_expert)
            probes.append(probe_gbps)
    return times, bytes_read, probes


def bench_experts(shape: str, fmt: str, batches: list[int], threads: int | None = None, backend: str = "native",
                  max_gb: float = 8.0, iters: int = 0, seed: int = 0, progress: bool = False,
                  numa: str | None = None) -> list[dict]:
    """One row per batch size; the weights and the machine figures are shared by all of them."""
    if shape not in SHAPES:
        raise HymoeError(f"unknown shape {shape!r} (use one of {', '.join(SHAPES)})")
    hidden, inter, num_experts, k = SHAPES[shape]
    if backend == "torch":
        fmt = "BF16"  # the torch backend computes dense bf16 weights
    formats = [*FLOAT_DTYPES, *FP16_SCALE_OFFSETS]
    if fmt not in formats:
        raise HymoeError(f"no benchmark weights for format {fmt} (use one of {', '.join(formats)})")
    engine = native.NativeEngine(threads, is_async=False, numa=numa)  # CPU-only: the calling thread works too
    threads = engine.threads
    torch.set_num_threads(threads)
    layers, allocated, per_expert = cold_layers(engine, shape, fmt, backend, max_gb, seed, progress)
    # read every weight once (the pages settle: faults, huge-page collapsing), then measure the
    # machine, so bandwidth and GEMM figures come from the same moment as the timings
    for layer in layers:
        for t in (layer.gate, layer.up, layer.down):
            engine.read_gbps(t.view(torch.uint8), 1)
    bandwidth = read_gbps(engine)
    gemm = bf16_gemm_gflops()
    # Shared machines drift (neighbours' memory traffic, stolen cores) within seconds, so each timed
    # call is paired with a streaming read of a cold slice right before it: the fraction is the
    # median of the pairs' ratios and the bandwidth the median of the paired reads.
    probe = host_bytes(cold_bytes()).fill_(1)  # a slice comes round again after >= 1 GiB of reads
    engine.read_gbps(probe, 1)  # touch every page
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for batch in tqdm(batches, desc="timing", unit="batch", disable=not progress, leave=False):
        x = torch.randn(batch, hidden, generator=gen)
        times, bytes_read, probes = _timed_calls(engine, layers, probe, x, k, allocated, per_expert, backend,
                                                 iters, gen)
        layer_s = statistics.median(times)
        weight_gbps = statistics.median(b / t for b, t in zip(bytes_read, times)) / 1e9
        fraction = statistics.median(b / t / 1e9 / g for b, t, g in zip(bytes_read, times, probes))
        bandwidth_now = statistics.median(probes)
        gflops = 2 * batch * k * 3 * hidden * inter / layer_s / 1e9
        rows.append({
            "shape": shape, "format": fmt, "batch": batch, "threads": threads, "backend": backend,
            "isa": {"native": native.isa_name(), "torch": "torch", "llama.cpp": "ggml-cpu"}[backend],
            "numa_nodes": engine.nodes, "experts_allocated": allocated, "layers_allocated": len(layers), "layer_ms": round(layer_s * 1e3, 3),
            "weight_gbps": round(weight_gbps, 2), "bandwidth_gbps": round(bandwidth_now, 2),
            "bandwidth_start_gbps": round(bandwidth, 2),
            "fraction": round(fraction, 3), "tokens_per_s": round(batch / layer_s, 1),
            "gflops": round(gflops, 1), "gemm_gflops": round(gemm, 1),
            "gemm_fraction": round(gflops / gemm, 3),
        })
    return rows
