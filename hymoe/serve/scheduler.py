"""Continuous batching: one engine thread runs every live request, joining and leaving between steps.

Each step runs (a) one prefill chunk for the requests still reading their prompt, at most
`prefill_chunk` tokens in all, so a long prompt never freezes the others, then (b) one batched
decode step for every request that is generating: one forward pass, so each needed expert's
weights are read once for all sequences. KV memory is a fixed set of slots of `max_context`
tokens each; a request holds one slot from admission to its end, waits in the queue while none is
free, and is refused (QueueFull) past `max_queue` waiting requests. Events go back through each
request's callback, from the engine thread.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from hymoe.engine.sampler import SamplingParams, sample
from hymoe.errors import HymoeError

log = logging.getLogger("hymoe")


class QueueFull(HymoeError):
    pass


@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams
    on_event: Callable[[str, dict], None]  # ("text", {"text"}) ... then ("done", {...}) or ("error", {...})
    id: int = field(default_factory=itertools.count().__next__)
    cancelled: bool = False
    gen: object = None  # the request's torch.Generator (seeded sampling)
    # engine state
    slot: int = -1
    cached: int = 0  # tokens of this request already in its KV slot
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of text already sent
    finish: str | None = None
    t_submit: float = field(default_factory=time.perf_counter)
    t_first: float | None = None
    t_done: float | None = None

    def usage(self) -> dict:
        return {"prompt_tokens": len(self.prompt), "completion_tokens": len(self.tokens),
                "total_tokens": len(self.prompt) + len(self.tokens)}


class Scheduler:
    def __init__(self, llm, max_batch: int = 8, max_queue: int = 64, prefill_chunk: int = 256):
        if llm.tokenizer is None:
            raise HymoeError("serving needs a tokenizer, and this model has none")
        self.llm, self.max_batch, self.max_queue, self.prefill_chunk = llm, max_batch, max_queue, prefill_chunk
        self.runner = llm.runner(max_batch, llm.max_context)  # the KV memory: max_batch x max_context tokens
        self.free = list(range(max_batch))
        self.waiting: deque[Request] = deque()
        self.active: list[Request] = []
        self.lock = threading.Condition()
        self.stopped = False
        self.steps = 0
        self.thread = threading.Thread(target=self._loop, name="hymoe-engine", daemon=True)
        self.thread.start()

    # ---- called from other threads

    def submit(self, req: Request) -> None:
        self.llm.check_prompt(req.prompt)
        req.gen = req.params.generator()
        with self.lock:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting; try again shortly")
            self.waiting.append(req)
            self.lock.notify()

    def cancel(self, req: Request) -> None:
        req.cancelled = True
        with self.lock:
            self.lock.notify()

    def close(self) -> None:
        with self.lock:
            self.stopped = True
            self.lock.notify()
        self.thread.join(timeout=30)

    @property
    def load(self) -> dict:
        return {"active": len(self.active), "waiting": len(self.waiting), "slots": self.max_batch}

    # ---- the engine thread

    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self.stopped and not self.waiting and not self.active:
                    self.lock.wait()
                if self.stopped:
                    break
                for r in [r for r in self.waiting if r.cancelled]:
                    self.waiting.remove(r)
                while self.free and self.waiting:
                    req = self.waiting.popleft()
                    req.slot, req.cached = self.free.pop(), 0
                    self.active.append(req)
            try:
                self._step()
            except Exception as e:  # a bug must not take the server down: fail the live requests
                log.exception("hymoe: engine step failed")
                for r in self.active:
                    r.on_event("error", {"message": f"internal error: {e}"})
                    self._release(r)

    def _release(self, req: Request) -> None:
        with self.lock:
            if req in self.active:
                self.active.remove(req)
                self.free.append(req.slot)

    def _step(self) -> None:
        for r in [r for r in self.active if r.cancelled]:
            self._release(r)
        self.steps += 1
        budget = self.prefill_chunk
        reading = []
        for r in self.active:
            if r.cached < len(r.prompt) and budget > 0:
                n = min(budget, len(r.prompt) - r.cached)
                reading.append((r, r.prompt[r.cached:r.cached + n]))
                budget -= n
        if reading:
            logits = self.runner.forward([r.slot for r, _ in reading], [c for _, c in reading],
                                         [r.cached for r, _ in reading])
            for (r, chunk), lg in zip(reading, logits):
                r.cached += len(chunk)
                if r.cached == len(r.prompt):
                    self._accept(r, lg)
        decoding = [r for r in self.active if r.tokens and r.finish is None and not r.cancelled]
        if decoding:
            logits = self.runner.forward([r.slot for r in decoding], [[r.tokens[-1]] for r in decoding],
                                         [r.cached for r in decoding])
            for r, lg in zip(decoding, logits):
                r.cached += 1
                self._accept(r, lg)
        for r in [r for r in self.active if r.finish is not None]:
            self._release(r)

    def _accept(self, r: Request, logits) -> None:
        """Sample the next token of r, send its text, and decide whether r is finished."""
        p, tok = r.params, self.llm.tokenizer
        t = sample(logits, p, r.prompt + r.tokens, r.gen)
        if r.t_first is None:
            r.t_first = time.perf_counter()
        eos = () if p.is_eos_ignored else set(self.llm.eos_ids) | set(p.extra_eos_ids)
        if t in eos:
            return self._finish(r, "stop")
        r.tokens.append(t)
        text = tok.decode(r.tokens)
        if p.stop:
            cuts = [text.index(s) for s in p.stop if s in text]
            if cuts:
                r.text = text[: min(cuts)]
                return self._finish(r, "stop")
        r.text = text
        if len(r.tokens) >= p.max_new_tokens or len(r.prompt) + len(r.tokens) >= self.llm.max_context:
            return self._finish(r, "length")
        # hold back an unfinished UTF-8 character and anything that may begin a stop string
        hold = max((len(s) - 1 for s in p.stop), default=0)
        end = len(text) - hold
        while end > r.sent and text[end - 1] == "\ufffd":
            end -= 1
        if end > r.sent:
            r.on_event("text", {"text": text[r.sent:end]})
            r.sent = end

    def _finish(self, r: Request, reason: str) -> None:
        r.finish, r.t_done = reason, time.perf_counter()
        if len(r.text) > r.sent:
            r.on_event("text", {"text": r.text[r.sent:]})
            r.sent = len(r.text)
        r.on_event("done", {"finish_reason": reason, "usage": r.usage()})
