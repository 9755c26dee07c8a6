"""A chat conversation that keeps its KV cache between turns: each turn prefills only what changed."""
from __future__ import annotations

import dataclasses
from typing import Callable

from hymoe.engine.generate import generate
from hymoe.engine.sampler import SamplingParams
from hymoe.errors import HymoeError


class ChatSession:
    def __init__(self, llm, params: SamplingParams, system: str | None = None):
        if llm.tokenizer is None:
            raise HymoeError("chat needs a tokenizer, and this model has none")
        self.llm, self.params, self.system = llm, params, system
        self.runner = llm.runner(1, llm.max_context)
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.cached: list[int] = []  # token ids whose keys/values sit in the cache, in order

    def reply(self, text: str, on_text: Callable[[str], None] | None = None) -> str:
        tok = self.llm.tokenizer
        ids = tok.apply_chat_template(self.messages + [{"role": "user", "content": text}])
        if len(ids) >= self.llm.max_context:
            raise HymoeError(f"the conversation has {len(ids)} tokens; the context holds "
                             f"{self.llm.max_context} (use /reset)")
        self.messages.append({"role": "user", "content": text})
        common = 0
        for a, b in zip(self.cached, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # at least one new token gives the next logits
        generated: list[int] = []
        shown = ""

        def stream(_row: int, token: int) -> None:
            nonlocal shown
            generated.append(token)
            now = tok.decode(generated)
            if on_text is not None and not now.endswith("\ufffd") and len(now) > len(shown):
                on_text(now[len(shown):])
                shown = now

        params = dataclasses.replace(
            self.params, max_new_tokens=min(self.params.max_new_tokens, self.llm.max_context - len(ids)))
        out, _ = generate(self.runner, [ids[common:]], params, self.llm.eos_ids, tok,
                          starts=[common], on_token=stream)
        reply = out[0]
        if on_text is not None and len(reply.text) > len(shown) and reply.text.startswith(shown):
            on_text(reply.text[len(shown):])
        # the last sampled token was never fed back, so it is not in the cache
        self.cached = ids + reply.token_ids[:-1]
        self.messages.append({"role": "assistant", "content": reply.text})
        return reply.text
