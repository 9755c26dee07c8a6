"""What a format's decode kernel costs in compute alone: its weights held in the L3 cache, the
marginal time per 256-weight block and thread between 1,024 and 4,096 rows of 7,168 (one token,
the per-row kernel, both cores), so the fixed cost of a call (the pool, the activations) drops out.

    python scripts/kernel_compute.py Q2_K Q3_K Q4_K [--threads 2] [--json]

A kernel whose `gbps_per_thread` x threads is not well above the streaming-read bandwidth of
`hymoe bench experts` cannot reach its fraction: it is compute-bound there (docs/kernels.md).
"""
import argparse
import json
import time

import torch

from hymoe.bench.experts import random_experts
from hymoe.experts import native
from hymoe.experts.native_linear import NativeLinear
from hymoe.quant.formats import row_bytes

N = 7168


def call_seconds(engine, fmt: str, rows: int, reps: int = 7, calls: int = 300) -> float:
    """The second-best of `reps` means over `calls` calls of one token on rows x N warm weights."""
    w = random_experts(fmt, 1, rows, N, 0).reshape(-1).contiguous()
    call = NativeLinear(engine, N, [(fmt, rows, w)])
    x = torch.randn(1, N)
    means = []
    for _ in range(reps):
        for _ in range(calls // 6):
            call(x)
        t = time.perf_counter()
        for _ in range(calls):
            call(x)
        means.append((time.perf_counter() - t) / calls)
    return sorted(means)[1]


def measure(engine, fmt: str) -> dict:
    small, large = call_seconds(engine, fmt, 1024), call_seconds(engine, fmt, 4096)
    blocks = 3072 * N // 256 / engine.threads  # per thread, between the two sizes
    ns = (large - small) / blocks * 1e9
    block_bytes = row_bytes(fmt, N) / (N // 256)
    return {"format": fmt, "threads": engine.threads, "isa": native.isa_name(), "ns_per_block": round(ns, 3),
            "gbps_per_thread": round(block_bytes / ns, 1), "fixed_us": round((small - blocks / 3 * ns * 1e-9) * 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("formats", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    engine = native.NativeEngine(args.threads, is_async=False)
    for fmt in args.formats:
        r = measure(engine, fmt.upper())
        print(json.dumps(r) if args.json else
              f"{r['format']}: {r['ns_per_block']:.2f} ns a block and thread ({r['gbps_per_thread']} GB/s a thread "
              f"of compute; {r['isa']}, {r['threads']} threads)")


if __name__ == "__main__":
    main()
