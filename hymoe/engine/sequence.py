"""Sequence: one prompt and what has been generated for it; `accept(token)` decides how it goes on.

Every client of the engine (generate, chat, `LLM`, the server, the benchmarks) makes Sequences and
hands them to the scheduler, so EOS, stop strings, the length limit and streamed text are decided
here and nowhere else.
"""
from __future__ import annotations

import itertools
import time
from typing import Callable

from hymoe.engine.sampler import SamplingParams
from hymoe.tokenizer import Tokenizer

_ids = itertools.count()


class Sequence:
    """The length limit: a sequence ends when it holds `max_len` positions; the token sampled from
    the last position is still returned, as it needs no cache position of its own."""

    def __init__(self, prompt: list[int], params: SamplingParams, eos_ids: tuple[int, ...], max_len: int,
                 tokenizer: Tokenizer | None = None, on_event: Callable[[str, dict], None] | None = None,
                 on_token: Callable[[int], None] | None = None):
        self.id = next(_ids)
        self.prompt, self.params, self.max_len, self.tokenizer = prompt, params, max_len, tokenizer
        self.eos = frozenset() if params.is_eos_ignored else frozenset(eos_ids) | frozenset(params.extra_eos_ids)
        self.on_event = on_event  # ("text", {"text"}) ... then ("done", {...}) or ("error", {"message"})
        self.on_token = on_token  # every sampled token, EOS included, before anything else happens
        self.gen = params.generator()  # this sequence's seeded torch.Generator, or None
        # its own grammar state: the scheduler masks its logits by it, accept() advances it
        self.matcher = params.grammar.matcher() if params.grammar is not None else None
        self.token_ids: list[int] = []  # generated, without the EOS token that ended it
        self.text = ""  # the generated text, cut before a stop string
        self.finish_reason: str | None = None  # "stop" | "length" once finished
        self.slot = -1  # its row (a KV block table) while the scheduler runs it
        self.cached = 0  # tokens whose keys and values its row holds
        self.reused = 0  # prompt tokens found in cached blocks (not computed again)
        self.cancelled = False
        # a sibling with the same prompt (n > 1): this one is admitted once the leader has read its
        # prompt, so the prompt's full blocks are computed once and shared from the prefix cache
        self.leader: Sequence | None = None
        self.sent = 0  # characters of text already streamed
        # per generated token, where params.logprobs asks: (token, logprob, [(token, logprob)] top)
        self.logprobs: list[tuple[int, float, list[tuple[int, float]]]] = []
        self.logprobs_sent = 0  # entries already streamed
        self.t_submit, self.t_first, self.t_done = time.perf_counter(), None, None
        self.t_admit: float | None = None  # when it took a row: prompt evaluation begins

    @property
    def history(self) -> list[int]:
        """Every token so far, as the repetition penalty sees them."""
        return self.prompt + self.token_ids

    @property
    def is_prefilled(self) -> bool:
        return self.cached >= len(self.prompt)

    @property
    def is_admissible(self) -> bool:
        """Its leader, if any, has read its prompt (or ended): the cached blocks are there to share."""
        return self.leader is None or self.leader.is_prefilled or self.leader.finish_reason is not None

    @property
    def is_decoding(self) -> bool:
        """Its last sampled token is to be fed back."""
        return bool(self.token_ids) and self.finish_reason is None

    @property
    def is_streamed(self) -> bool:
        """Text is decoded after every token only where someone reads it then (or stop strings need it)."""
        return self.tokenizer is not None and (self.on_event is not None or bool(self.params.stop))

    def usage(self) -> dict:
        return {"prompt_tokens": len(self.prompt), "completion_tokens": len(self.token_ids),
                "total_tokens": len(self.prompt) + len(self.token_ids),
                "prompt_tokens_details": {"cached_tokens": self.reused}}

    def cancel(self) -> None:
        """The client is gone: the scheduler frees the slot at its next step; no more events."""
        self.cancelled = True
        self.finish_reason = self.finish_reason or "cancelled"

    def accept(self, token: int, logprob: tuple | None = None) -> None:
        """Take the next sampled token (and its log-probabilities, if asked for): EOS, then stop
        strings, then the length limit; stream new text."""
        if self.t_first is None:
            self.t_first = time.perf_counter()
        if self.on_token is not None:
            self.on_token(token)
        if self.matcher is not None:
            is_taken = self.matcher.accept_token(token)
            assert is_taken, "the mask lets through only tokens the grammar takes"
            if self.matcher.is_terminated():  # it took a stop token: the output is complete
                return self._finish("stop")
        if token in self.eos:
            return self._finish("stop")
        self.token_ids.append(token)
        if logprob is not None:  # only for tokens of the output: not the EOS or grammar end
            self.logprobs.append(logprob)
        if self.is_streamed:
            self.text = self.tokenizer.decode(self.token_ids)
            cuts = [self.text.index(s) for s in self.params.stop if s in self.text]
            if cuts:
                self.text = self.text[: min(cuts)]
                return self._finish("stop")
        if len(self.token_ids) >= self.params.max_new_tokens or len(self.prompt) + len(self.token_ids) > self.max_len:
            return self._finish("length")
        self._stream()

    def out_of_memory(self) -> None:
        """The KV pool has no block for its next position: it ends as at its length limit."""
        self._finish("length")

    def fail(self, message: str) -> None:
        self.finish_reason, self.t_done = "error", time.perf_counter()
        if self.on_event is not None:
            self.on_event("error", {"message": message})

    def _stream(self) -> None:
        """Send the text that can no longer change: hold back an unfinished UTF-8 character and
        anything that may be the beginning of a stop string."""
        if self.on_event is None:
            return
        hold = max((len(s) - 1 for s in self.params.stop), default=0)
        end = len(self.text) - hold
        while end > self.sent and self.text[end - 1] == "\ufffd":
            end -= 1
        if end > self.sent:
            self.on_event("text", {"text": self.text[self.sent:end], "logprobs": self._new_logprobs()})
            self.sent = end

    def _new_logprobs(self) -> list:
        """The entries not yet streamed: an event carries those of the tokens sampled before it."""
        new, self.logprobs_sent = self.logprobs[self.logprobs_sent:], len(self.logprobs)
        return new

    def _finish(self, reason: str) -> None:
        self.finish_reason, self.t_done = reason, time.perf_counter()
        if self.tokenizer is not None and not self.is_streamed:
            self.text = self.tokenizer.decode(self.token_ids)
        if self.on_event is None:
            return
        if len(self.text) > self.sent:
            self.on_event("text", {"text": self.text[self.sent:], "logprobs": self._new_logprobs()})
            self.sent = len(self.text)
        # entries of tokens whose text was held back, then cut (a stop string) or empty
        self.on_event("done", {"finish_reason": reason, "usage": self.usage(), "logprobs": self._new_logprobs()})
