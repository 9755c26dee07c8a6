"""Log-probabilities on the wire: the engine's (token, logprob, top) entries as OpenAI shapes.

Chat: choices[].logprobs.content[] of {token, logprob, bytes, top_logprobs}. Legacy completions:
choices[].logprobs of {tokens, token_logprobs, top_logprobs (dicts), text_offset}. A token's text is
its own decode; a byte-level piece of an unfinished UTF-8 character reads as U+FFFD, as in vLLM.
"""
from __future__ import annotations


class Formatter:
    """For one choice: turns entries into its kind's shape; a completion's text_offset runs on
    across the chunks of a stream."""

    def __init__(self, tokenizer, kind: str, offset: int = 0):
        self.tok, self.kind, self.offset = tokenizer, kind, offset
        self.cache: dict[int, str] = {}  # token id -> its text: top lists repeat the same tokens

    def text(self, token: int) -> str:
        if token not in self.cache:
            self.cache[token] = self.tok.decode([token])
        return self.cache[token]

    def _one(self, token: int, logprob: float) -> dict:
        text = self.text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def chat(self, entries: list) -> dict:
        return {"content": [{**self._one(t, lp), "top_logprobs": [self._one(a, alp) for a, alp in top]}
                            for t, lp, top in entries]}

    def completion(self, entries: list) -> dict:
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for t, lp, top in entries:
            out["tokens"].append(self.text(t))
            out["token_logprobs"].append(lp)  # None: an echoed prompt's first token, as OpenAI
            alternatives: dict[str, float] = {}
            for a, alp in top:  # most likely first; of two with one text, the likelier stays
                alternatives.setdefault(self.text(a), alp)
            out["top_logprobs"].append(alternatives if lp is not None else None)
            out["text_offset"].append(self.offset)
            self.offset += len(self.text(t))
        return out

    def __call__(self, entries: list) -> dict:
        return self.chat(entries) if self.kind == "chat" else self.completion(entries)
