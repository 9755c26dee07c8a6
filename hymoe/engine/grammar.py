"""Constrained decoding with xgrammar: JSON schemas compiled once per request, one matcher per sequence.

xgrammar was measured against llguidance on this engine's sampling step (docs/serving.md): filling
an 8-row token bitmask and applying it took 0.2-0.5 ms per step against 6-27 ms, and its batched
`apply_token_bitmask_inplace(..., indices=)` masks only the constrained rows of a mixed batch.
"""
from __future__ import annotations

import json
import re

import torch

from hymoe.errors import HymoeError


class GrammarError(HymoeError):
    """A schema the grammar library refuses (the server answers 400)."""


def _one_line(e: Exception) -> str:
    # xgrammar's messages begin with "[time] /path/file.cc:line: "; the user needs only the reason
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", text)


class Grammars:
    """Compiles grammars for one tokenizer and vocabulary; xgrammar caches compiled schemas."""

    def __init__(self, hf_tokenizer, vocab_size: int, stop_ids: tuple[int, ...]):
        try:
            import xgrammar as xgr
        except ImportError:
            raise HymoeError("constrained decoding needs xgrammar: pip install 'hymoe[grammar]'") from None

        info = xgr.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_ids))
        self.compiler = xgr.GrammarCompiler(info)
        self.vocab_size = vocab_size

    def json_schema(self, schema: dict | bool, is_strict: bool = True) -> "Grammar":
        """Compact JSON (no free whitespace): an untrained model cannot pad forever, and the object
        ends as soon as it is closed. Strict (as vLLM): no properties or items beyond the schema's."""
        try:
            text = json.dumps(schema)
            return Grammar(self.compiler.compile_json_schema(text, any_whitespace=False, strict_mode=is_strict))
        except (RuntimeError, ValueError, TypeError) as e:
            raise GrammarError(f"the JSON schema is not supported: {_one_line(e)}") from None

    def json_object(self) -> "Grammar":
        return self.json_schema({"type": "object"}, is_strict=False)  # strict, it would allow only {}


class Grammar:
    """A compiled grammar: immutable, shared by the sequences that use it; each gets its own matcher."""

    def __init__(self, compiled):
        self.compiled = compiled

    def matcher(self):
        import xgrammar as xgr

        return xgr.GrammarMatcher(self.compiled)


class Masker:
    """The batch's token bitmask, reused across steps; grows with the batch."""

    def __init__(self):
        self.bitmask: torch.Tensor | None = None

    def apply(self, logits: torch.Tensor, batch: list[tuple]) -> None:
        """logits [B, V] float32 CPU, in place, for a pass over batch [(sequence, its tokens)]: each
        sequence under a grammar that samples after this pass (it has read its whole prompt) keeps
        only the tokens its matcher allows; no loop over the vocabulary."""
        rows = [i for i, (s, t) in enumerate(batch) if s.matcher is not None and s.cached + len(t) >= len(s.prompt)]
        if not rows:
            return
        import xgrammar as xgr  # only here: xgrammar is an optional extra (hymoe[grammar])

        matchers = [batch[i][0].matcher for i in rows]
        vocab = logits.shape[-1]
        if self.bitmask is None or self.bitmask.shape[0] < logits.shape[0] or \
                self.bitmask.shape[1] != (vocab + 31) // 32:
            self.bitmask = xgr.allocate_token_bitmask(logits.shape[0], vocab)
        for row, m in zip(rows, matchers):
            m.fill_next_token_bitmask(self.bitmask, row)
        xgr.apply_token_bitmask_inplace(logits, self.bitmask[:logits.shape[0]], indices=rows)
