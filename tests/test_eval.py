"""Perplexity with a sliding window, against a direct computation with Hugging Face transformers."""
from __future__ import annotations

import math

import pytest
import torch

import hymoe
from hymoe.errors import HymoeError
from hymoe.eval.ppl import llm_scorer, perplexity, windows


def test_windows_score_every_token_once():
    for n, context, stride in ((10, 4, None), (3, 4, None), (100, 16, 5), (17, 2, 1)):
        spans = windows(n, context, stride)
        scored = [t for _, end, first in spans for t in range(first, end)]
        assert scored == list(range(1, n))
        assert all(end - begin <= context and first > begin for begin, end, first in spans)
    with pytest.raises(HymoeError):
        windows(10, 4, 4)  # the first scored token of a window needs history inside it


def _hf_nll(hf, ids: list[int]) -> tuple[float, int]:
    """Sum of -log p over positions 1..T-1 of one window, by transformers."""
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1)
    return -logp.gather(1, torch.tensor(ids[1:])[:, None]).sum().item(), len(ids) - 1


def test_whole_text_in_one_window_equals_transformers(tiny_model):
    hf_dir, hf = tiny_model("qwen2_moe")
    llm = hymoe.load(hf_dir, dtype="float32", progress=False)
    ids = list(range(5, 45))
    ppl, n = perplexity(llm_scorer(llm), ids, context=64)
    nll, count = _hf_nll(hf, ids)
    assert n == count == 39
    assert ppl == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_sliding_windows_equal_transformers_on_each_window(tiny_model):
    hf_dir, hf = tiny_model("deepseek_v3")
    llm = hymoe.load(hf_dir, dtype="float32", progress=False)
    ids = [(i * 37) % 250 + 3 for i in range(70)]
    ppl, n = perplexity(llm_scorer(llm), ids, context=16, stride=6, batch=3)
    total, count = 0.0, 0
    for begin, end, first in windows(len(ids), 16, 6):
        with torch.no_grad():
            logits = hf(torch.tensor([ids[begin:end]])).logits[0].float()
        logp = torch.log_softmax(logits[first - begin - 1:end - begin - 1], -1)
        total -= logp.gather(1, torch.tensor(ids[first:end])[:, None]).sum().item()
        count += end - first
    assert n == count == 69
    assert ppl == pytest.approx(math.exp(total / count), rel=1e-5)


def test_the_default_window_is_the_context_the_model_was_trained_on(tmp_path, tiny_model):
    """The demo model trained on 256-token windows (its training record says so); other models
    take the positions their config declares, at most 4096."""
    from hymoe.default_model import DEMO_MODEL_DIR
    from hymoe.eval.ppl import trained_context
    from hymoe.loader.open import open_model

    assert trained_context(DEMO_MODEL_DIR, open_model(DEMO_MODEL_DIR).config) == 256
    d = tiny_model("qwen3_moe")[0]
    assert trained_context(d, open_model(d).config) == 512  # tiny models declare 512 positions
    (tmp_path / "training.json").write_text("{not json")
    assert trained_context(tmp_path, open_model(d).config) == 512
