"""`hymoe bench e2e`: prefill and decode tokens/s of one model under each placement, side by side.

Beside the rates: the CPU busy fraction (process CPU time over wall time x cores), the GPU busy
fraction where CUDA runs the dense part (None otherwise), and the decode rate this machine's
measured read bandwidth allows: bandwidth / bytes of weights one decode step must read (every
non-expert weight plus k routed experts per MoE layer, in their stored formats).
"""
from __future__ import annotations

import os
import random
import time

import torch

from hymoe.engine.llm import LLM
from hymoe.engine.sampler import SamplingParams
from hymoe.experts import native
from hymoe.layers.moe import MoE


def weight_bytes_per_token(llm: LLM) -> int:
    cfg, total = llm.config, 0
    for name, p in llm.model.named_parameters():
        if not (name == "lm_head.weight" and cfg.is_tied_embeddings) and "embed_tokens" not in name:
            total += p.numel() * p.element_size()  # the embedding reads one row, not the table
    for m in llm.model.modules():
        if isinstance(m, MoE):
            total += m.experts.nbytes() * cfg.num_experts_per_tok // cfg.num_experts
    return total


def bench_e2e(path, placements: list[str], prompt_tokens: int, gen_tokens: int, threads: int | None = None,
              dtype: str | None = None) -> list[dict]:
    from hymoe.bench.machine import read_gbps

    gbps = read_gbps(native.NativeEngine(threads, is_async=False)) if native.library() is not None else None
    rows = []
    for placement in placements:
        llm = LLM(path, dtype=dtype, placement=placement, threads=threads, progress=False,
                  max_context=prompt_tokens + gen_tokens + 1)
        rng = random.Random(0)
        ids = [rng.randrange(llm.config.vocab_size) for _ in range(prompt_tokens)]
        params = SamplingParams(max_new_tokens=gen_tokens, is_eos_ignored=True)
        llm.generate_batch([ids], SamplingParams(max_new_tokens=2, is_eos_ignored=True))  # warm-up, same shapes
        cpu0, t0 = time.process_time(), time.perf_counter()
        _, timings = llm.generate_batch([ids], params)
        wall = time.perf_counter() - t0
        per_token = weight_bytes_per_token(llm)
        rows.append({
            "placement": placement, "device": str(llm.device), "experts": llm.experts_backend,
            "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
            "prefill_tokens_per_s": round(timings.prefill_tokens_per_s, 2),
            "decode_tokens_per_s": round(timings.decode_tokens_per_s, 2),
            # process CPU time over wall x cores; capped at 1, which timer granularity can overshoot on short runs
            "cpu_busy": round(min(1.0, (time.process_time() - cpu0) / (wall * (os.cpu_count() or 1))), 3),
            "gpu_busy": None,  # measured only where CUDA runs the dense part
            "weight_bytes_per_token": per_token, "bandwidth_gbps": round(gbps, 2) if gbps else None,
            "decode_bound_tokens_per_s": round(gbps * 1e9 / per_token, 1) if gbps else None,
        })
        if llm.device.type == "cuda":
            torch.cuda.synchronize()
    return rows
