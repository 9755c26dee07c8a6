"""Compare kernel tuning values in one process, alternating, so a shared machine's noise hits every
variant alike (`hymoe bench experts --tune` runs one variant per process). The order turns each
round and is reversed every other round (decode_ab.schedule), and the first variant runs again as a
control: with a fixed order, two identical settings read up to 4.5% apart (docs/dense.md).

    python scripts/kernel_ab.py Q8_0 qwen3-30b-a3b prefetch_bytes=8192 prefetch_bytes=4096,down_rows=256

Each variant is a comma list of NAME=VALUE (the names: Tuning in hymoe/csrc/common.h); a name a
variant leaves out keeps its default. Prints each variant's median fraction of the streaming-read
bandwidth at batch 1, cold weights.
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_ab import knobs_of, schedule  # noqa: E402

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
    variants = (*variants, variants[0])  # the last: the first again, a control
    knobs = [knobs_of(v) for v in variants]
    defaults = {name: native.bench_tune(name) for v in knobs for name in v}
    results = [[] for _ in variants]
    bandwidth = read_gbps(engine)
    for order in schedule(len(variants), rounds):
        for i in order:
            values = knobs[i]
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
            results[i].append(statistics.median(speeds) / bandwidth)
    for name, default in defaults.items():
        native.bench_tune(name, default)
    labels = [*variants[:-1], f"{variants[-1]} (control)"]
    print(f"{fmt} {shape} bandwidth {bandwidth:.1f} GB/s: " +
          "  ".join(f"{v} -> {statistics.median(r):.3f}" for v, r in zip(labels, results)))


if __name__ == "__main__":
    main(*sys.argv[1:])
