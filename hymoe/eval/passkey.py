"""Passkey retrieval: can the model still read back a word it saw thousands of tokens before?

As in the passkey test of long-context work (Mohtashami and Jaggi's landmark attention; RULER's
needles): a window of ordinary text hides the sentence "The secret word is W." at some depth and
repeats it at its very end; the model scores when its most likely token after the last "The secret
word is" is W. Nothing near the end names W, so a cache that dropped the first sentence cannot
answer. The keys are single-token words of the model's own tokenizer; a model learns the task from
these same windows (scripts/train_long_context.py), so the test measures what a KV policy keeps of a
retrieval the model can do, not whether it can do it at all.
"""
from __future__ import annotations

import random

from hymoe.errors import HymoeError

QUESTION = "\nThe secret word is"
END = ".\n"


class Passkeys:
    """The fact's token pieces and the candidate keys of one tokenizer."""

    def __init__(self, tokenizer, keys: int = 64, seed: int = 7):
        hf = getattr(tokenizer, "hf", tokenizer)  # hymoe's Tokenizer or a transformers one
        self.question, self.end = _ids(hf, QUESTION), _ids(hf, END)
        self.keys = _key_words(hf, keys, seed)

    def fact(self, key: int) -> list[int]:
        return self.question + [key] + self.end

    def depths(self, context: int) -> int:
        """How many depths the first fact may take in a window of `context` tokens (0 .. this - 1): it
        ends within the window's first three quarters."""
        return max(1, context * 3 // 4 - (len(self.question) + 1 + len(self.end)))

    def window(self, filler: list[int], key: int, depth: int) -> tuple[list[int], int]:
        """filler with the fact written over it at `depth` and again at its end: (ids, the index of
        the key's last occurrence, the token to predict)."""
        fact = self.fact(key)
        if not 0 <= depth <= len(filler) - 2 * len(fact):
            raise HymoeError(f"a passkey at depth {depth} does not fit a window of {len(filler)} tokens")
        ids = list(filler)
        ids[depth:depth + len(fact)] = fact
        ids[len(ids) - len(fact):] = fact
        return ids, len(ids) - len(self.end) - 1

    def windows(self, ids: list[int], context: int, count: int, seed: int = 0) -> list[tuple[list[int], int]]:
        """`count` test windows of `context` tokens, filled with stretches of ids spread evenly from its
        start to its end, the key at a depth in the first three quarters."""
        if len(ids) < context:
            raise HymoeError(f"--passkeys needs a text of at least --context ({context}) tokens, it has {len(ids)}")
        rng = random.Random(seed)
        out = []
        for i in range(count):
            start = i * (len(ids) - context) // max(1, count - 1)
            depth = rng.randrange(0, self.depths(context))
            out.append(self.window(ids[start:start + context], rng.choice(self.keys), depth))
        return out


def _ids(hf, text: str) -> list[int]:
    return hf.encode(text, add_special_tokens=False)  # no BOS in the middle of a window


def _key_words(hf, n: int, seed: int) -> list[int]:
    """n single-token words (a space and 3+ ASCII letters) that the fact's sentence tokenizes back to."""
    words, end = [], len(_ids(hf, END))
    for t in range(len(hf)):
        s = hf.decode([t])
        if s.startswith(" ") and len(s) >= 4 and s.isascii() and s[1:].isalpha() \
                and _ids(hf, QUESTION + s + END)[-end - 1] == t:
            words.append(t)
    if len(words) < n:
        raise HymoeError(f"the tokenizer has {len(words)} single-token words for passkeys, {n} are needed")
    random.Random(seed).shuffle(words)
    return sorted(words[:n])
