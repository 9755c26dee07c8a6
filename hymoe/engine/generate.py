"""Generation loop: one batched prefill, then one batched decode step per token for all live rows."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from hymoe.engine.runner import Runner
from hymoe.engine.sampler import SamplingParams, sample
from hymoe.tokenizer import Tokenizer


@dataclass(slots=True)
class Completion:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"  # "stop" | "length"
    prompt_tokens: int = 0


@dataclass(slots=True)
class Timings:
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s else 0.0


def _stop_text(text: str, stops: tuple[str, ...]) -> str | None:
    cut = [text.index(s) for s in stops if s in text]
    return text[: min(cut)] if cut else None


def generate(runner: Runner, prompts: list[list[int]], params: SamplingParams, eos_ids: tuple[int, ...],
             tokenizer: Tokenizer | None = None, starts: list[int] | None = None,
             on_token: Callable[[int, int], None] | None = None) -> tuple[list[Completion], Timings]:
    """Rows 0..B-1 of the runner's cache; starts[b] tokens of row b are already cached (chat reuse)."""
    num_rows = len(prompts)
    starts = starts or [0] * num_rows
    eos = set() if params.is_eos_ignored else set(eos_ids) | set(params.extra_eos_ids)
    out = [Completion(prompt_tokens=s + len(p)) for s, p in zip(starts, prompts)]
    gens = [params.generator() for _ in range(num_rows)]
    histories = [list(p) for p in prompts]
    timings = Timings()
    lengths = [s + len(p) for s, p in zip(starts, prompts)]
    text_cut: set[int] = set()  # rows whose text was cut at a stop string

    t0 = time.perf_counter()
    logits = runner.forward(list(range(num_rows)), prompts, starts)  # [B, V]
    timings.prefill_s, timings.prefill_tokens = time.perf_counter() - t0, sum(len(p) for p in prompts)
    live = list(range(num_rows))
    t0 = time.perf_counter()
    while True:
        next_live, next_tokens = [], []
        for i, row in enumerate(live):
            tok = sample(logits[i], params, histories[row], gens[row])
            c = out[row]
            c.token_ids.append(tok)
            histories[row].append(tok)
            if on_token is not None:
                on_token(row, tok)
            if tok in eos:
                c.token_ids.pop()
                c.finish_reason = "stop"
                continue
            if params.stop and tokenizer is not None:
                cut = _stop_text(tokenizer.decode(c.token_ids), params.stop)
                if cut is not None:
                    c.text, c.finish_reason = cut, "stop"
                    text_cut.add(row)
                    continue
            if len(c.token_ids) >= params.max_new_tokens or lengths[row] >= runner.max_len:
                continue
            next_live.append(row)
            next_tokens.append([tok])
        if not next_live:
            break
        logits = runner.forward(next_live, next_tokens, [lengths[r] for r in next_live])
        for r in next_live:
            lengths[r] += 1
        timings.decode_tokens += len(next_live)
        live = next_live
    timings.decode_s = time.perf_counter() - t0
    if tokenizer is not None:
        for row, c in enumerate(out):
            if row not in text_cut:
                c.text = tokenizer.decode(c.token_ids)
    return out, timings
