"""`hymoe bench context`: what a long context costs. Per prompt length: prefill and decode
tokens/s through the engine's own loop (chunked prefill), the KV bytes the sequence holds (under
--kv-policy: the blocks its row held) and the process's peak resident memory.

Lengths run in ascending order in one process, each with a cache of its own size, so each length's
peak RSS is the high-water mark up to it: the model plus that length's KV and the working memory
of its prefill chunks.
"""
from __future__ import annotations

import math
import random
import resource

from hymoe.engine.generate import generate
from hymoe.engine.llm import LLM
from hymoe.engine.sampler import SamplingParams


def kv_bytes_per_token(llm: LLM) -> int:
    """The bytes one position takes in every layer's cache (MLA: (R + Dr) x layers x dtype)."""
    size = llm.kv_dtype.itemsize
    return sum(math.prod(shape) * size for layer in llm.model.cache_entries() for shape in layer.values())


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def bench_context(llm: LLM, lengths: list[int], gen_tokens: int = 16, kv_policy: str = "full") -> list[dict]:
    rng = random.Random(0)
    per_token = kv_bytes_per_token(llm)
    warm = SamplingParams(max_new_tokens=2, is_eos_ignored=True)
    llm.generate_batch([[rng.randrange(llm.config.vocab_size) for _ in range(64)]], warm)  # one-time allocations
    rss_loaded = _peak_rss_bytes()
    rows = []
    for n in sorted(lengths):
        ids = [rng.randrange(llm.config.vocab_size) for _ in range(n)]
        params = SamplingParams(max_new_tokens=gen_tokens, is_eos_ignored=True)
        llm.check_prompt(ids)
        runner = llm.runner(1, min(llm.max_context, n + gen_tokens), kv_policy=kv_policy)
        _, timings = generate(runner, [ids], params, llm.eos_ids, prefill_chunk=llm.prefill_chunk)
        rows.append({"tokens": n, "kv_policy": kv_policy, "gen_tokens": gen_tokens,
                     "prefill_tokens_per_s": round(timings.prefill_tokens_per_s, 2),
                     "decode_tokens_per_s": round(timings.decode_tokens_per_s, 2),
                     **_held(runner, per_token, n + gen_tokens), "kv_bytes_per_token": per_token,
                     "peak_rss_bytes": _peak_rss_bytes(), "rss_after_load_bytes": rss_loaded,
                     "prefill_chunk": llm.prefill_chunk})
    return rows


def _held(runner, per_token: int, positions: int) -> dict:
    """The sequence's KV bytes. Full: every position's. Under a policy: the blocks its row held at
    its most (a prefill chunk's included), and the most it kept between passes."""
    held = runner.retention.held(0)
    if not held.peak_blocks:  # full
        return {"kv_bytes": per_token * positions, "kv_bytes_kept": per_token * positions}
    block = per_token * runner.blocks.block_size
    return {"kv_bytes": held.peak_blocks * block, "kv_bytes_kept": held.kept_blocks * block}
