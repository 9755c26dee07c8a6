"""Next-token sampling: greedy, temperature, top-k, top-p, repetition penalty, per-sequence seeds."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(slots=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    is_eos_ignored: bool = False
    extra_eos_ids: tuple[int, ...] = field(default=())
    grammar: object | None = None  # a compiled grammar (engine/grammar.py): the output must match it
    # None: no log-probabilities; k >= 0: each sampled token's, with its k most likely alternatives
    logprobs: int | None = None

    @property
    def is_argmax(self) -> bool:
        """Whether sample() takes the logits' argmax as they come: greedy, no penalty, no grammar (so a
        pass that computed the argmax, Runner.picks, gives the token without a torch call)."""
        return self.temperature <= 0 and self.repetition_penalty == 1.0 and self.grammar is None

    def generator(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator().manual_seed(self.seed)


def _penalise(logits: torch.Tensor, history: list[int], penalty: float) -> torch.Tensor:
    # CTRL-style: divide positive logits, multiply negative ones, for tokens already seen.
    ids = torch.tensor(sorted(set(history)), dtype=torch.long)
    seen = logits[ids]
    logits[ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def sample(logits: torch.Tensor, p: SamplingParams, history: list[int], gen: torch.Generator | None) -> int:
    """logits [V] float32 on CPU -> one token id."""
    if p.repetition_penalty != 1.0 and history:
        logits = _penalise(logits.clone(), history, p.repetition_penalty)
    if p.temperature <= 0:
        return int(logits.argmax())
    logits = logits / p.temperature
    if p.top_k > 0:
        kth = logits.topk(min(p.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > p.top_p  # keep the token that crosses top_p
        logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=gen))


class Scored:
    """Log-probabilities of the rows that asked, for one forward pass: one log_softmax and one topk
    over those rows together. They are the model's raw distribution (before temperature, top-k/p,
    penalties or a grammar's mask), as OpenAI and vLLM's default report them."""

    def __init__(self, logits: torch.Tensor, rows: list[int], k: int):
        self.where = {r: i for i, r in enumerate(rows)}  # batch row -> row of self.lp
        self.lp = logits[rows].float().log_softmax(-1) if rows else None  # [R, V]
        self.top = self.lp.topk(min(k, self.lp.shape[-1])) if rows and k > 0 else None  # ([R, k], [R, k])

    def entry(self, row: int, token: int, k: int) -> tuple[int, float, list[tuple[int, float]]] | None:
        """(token, its logprob, the k most likely (token, logprob), most likely first) or None."""
        if row not in self.where:
            return None
        i = self.where[row]
        top = [] if self.top is None or k == 0 else \
            list(zip(self.top.indices[i, :k].tolist(), self.top.values[i, :k].tolist()))
        return token, float(self.lp[i, token]), top
