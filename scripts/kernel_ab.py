"""A/B kernel variants in one process, alternating, so a shared machine's noise hits both alike.

    python scripts/kernel_ab.py Q8_0 qwen3-30b-a3b 8192:4:1,4096:4:1

Each variant is prefetch_bytes:rows_per_pass:head_prefetch[:down_rows[:gate_rows]], the knobs of
hymoe_tune (the first three in the AVX512 kernels, the last two in the MoE job's work units).
Prints each variant's median fraction of the streaming-read bandwidth at batch 1, cold weights.
"""
import statistics
import sys
import time

import torch

from hymoe.bench.experts import SHAPES, _routing, random_experts
from hymoe.bench.machine import cold_bytes, read_gbps
from hymoe.experts import native
from hymoe.quant.formats import row_bytes


def main(fmt: str, shape: str, variants: str, rounds: int = 6, calls: int = 40) -> None:
    hidden, inter, num_experts, k = SHAPES[shape]
    engine = native.NativeEngine(2, is_async=False)
    per_expert = 2 * inter * row_bytes(fmt, hidden) + hidden * row_bytes(fmt, inter)
    experts = min(num_experts, int(4e9 // per_expert))
    num_layers = max(1, -(-cold_bytes() // (experts * per_expert)))
    layers = [native.NativeExperts(engine, *(random_experts(fmt, experts, r, n, 3 * j + i) for i, (r, n) in
                                             enumerate(((inter, hidden), (inter, hidden), (hidden, inter)))),
                                   (fmt,) * 3, hidden, inter) for j in range(num_layers)]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, hidden)
    knobs = [tuple(map(int, v.split(":"))) for v in variants.split(",")]
    results = {v: [] for v in knobs}
    bandwidth = read_gbps(engine)
    for _ in range(rounds):
        for v in knobs:
            for key, value in enumerate(v):
                engine.lib.hymoe_tune(key, value)
            speeds = []
            for it in range(calls):
                ids, w = _routing(1, k, experts, gen)
                layer = layers[it % num_layers]
                t0 = time.perf_counter()
                layer.submit(x, ids, w)
                layer.sync()
                speeds.append(len(torch.unique(ids)) * per_expert / (time.perf_counter() - t0) / 1e9)
            results[v].append(statistics.median(speeds) / bandwidth)
    print(f"{fmt} {shape} bandwidth {bandwidth:.1f} GB/s: " +
          "  ".join(f"{':'.join(map(str, v))} -> {statistics.median(r):.3f}" for v, r in results.items()))


if __name__ == "__main__":
    main(*sys.argv[1:4])
