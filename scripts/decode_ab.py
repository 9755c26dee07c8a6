"""Compare kernel tuning values on decode steps of a GGUF file, in one process.

    python scripts/decode_ab.py FILE kq45_groups=0 kq45_groups=1 [--rounds 12] [--steps 16]

Each variant is a comma list of NAME=VALUE (the names: Tuning in hymoe/csrc/common.h). The first
variant runs twice, so its repeat is a control: its ratio says how far the harness itself errs.
Each round runs every variant for `steps` decode steps; the order turns by one place each round and
is reversed every other round. Why: with the order fixed, or only swapped between two settings, a
later segment sits at a longer context and a drifting machine favours one setting. Two identical
settings read 1.045 over 3 rounds that way on a Zen 4 sitting (docs/dense.md). Every round starts
at the same context (its positions written again), so any number of rounds compare alike. Prints
each variant's median step, its median ratio to the first variant per round, and the stage clocks;
with --split-ms, the ratios again over the rounds whose every step median lies under that many ms
and over the rest: a shared machine's bus changes state within minutes, and a setting may help
in one state and not the other.
"""
import argparse
import statistics
import time

import torch


def schedule(variants: int, rounds: int) -> list[list[int]]:
    """Round r's order of the variants: turned by r // 2 places, reversed in odd rounds."""
    orders = []
    for r in range(rounds):
        order = [(i + r // 2) % variants for i in range(variants)]
        orders.append(order if r % 2 == 0 else order[::-1])
    return orders


def knobs_of(variant: str) -> dict[str, int]:
    return {name: int(value) for name, value in (pair.split("=") for pair in variant.split(","))}


def main(path: str, variants: list[str], rounds: int, steps: int, context: int = 512,
         split_ms: float | None = None) -> list[float]:
    from hymoe.bench.e2e import _prompt
    from hymoe.bench.machine import read_gbps
    from hymoe.engine.llm import load
    from hymoe.experts import native

    variants = [variants[0], *variants[1:], variants[0]]  # the last: the control
    knobs = [knobs_of(v) for v in variants]
    defaults = {name: native.bench_tune(name) for k in knobs for name in k}
    length = context + len(variants) * steps + 8
    llm = load(path, placement="cpu", threads=2, progress=False, max_context=length)
    runner = llm.runner(1, length, is_graphed=False)
    runner.reserve(0, 0, context)
    token = int(runner.forward([0], [_prompt(llm.config.vocab_size, context)], [0])[0].argmax())
    layers = [m.native_step for m in llm.model.modules() if getattr(m, "native_step", None) is not None]
    for layer in layers:
        layer.time_stages(True)
    times = [[] for _ in variants]
    stages = [torch.zeros(5, dtype=torch.float64) for _ in variants]
    pos = context
    try:
        for order in schedule(len(variants), rounds):
            pos = context  # every round at the same context, its positions written again
            for v in order:
                for name, default in defaults.items():
                    native.bench_tune(name, knobs[v].get(name, default))
                for layer in layers:
                    layer.stage_ns.zero_()
                step_times = []
                for _ in range(steps):
                    runner.reserve(0, pos, 1)
                    t0 = time.perf_counter()
                    token = int(runner.forward([0], [[token]], [pos])[0].argmax())
                    step_times.append(time.perf_counter() - t0)
                    pos += 1
                times[v].append(statistics.median(step_times[2:] or step_times))
                stages[v] += sum(layer.stage_ns for layer in layers) / steps / 1e6
    finally:
        for name, default in defaults.items():
            native.bench_tune(name, default)
    gbps = read_gbps(native.NativeEngine(2, is_async=False))
    ratios = [statistics.median(b / a for a, b in zip(times[0], times[v])) for v in range(len(variants))]
    for v, name in enumerate(variants):
        label = f"{name} (control)" if v == len(variants) - 1 else name
        print(f"{label}: step {statistics.median(times[v]) * 1e3:.3f} ms, ratio {ratios[v]:.3f}, stages ms "
              f"{[round(x, 3) for x in (stages[v] / rounds).tolist()]}")
    print(f"probe {gbps:.1f} GB/s")
    if split_ms is not None:
        print_split(variants, times, split_ms / 1e3)
    return ratios


def print_split(variants: list[str], times: list[list[float]], cut: float) -> None:
    """The ratios over the rounds whose every variant's median step is under cut seconds, then the rest."""
    quick = [r for r in range(len(times[0])) if max(t[r] for t in times) < cut]
    for label, rs in ((f"under {cut * 1e3:g} ms", quick), ("the rest", [r for r in range(len(times[0])) if r not in quick])):
        if rs:
            ratios = [statistics.median(t[r] / times[0][r] for r in rs) for t in times]
            print(f"rounds {label} ({len(rs)}): " + ", ".join(f"{n} {x:.3f}" for n, x in zip(variants, ratios)))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file")
    p.add_argument("variants", nargs="+", help="NAME=VALUE[,NAME=VALUE...]; the first is the baseline")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--split-ms", type=float, help="also the ratios over rounds with steps under this and the rest")
    a = p.parse_args()
    main(a.file, a.variants, a.rounds, a.steps, a.context, a.split_ms)
