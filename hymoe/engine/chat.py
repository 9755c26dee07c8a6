"""A chat conversation: the full KV blocks of each turn stay cached (kv/blocks.py), so the next turn
prefills only what follows the blocks it shares with the last one."""
from __future__ import annotations

import dataclasses
from typing import Callable

from hymoe.engine.sampler import SamplingParams
from hymoe.engine.scheduler import Scheduler
from hymoe.engine.sequence import Sequence
from hymoe.errors import HymoeError


class ChatSession:
    def __init__(self, llm, params: SamplingParams, system: str | None = None):
        if llm.tokenizer is None:
            raise HymoeError("chat needs a tokenizer, and this model has none")
        self.llm, self.params, self.system = llm, params, system
        self.scheduler = Scheduler(llm.pool_runner(1), llm.prefill_chunk)
        self.reset()

    def reset(self, system: str | None = None) -> None:
        """A new conversation; with `system`, under that system prompt from now on."""
        self.system = system if system is not None else self.system
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.last_tokens = 0  # tokens of the last reply

    def reply(self, text: str, on_text: Callable[[str], None] | None = None) -> str:
        tok = self.llm.tokenizer
        ids = tok.apply_chat_template(self.messages + [{"role": "user", "content": text}])
        if len(ids) >= self.llm.max_context:
            raise HymoeError(f"the conversation has {len(ids)} tokens; the context holds "
                             f"{self.llm.max_context} (use /reset)")
        self.messages.append({"role": "user", "content": text})
        params = dataclasses.replace(
            self.params, max_new_tokens=min(self.params.max_new_tokens, self.llm.max_context - len(ids)))

        def show(kind: str, data: dict) -> None:
            if kind == "text" and on_text is not None:
                on_text(data["text"])

        seq = Sequence(ids, params, self.llm.eos_ids, self.llm.max_context, tok, on_event=show)
        self.scheduler.add(seq)
        try:
            self.scheduler.run()
        finally:
            self.scheduler.abort(seq)  # a reply that failed or was interrupted must not keep its row
            # an interrupted reply (Ctrl-C) stays in the conversation as far as it got
            self.messages.append({"role": "assistant", "content": seq.text})
            self.last_tokens = len(seq.token_ids)
        return seq.text
