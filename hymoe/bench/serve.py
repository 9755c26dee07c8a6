"""`hymoe bench serve`: N users at once through the engine's continuous-batching loop (no HTTP in the way).

Each user sends one prompt and decodes `gen_tokens` tokens (EOS ignored, greedy). Reported per N:
aggregate decode tokens/s (all users' tokens over the wall time), per-user decode tokens/s (after
each one's first token) and time to first token. With a shared prefix: time to first token of a
request whose prompt begins with the previous one's. With a response format: the same runs with
and without the constraint, alternately (a shared machine drifts), and the constraint's overhead.
"""
from __future__ import annotations

import random
import statistics
import threading
import time

from hymoe.engine.sampler import SamplingParams
from hymoe.engine.engine_thread import EngineThread

PROMPTS = ["And God said unto Moses,", "In the beginning was the Word,", "The Lord is my shepherd;",
           "Blessed are the meek:", "And Moses went up unto God,", "Let there be light:",
           "Now the serpent was more subtil", "And it came to pass in those days,"]


def bench_serve(llm, users: list[int], gen_tokens: int = 64) -> list[dict]:
    sched = EngineThread(llm, max_batch=max(users), max_queue=max(users))
    try:
        _run(sched, llm, 1, 4)  # warm-up
        return [_run(sched, llm, n, gen_tokens) for n in users]
    finally:
        sched.close()


# A long string: the demo model rarely writes '"', so a constrained user decodes all its tokens too,
# and every step fills a bitmask of the whole vocabulary (the grammar's costliest state)
BENCH_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


def bench_constrained(llm, users: list[int], gen_tokens: int, response_format: str, rounds: int = 5) -> list[dict]:
    """Per user count: median decode tokens/s without and with the constraint, runs alternating."""
    # not json_object: the demo model closes "{}" at once, and users that stop early skew the comparison
    assert response_format == "json_schema", response_format
    grammar = llm.grammars.json_schema(BENCH_SCHEMA)
    sched = EngineThread(llm, max_batch=max(users), max_queue=max(users))
    rows = []
    try:
        _run(sched, llm, 1, 4, grammar)  # warm-up, the grammar's too
        for n in users:
            runs = {"free": [], "constrained": []}
            for _ in range(rounds):
                runs["free"].append(_run(sched, llm, n, gen_tokens))
                runs["constrained"].append(_run(sched, llm, n, gen_tokens, grammar))
            row = {"users": n, "gen_tokens": gen_tokens, "response_format": response_format, "rounds": rounds}
            for kind, rs in runs.items():
                for key in ("aggregate_tokens_per_s", "per_user_tokens_per_s"):
                    row[f"{kind}_{key}"] = statistics.median(r[key] for r in rs)
                row[f"{kind}_tokens"] = sum(r["tokens"] for r in rs)
            row["overhead"] = round(1 - row["constrained_aggregate_tokens_per_s"] /
                                    row["free_aggregate_tokens_per_s"], 4)
            rows.append(row)
    finally:
        sched.close()
    return rows


def _run(sched: EngineThread, llm, n: int, gen_tokens: int, grammar=None) -> dict:
    done = [threading.Event() for _ in range(n)]
    reqs = []
    for i in range(n):
        ids = llm.tokenizer.encode(PROMPTS[i % len(PROMPTS)])
        params = SamplingParams(max_new_tokens=gen_tokens, is_eos_ignored=True, grammar=grammar)
        reqs.append(llm.sequence(ids, params, lambda kind, data, e=done[i]: kind in ("done", "error") and e.set()))
    t0 = time.perf_counter()
    for r in reqs:
        sched.submit(r)
    for e in done:
        e.wait()
    wall = time.perf_counter() - t0
    tokens = sum(len(r.token_ids) for r in reqs)
    per_user = [(len(r.token_ids) - 1) / (r.t_done - r.t_first) for r in reqs if len(r.token_ids) > 1]
    return {"users": n, "gen_tokens": gen_tokens, "tokens": tokens, "aggregate_tokens_per_s": round(tokens / wall, 2),
            "per_user_tokens_per_s": round(statistics.mean(per_user), 2),
            "ttft_ms": round(1000 * statistics.mean(r.t_first - r.t_submit for r in reqs), 1),
            "ttft_max_ms": round(1000 * max(r.t_first - r.t_submit for r in reqs), 1), "wall_s": round(wall, 3)}


def bench_shared_prefix(llm, prefix_tokens: int, gen_tokens: int = 8) -> dict:
    """Two requests, one after the other, that share their first `prefix_tokens` tokens: the second
    finds them in the slot the first left and computes only its own tail (time to first token)."""
    rng = random.Random(0)
    prefix = [rng.randrange(llm.config.vocab_size) for _ in range(prefix_tokens)]
    sched = EngineThread(llm, max_batch=2, max_queue=2)
    try:
        _one(sched, llm, [1, 2, 3], 2)  # warm-up, in the other slot's place
        first = _one(sched, llm, prefix + [5, 6, 7], gen_tokens)
        second = _one(sched, llm, prefix + [8, 9], gen_tokens)
    finally:
        sched.close()
    ttft = [1000 * (s.t_first - s.t_submit) for s in (first, second)]
    return {"shared_prefix": prefix_tokens, "ttft_first_ms": round(ttft[0], 1), "ttft_second_ms": round(ttft[1], 1),
            "ttft_ratio": round(ttft[1] / ttft[0], 3), "cached_tokens": second.reused}


def _one(sched: EngineThread, llm, ids: list[int], gen_tokens: int):
    done = threading.Event()
    seq = llm.sequence(ids, SamplingParams(max_new_tokens=gen_tokens, is_eos_ignored=True),
                       lambda kind, data: kind in ("done", "error") and done.set())
    sched.submit(seq)
    done.wait()
    return seq
