"""The one engine loop: continuous batching with chunked prefill, for every client.

Each `step()` admits waiting sequences into free rows, runs (a) one prefill chunk for the
sequences still reading their prompt, at most `prefill_chunk` tokens in all, so a long prompt
neither freezes the others nor builds masks of its whole length, then (b) one batched decode step
for every sequence that is generating: one forward pass, so each needed expert's weights are read
once for all of them. A sequence holds its row (a block table) from admission to its end; it is
admitted with the cached blocks of its prompt's prefix and room for the rest of its prompt, and
takes a block whenever its last fills. Where the pool has none left, the sequence ends as at its
length limit ("length"). The scheduler does no tensor work (the runner does) and makes every
decision through `Sequence`.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from hymoe.engine import decode_steps
from hymoe.engine.grammar import Masker
from hymoe.engine.runner import Runner
from hymoe.engine.sampler import Scored, sample
from hymoe.engine.sequence import Sequence


@dataclass(slots=True)
class Timings:
    """Time in forward passes and sampling, by phase, over the scheduler's life."""

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

    def add(self, is_prefill: bool, seconds: float, tokens: int) -> None:
        if is_prefill:
            self.prefill_s, self.prefill_tokens = self.prefill_s + seconds, self.prefill_tokens + tokens
        else:
            self.decode_s, self.decode_tokens = self.decode_s + seconds, self.decode_tokens + tokens


# Prompt tokens read per step, as llama.cpp's default micro-batch: enough tokens per expert for the
# batch tiles, and a chunk's [T, S] masks and scores stay bounded at any prompt length.
PREFILL_CHUNK = 512


class Scheduler:
    def __init__(self, runner: Runner, prefill_chunk: int = PREFILL_CHUNK):
        self.runner, self.prefill_chunk = runner, prefill_chunk
        self.blocks = runner.blocks  # which KV blocks each row holds, and the cached prefixes
        self.free = list(range(runner.num_slots))  # rows for sequences to come, least recently used first
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.timings = Timings()
        self.masker = Masker()  # the token bitmask of the constrained sequences

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self) -> list[Sequence]:
        """One engine step; returns the sequences that ended in it."""
        self._admit()
        if not decode_steps.take(self):  # several greedy steps in one native call, where they may go
            self._forward(self._prefill_chunks(), is_prefill=True)
            self._forward([(s, s.token_ids[-1:]) for s in self.running if s.is_decoding], is_prefill=False)
        done = [s for s in self.running if s.finish_reason is not None]
        self.release(*done)
        return done

    def _admit(self) -> None:
        """Forget cancelled sequences; give waiting ones free rows, first come first served (a
        sibling waits, and those behind it, until its leader has read the shared prompt)."""
        self.waiting = deque(s for s in self.waiting if not s.cancelled)
        while self.waiting and self.free and self.waiting[0].is_admissible and self._take_slot(self.waiting[0]):
            self.running.append(self.waiting.popleft())

    def _prefill_chunks(self) -> list[tuple[Sequence, list[int]]]:
        """Prompt tokens to read in this step: up to prefill_chunk in all, first come first served."""
        budget, reading = self.prefill_chunk, []
        for seq in self.running:
            if seq.finish_reason is None and (n := min(budget, len(seq.prompt) - seq.cached)) > 0:
                reading.append((seq, seq.prompt[seq.cached:seq.cached + n]))
                budget -= n
        return reading

    def _forward(self, batch: list[tuple[Sequence, list[int]]], is_prefill: bool) -> None:
        """One forward pass; each sequence that has read its whole prompt samples its next token."""
        if not (batch := self._extend(batch)):
            return
        t0 = time.perf_counter()
        logits = self.runner.forward([s.slot for s, _ in batch], [t for _, t in batch], [s.cached for s, _ in batch])
        self._sample(batch, logits, self.runner.picks)
        self.timings.add(is_prefill, time.perf_counter() - t0, sum(len(t) for _, t in batch))

    def _sample(self, batch: list[tuple[Sequence, list[int]]], logits, picks: list[int] | None = None) -> None:
        """Each sequence that has now read its whole prompt samples its next token (logits: [B, V];
        picks: each row's argmax, where the pass gave them)."""
        sampling = [i for i, (s, t) in enumerate(batch) if s.cached + len(t) >= len(s.prompt)]
        # log-probabilities before the grammar's mask: the model's own distribution
        asked = [i for i in sampling if batch[i][0].params.logprobs is not None]
        scored = Scored(logits, asked, max((batch[i][0].params.logprobs for i in asked), default=0))
        self.masker.apply(logits, batch)  # the constrained rows that sample now: one batched bitmask op
        for i, (seq, tokens) in enumerate(batch):
            seq.cached += len(tokens)
            if seq.is_prefilled:  # the pass's argmax where it gave one, else logits[i] [V] (a torch call)
                is_pick = picks is not None and seq.params.is_argmax
                token = picks[i] if is_pick else sample(logits[i], seq.params, seq.history, seq.gen)
                seq.accept(token, scored.entry(i, token, seq.params.logprobs or 0))

    def run(self) -> None:
        """Step until every sequence added has ended."""
        while self.has_work:
            self.step()

    def release(self, *seqs: Sequence) -> None:
        """Running sequences leave; their rows are free, and their full blocks stay cached."""
        for seq in seqs:
            self.running.remove(seq)
            self.blocks.release(seq.slot)
            self.free.append(seq.slot)

    def abort(self, seq: Sequence) -> None:
        """Forget seq wherever it is (a failed step, an interrupted reply). Blocks are registered
        only after the pass that filled them, so what stays cached is whole."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        if seq in self.running:
            self.release(seq)

    def _take_slot(self, seq: Sequence) -> bool:
        """Give seq the least recently used free row, with the cached blocks of its prompt's prefix
        and room for the rest of the prompt. False while the pool is short of room (others still
        run); a prompt larger than the whole pool fails instead."""
        slot = self.free[0]
        seq.cached = seq.reused = self.blocks.share(slot, seq.prompt)
        if not self.runner.reserve(slot, seq.cached, len(seq.prompt) - seq.cached, first=self.prefill_chunk):
            self.blocks.release(slot)
            if self.running:
                return False
            seq.cached = seq.reused = 0
            seq.fail(f"the prompt needs {self.blocks.blocks_for(len(seq.prompt))} KV blocks of "
                     f"{self.blocks.block_size} positions; the pool holds {self.blocks.num_blocks}")
        seq.slot, seq.t_admit = self.free.pop(0), time.perf_counter()
        return True

    def _extend(self, batch: list[tuple[Sequence, list[int]]]) -> list[tuple[Sequence, list[int]]]:
        """The batch, less the sequences the pool has no block left for (they end, "length")."""
        kept = []
        for seq, tokens in batch:
            if self.runner.reserve(seq.slot, seq.cached, len(tokens)):
                kept.append((seq, tokens))
            else:
                seq.out_of_memory()
        return kept
