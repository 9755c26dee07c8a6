"""Where one decode step's time goes, per token: routed experts, dense GEMVs (attention projections,
shared experts, dense FFNs, the head), attention itself, and the rest (norms, routing, Python and
torch's per-operation costs). Timers sit on module boundaries, so the split costs a little time
itself; `--table` adds torch.profiler's operations with the most host time.

    python scripts/profile_decode.py model.gguf --placement cpu --threads 2 --context 512
    python scripts/profile_decode.py --random deepseek-v3 --layers 4 --placement hybrid --table
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch import nn

from hymoe.engine.llm import load
from hymoe.layers.moe import MoE

try:
    from hymoe.layers.linear import QuantLinear
    LINEARS: tuple = (nn.Linear, QuantLinear)
except ImportError:  # a tree from before the dense part stayed quantized (for before/after figures)
    LINEARS = (nn.Linear,)


class Clock:
    """Exclusive time per key: a call nested in another key's call is charged to its own key only."""

    def __init__(self):
        self.spent, self.stack = defaultdict(float), []

    def wrap(self, key: str, fn):
        def timed(*a, **k):
            now = time.perf_counter()
            if self.stack:  # pause the enclosing key
                outer, since = self.stack[-1]
                self.spent[outer] += now - since
            self.stack.append([key, now])
            try:
                return fn(*a, **k)
            finally:
                now = time.perf_counter()
                self.spent[key] += now - self.stack.pop()[1]
                if self.stack:
                    self.stack[-1][1] = now
        return timed


def instrument(model, clock: Clock) -> None:
    for m in model.modules():
        if isinstance(m, LINEARS):
            m.forward = clock.wrap("dense", m.forward)
        if getattr(m, "fused", None) is not None:
            m.fused = clock.wrap("dense", m.fused)
        if isinstance(m, MoE):
            m.experts.submit = clock.wrap("experts", m.experts.submit)
            m.experts.sync = clock.wrap("experts", m.experts.sync)
    for layer in model.layers:
        layer.self_attn.forward = clock.wrap("attention", layer.self_attn.forward)
        if getattr(layer, "native_step", None) is not None:  # one native call: its own stage clocks
            layer.native_step.time_stages(True)


# a native layer's stages (experts/native_layer.py STAGES) -> this script's parts
NATIVE_PARTS = {"q/k/v": "dense", "attention": "attention", "o": "dense", "router": "routing",
                "experts": "experts"}


def native_stage_ms(model, steps: int) -> dict:
    """Milliseconds per step of the native layers' stages, by this script's part names."""
    from hymoe.experts.native_layer import STAGES

    out = defaultdict(float)
    for layer in model.layers:
        native = getattr(layer, "native_step", None)
        if native is not None and native.stage_ns is not None:
            for name, ns in zip(STAGES, native.stage_ns.tolist()):
                out[NATIVE_PARTS[name]] += ns / 1e6 / steps
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?", help="HF directory or GGUF file (or --random)")
    p.add_argument("--random", help="random weights of a real shape (deepseek-v3, qwen3-30b-a3b)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts-type", default="Q4_K")
    p.add_argument("--dense-type", help="with --random: the other matrices as blocks of this format "
                   "(as a GGUF file's), not bf16")
    p.add_argument("--placement", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--dtype")
    p.add_argument("--context", type=int, default=512, help="cached positions before the timed steps")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--table", action="store_true", help="also torch.profiler's table of operations")
    args = p.parse_args()
    if args.random:
        from hymoe.bench.synthetic import random_model

        source = random_model(args.random, args.layers, args.experts_type, args.dense_type)
    else:
        source = args.model
    llm = load(source, placement=args.placement, threads=args.threads, dtype=args.dtype, progress=False,
              max_context=args.context + 2 * args.steps + 8)
    runner = llm.runner(1, args.context + 2 * args.steps + 8)
    runner.forward([0], [[(7 * i) % llm.config.vocab_size for i in range(args.context)]], [0])
    pos = args.context
    for _ in range(4):  # warm-up
        runner.forward([0], [[7]], [pos])
        pos += 1
    clock = Clock()
    instrument(llm.model, clock)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        runner.forward([0], [[7]], [pos])
        pos += 1
    total = (time.perf_counter() - t0) / args.steps * 1e3
    ms = defaultdict(float, {k: v / args.steps * 1e3 for k, v in clock.spent.items()})
    for k, v in native_stage_ms(llm.model, args.steps).items():
        ms[k] += v
    parts = {"experts": ms["experts"], "dense GEMV": ms["dense"], "attention": ms["attention"],
             "norms and routing (native layers)": ms["routing"]}
    parts["norms, routing, Python and torch overhead"] = total - sum(parts.values())
    print(f"{args.placement}, {llm.dtype}, context {args.context}: {total:.2f} ms per decode step")
    for k, v in parts.items():
        print(f"  {k:<44}{v:7.2f} ms")
    if args.table:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=acts, record_shapes=True) as prof:
            for _ in range(8):
                runner.forward([0], [[7]], [pos])
                pos += 1
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
