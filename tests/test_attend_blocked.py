"""Blocked attention with an online softmax (layers/attend.py) against the plain formula."""
import pytest
import torch

from hymoe.layers import attend


def plain(q, keys, values, mask, scale):
    """softmax(q k^T * scale) v per head, float64, every score at once."""
    b, g, h, t, d = q.shape
    scores = torch.einsum("bghtd,bgsd->bghts", q.double(), keys.double()) * scale
    scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
    return torch.einsum("bghts,bgsv->bghtv", scores.softmax(-1), values.double())


@pytest.mark.parametrize("b, g, h, t, s, budget, block", [(1, 1, 8, 16, 300, 4096, 64), (2, 2, 3, 7, 129, 64 * 21, 50),
                                                          (1, 4, 2, 33, 1000, 1, 2048), (1, 1, 1, 1, 5, 1 << 20, 2),
                                                          (1, 1, 16, 5, 777, 5 * 100 * 3, 100)])
@pytest.mark.parametrize("window", [0, 37])
def test_blocked_attention_equals_the_plain_formula(monkeypatch, b, g, h, t, s, budget, block, window):
    """Several blocks of keys, query heads in groups (the budget), blocks a row sees nothing in
    (the sliding window), ragged last blocks, one kv head or several."""
    monkeypatch.setattr(attend, "SCORE_BUDGET", budget)
    monkeypatch.setattr(attend, "KEY_BLOCK", block)
    torch.manual_seed(s + t)
    q, keys, values = torch.randn(b, g, h, t, 24), torch.randn(b, g, s, 24), torch.randn(b, g, s, 40)
    positions = torch.arange(s - t, s).repeat(b, 1)  # [B, T]: the chunk ends the cache
    positions[-1] -= torch.randint(0, s - t + 1, ()).item()  # another row ends earlier
    key_pos = torch.arange(s)
    mask = key_pos <= positions[..., None]  # [B, T, S]
    if window:
        mask &= key_pos > positions[..., None] - window
    got = attend.attend_blocked(q, keys, values, mask[:, None], 0.3)
    assert (got.double() - plain(q, keys, values, mask[:, None], 0.3)).abs().max() < 1e-5


def test_a_row_with_no_key_gives_zeros_not_nan():
    mask = torch.zeros(1, 1, 2, 9, dtype=torch.bool)
    mask[0, 0, 1, :3] = True
    out = attend.attend_blocked(torch.randn(1, 1, 2, 2, 8), torch.randn(1, 1, 9, 8), torch.randn(1, 1, 9, 8), mask, 1.0)
    assert out.isfinite().all() and (out[:, :, :, 0] == 0).all()
