"""Perplexity over a text with a sliding window, the way `hymoe eval ppl` and its references score it.

Windows of `context` tokens advance by `stride` (default context/2). The first window scores every
token after its first; each later window scores only its last `stride` tokens, so every token
after the first is scored exactly once, with at least context - stride tokens of history.
The scorer is any function from windows of ids to float32 logits, so llama.cpp's logits can be
scored by the very same code.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from hymoe.errors import HymoeError

Scorer = Callable[[list[list[int]]], list[torch.Tensor]]  # windows -> logits [T, V] each


def windows(n: int, context: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over n tokens."""
    stride = stride or max(1, context // 2)
    if context < 2 or not 0 < stride < context:
        raise HymoeError(f"--context must be at least 2 and the stride from 1 to context - 1 (got {context}, {stride})")
    out, end = [], min(context, n)
    out.append((0, end, 1))
    while end < n:
        new_end = min(end + stride, n)
        out.append((max(0, new_end - context), new_end, end))
        end = new_end
    return out


def perplexity(score: Scorer, ids: list[int], context: int, stride: int | None = None,
               batch: int = 8, progress: bool = False) -> tuple[float, int]:
    """(ppl, number of scored tokens)."""
    if len(ids) < 2:
        raise HymoeError("the text has fewer than 2 tokens")
    spans = windows(len(ids), context, stride)
    nll, count = 0.0, 0
    for i in tqdm(range(0, len(spans), batch), desc="scoring", unit="batch", disable=not progress, leave=False):
        chunk = spans[i:i + batch]
        for (begin, end, first), logits in zip(chunk, score([ids[b:e] for b, e, _ in chunk])):
            targets = torch.tensor(ids[first:end])  # token t is predicted at position t - 1
            logp = torch.log_softmax(logits[first - begin - 1:end - begin - 1].float(), dim=-1)
            nll -= logp.gather(1, targets[:, None]).sum().item()
            count += end - first
    return math.exp(nll / count), count


def llm_scorer(llm) -> Scorer:
    """hymoe's own scorer: all windows of one call in one batched prefill, in chunks."""
    def score(wins: list[list[int]]) -> list[torch.Tensor]:
        runner = llm.runner(len(wins), max(len(w) for w in wins))
        return runner.all_logits(list(range(len(wins))), wins, llm.prefill_chunk)
    return score


def trained_context(model_dir, config) -> int:
    """The window a model was trained on: a bundled model's training record says (the demo model:
    256), otherwise the positions its config declares (llama.cpp's n_ctx_train), at most 4096 so a
    default run stays minutes on a CPU."""
    record = Path(model_dir) / "training.json" if Path(model_dir).is_dir() else None
    if record is not None and record.is_file():
        try:
            return int(json.loads(record.read_text())["args"]["seq"])
        except (ValueError, KeyError, TypeError):
            pass
    return min(config.max_position_embeddings, 4096)
