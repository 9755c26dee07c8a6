"""A/B kernel variants in one process, alternating, so a shared machine's noise hits both alike.

    python scripts/kernel_ab.py Q8_0 qwen3-30b-a3b 8192:4:1,4096:4:1

Each variant is prefetch_bytes:rows_per_pass:head_prefetch[:down_rows[:gate_rows[:tile_min[:pass_ahead]]]],
the knobs of hymoe_tune 0-6 (0-2 and 6 in the AVX512 kernels, 3-4 the MoE job's work units, 5 the
fewest tokens per expert for the batch tiles).
Prints each variant's median fraction of the streaming-read bandwidth at batch 1, cold weights.
"""
import statistics
import sys
import time

import torch

from hymoe.bench.experts import SHAPES, _routing, cold_layers
from hymoe.bench.machine import read_gbps
from hymoe.experts import native


def main(fmt: str, shape: str, variants: str, rounds: int = 6, calls: int = 40) -> None:
    hidden, _, _, k = SHAPES[shape]
    engine = native.NativeEngine(2, is_async=False)
    layers, experts, per_expert = cold_layers(engine, shape, fmt, max_gb=4.0)
    num_layers = len(layers)
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
