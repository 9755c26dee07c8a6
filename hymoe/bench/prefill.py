"""`hymoe bench prefill`: where streaming expert weights to the GPU beats computing them on the CPU.

One hybrid model, prompts of growing length, each prefilled twice: routed experts on the CPU
engine, then streamed to the GPU (--gpu-prefill-threshold 1). The smallest length at which
streaming is faster is the threshold to pass to --gpu-prefill-threshold on this machine.
"""
from __future__ import annotations

import random
import time

from hymoe.engine.llm import LLM, load
from hymoe.experts.gpu_prefill import GpuPrefillExperts
from hymoe.layers.moe import MoE


def _prefill_s(llm: LLM, ids: list[int], reps: int = 2) -> float:
    """Best of `reps` prefills (the first run of a shape pays one-time allocations)."""
    runner = llm.runner(1, len(ids))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        runner.forward([0], [ids], [0])  # returns CPU logits: the GPU has finished
        best = min(best, time.perf_counter() - t0)
    return best


def bench_prefill(path, lengths: list[int], threads: int | None = None, dtype: str | None = None) -> list[dict]:
    llm = load(path, dtype=dtype, placement="hybrid", threads=threads, progress=False,
              max_context=max(lengths) + 1, gpu_prefill_threshold=1)
    streaming = [m for m in llm.model.modules() if isinstance(m, MoE) and isinstance(m.experts, GpuPrefillExperts)]
    rng = random.Random(0)
    rows = []
    for n in lengths:
        ids = [rng.randrange(llm.config.vocab_size) for _ in range(n)]
        for m in streaming:
            m.experts.threshold = n + 1  # below: the CPU engine
        cpu_s = _prefill_s(llm, ids)
        for m in streaming:
            m.experts.threshold = 1
        gpu_s = _prefill_s(llm, ids)
        rows.append({"prompt_tokens": n, "gpu": str(llm.placement.gpu), "cpu_experts_tokens_per_s": round(n / cpu_s, 1),
                     "gpu_stream_tokens_per_s": round(n / gpu_s, 1), "is_gpu_faster": gpu_s < cpu_s})
    # the shortest length from which streaming stays faster at every longer length measured
    threshold = None
    for r in reversed(rows):
        if not r["is_gpu_faster"]:
            break
        threshold = r["prompt_tokens"]
    for r in rows:
        r["threshold"] = threshold
    return rows
