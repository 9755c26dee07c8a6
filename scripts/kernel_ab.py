"""Compare kernel tuning values in one process, alternating, so a shared machine's noise hits every
variant alike (`hymoe bench experts --tune` runs one variant per process).

    python scripts/kernel_ab.py Q8_0 qwen3-30b-a3b prefetch_bytes=8192 prefetch_bytes=4096,down_rows=256

Each variant is a comma list of NAME=VALUE (the names: Tuning in hymoe/csrc/common.h); a name a
variant leaves out keeps its default. Prints each variant's median fraction of the streaming-read
bandwidth at batch 1, cold weights.
"""
import statistics
import sys
import time

import torch

from hymoe.bench.experts import SHAPES, _routing, cold_layers
from hymoe.bench.machine import read_gbps
from hymoe.experts import native


def main(fmt: str, shape: str, *variants: str, rounds: int = 6, calls: int = 40) -> None:
    hidden, _, _, k = SHAPES[shape]
    engine = native.NativeEngine(2, is_async=False)
    layers, experts, per_expert = cold_layers(engine, shape, fmt, max_gb=4.0)
    num_layers = len(layers)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, hidden)
    knobs = [{name: int(value) for name, value in (pair.split("=") for pair in v.split(","))} for v in variants]
    defaults = {name: native.bench_tune(name) for v in knobs for name in v}
    results = {v: [] for v in variants}
    bandwidth = read_gbps(engine)
    for _ in range(rounds):
        for v, values in zip(variants, knobs):
            for name, default in defaults.items():
                native.bench_tune(name, values.get(name, default))
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
          "  ".join(f"{v} -> {statistics.median(r):.3f}" for v, r in results.items()))


if __name__ == "__main__":
    main(*sys.argv[1:])
