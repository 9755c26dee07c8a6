"""The one engine loop: continuous batching with chunked prefill, for every client.

Each `step()` admits waiting sequences into free KV slots, runs (a) one prefill chunk for the
sequences still reading their prompt, at most `prefill_chunk` tokens in all (None: whole prompts
in one pass), so a long prompt never freezes the others, then (b) one batched decode step for
every sequence that is generating: one forward pass, so each needed expert's weights are read once
for all of them. A sequence holds its slot from admission to its end. The scheduler does no tensor
work (the runner does) and makes every decision through `Sequence.accept`.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from hymoe.engine.runner import Runner
from hymoe.engine.sampler import sample
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


class Scheduler:
    def __init__(self, runner: Runner, prefill_chunk: int | None = None):
        self.runner, self.prefill_chunk = runner, prefill_chunk
        self.free = list(range(runner.cache.num_slots))  # lowest first: slots 0..B-1 in order need no gather
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.timings = Timings()
        self.steps = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self) -> list[Sequence]:
        """One engine step; returns the sequences that ended in it."""
        self.steps += 1
        self._admit()
        reading = self._prefill_chunks()  # [(seq, prompt tokens to read now)]
        if reading:
            self._forward(reading, is_prefill=True)
        decoding = [(s, s.token_ids[-1:]) for s in self.running if s.token_ids and s.finish_reason is None]
        if decoding:
            self._forward(decoding, is_prefill=False)
        return self._retire()

    def run(self) -> None:
        """Step until every sequence added has ended."""
        while self.has_work:
            self.step()

    def release(self, seq: Sequence) -> None:
        """Forget seq, waiting or running, and free its slot."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        if seq in self.running:
            self.running.remove(seq)
            self.free.append(seq.slot)
            self.free.sort()

    def _admit(self) -> None:
        for seq in [s for s in self.waiting if s.cancelled]:
            self.waiting.remove(seq)
        for seq in [s for s in self.running if s.cancelled]:
            self.release(seq)
        for seq in list(self.waiting):
            if not self.free:
                break
            wanted = seq.slot if seq.slot >= 0 else self.free[0]  # chat reuses the slot holding its prefix
            if wanted in self.free:
                self.free.remove(wanted)
                seq.slot = wanted
                self.waiting.remove(seq)
                self.running.append(seq)

    def _prefill_chunks(self) -> list[tuple[Sequence, list[int]]]:
        budget = self.prefill_chunk if self.prefill_chunk is not None else float("inf")
        reading = []
        for seq in self.running:
            if not seq.is_prefilled and budget > 0:
                n = int(min(budget, len(seq.prompt) - seq.cached))
                reading.append((seq, seq.prompt[seq.cached:seq.cached + n]))
                budget -= n
        return reading

    def _forward(self, batch: list[tuple[Sequence, list[int]]], is_prefill: bool) -> None:
        """One forward pass over the batch; each sequence that has read its whole prompt samples a token."""
        t0 = time.perf_counter()
        logits = self.runner.forward([s.slot for s, _ in batch], [t for _, t in batch],
                                     [s.cached for s, _ in batch])  # [B, V]
        for (seq, tokens), row in zip(batch, logits):
            seq.cached += len(tokens)
            if seq.is_prefilled:
                seq.accept(sample(row, seq.params, seq.history, seq.gen))
        spent, fed = time.perf_counter() - t0, sum(len(t) for _, t in batch)
        if is_prefill:
            self.timings.prefill_s += spent
            self.timings.prefill_tokens += fed
        else:
            self.timings.decode_s += spent
            self.timings.decode_tokens += fed

    def _retire(self) -> list[Sequence]:
        done = [s for s in self.running if s.finish_reason is not None]
        for seq in done:
            self.release(seq)
        return done
