"""generate(): prompts in, finished sequences out, through the one engine loop (scheduler.py).

The prompts take rows 0..B-1 of the runner's cache, are prefilled in chunks of up to `prefill_chunk`
tokens (all of them together, when they fit), and decode together.
"""
from __future__ import annotations

from typing import Callable

from hymoe.engine.runner import Runner
from hymoe.engine.sampler import SamplingParams
from hymoe.engine.scheduler import PREFILL_CHUNK, Scheduler, Timings
from hymoe.engine.sequence import Sequence
from hymoe.tokenizer import Tokenizer


def generate(runner: Runner, prompts: list[list[int]], params: SamplingParams, eos_ids: tuple[int, ...],
             tokenizer: Tokenizer | None = None,
             on_token: Callable[[int, int], None] | None = None,
             prefill_chunk: int = PREFILL_CHUNK) -> tuple[list[Sequence], Timings]:
    """on_token(b, token) sees every token sampled for prompt b."""
    seqs = [Sequence(list(p), params, eos_ids, runner.max_len, tokenizer,
                     on_token=None if on_token is None else (lambda t, b=b: on_token(b, t)))
            for b, p in enumerate(prompts)]
    scheduler = Scheduler(runner, prefill_chunk)
    for seq in seqs:
        scheduler.add(seq)
    scheduler.run()
    return seqs, scheduler.timings
