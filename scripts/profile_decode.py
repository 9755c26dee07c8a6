"""Where one decode step's time goes: torch.profiler over decode steps of a model under a placement.

    python scripts/profile_decode.py --random deepseek-v3 --layers 4 --placement hybrid --steps 8

Prints the ops with the most host (CPU) time and the wall time per step; the host time per layer
is the overhead that CUDA graphs or fewer, larger kernels would remove.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from hymoe.bench.synthetic import random_model
from hymoe.engine.llm import LLM


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--random", default="deepseek-v3")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts-type", default="Q4_K")
    p.add_argument("--placement", default="hybrid")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args()
    llm = LLM(random_model(args.random, args.layers, args.experts_type), placement=args.placement,
              progress=False, max_context=256)
    runner = llm.runner(1, 256)
    runner.forward([0], [list(range(1, 65))], [0])
    pos = 64
    for _ in range(4):  # warm-up
        runner.forward([0], [[7]], [pos])
        pos += 1
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(args.steps):
            runner.forward([0], [[7]], [pos])
            pos += 1
    wall = (time.perf_counter() - t0) / args.steps
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    t0 = time.perf_counter()
    for _ in range(args.steps):
        runner.forward([0], [[7]], [pos])
        pos += 1
    print(f"{args.placement}: {wall * 1e3:.2f} ms per decode step under the profiler, "
          f"{(time.perf_counter() - t0) / args.steps * 1e3:.2f} ms without")


if __name__ == "__main__":
    main()
