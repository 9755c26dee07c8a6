"""Attention of many queries over a long cache in blocks of keys, with an online softmax.

torch's CPU SDPA with a mask materialises every head's [T, S] scores, and with `enable_gqa` a copy
of the keys per query head: a 512-token chunk of a DeepSeek-V3 prompt at 8K positions took 9 GiB.
Here the scores exist one block of keys at a time, and a kv head's keys (MLA: the one latent) are
read once for all its query heads, so a chunk's working memory is bounded by the block, not by S.
"""
from __future__ import annotations

import torch

# scores held at once, in float32 values; keys are taken KEY_BLOCK at a time (narrower matmuls run
# far below the CPU's peak) and query heads as many at a time as keep the scores under the budget
SCORE_BUDGET = 16 << 20
KEY_BLOCK = 2048


def attend_blocked(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v for grouped heads.

    q [B, G, H, T, D]: H query heads per kv head; keys [B, G, S, D]; values [B, G, S, Dv];
    mask [B, 1, T, S] bool (True: may attend), the same for every head. Returns [B, G, H, T, Dv]
    in q's dtype; scores, weights and sums are float32.
    """
    b, g, h, t, _ = q.shape
    block = min(KEY_BLOCK, keys.shape[2])
    heads = max(1, min(h, SCORE_BUDGET // (b * g * t * block)))
    parts = [_attend_heads(q[:, :, h0:h0 + heads], keys, values, mask, scale, block) for h0 in range(0, h, heads)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def _attend_heads(q, keys, values, mask, scale: float, block: int) -> torch.Tensor:
    """attend_blocked for a few query heads, one block of keys at a time (the online softmax)."""
    b, g, h, t, d = q.shape
    s, dv = keys.shape[2], values.shape[-1]
    rows = q.reshape(b, g, h * t, d)  # [B, G, H*T, D]: these heads' queries against their kv head's keys
    top = torch.full((b, g, h * t, 1), float("-inf"), device=q.device)  # running max of each row's scores
    total = torch.zeros(b, g, h * t, 1, device=q.device)  # running sum of exp(score - top)
    acc = torch.zeros(b, g, h * t, dv, device=q.device)  # running sum of exp(score - top) * v
    for s0 in range(0, s, block):
        k, v = keys[:, :, s0:s0 + block], values[:, :, s0:s0 + block]  # [B, G, kb, D], [B, G, kb, Dv]
        scores = torch.matmul(rows, k.transpose(-1, -2)).float() * scale  # [B, G, H*T, kb]
        allowed = mask[:, :, None, :, s0:s0 + block]  # [B, 1, 1, T, kb]
        scores = scores.view(b, g, h, t, -1).masked_fill(~allowed, float("-inf")).view(b, g, h * t, -1)
        new_top = torch.maximum(top, scores.amax(-1, keepdim=True))
        safe = torch.where(torch.isinf(new_top), torch.zeros_like(new_top), new_top)  # rows with nothing yet
        weights = torch.exp(scores - safe)  # [B, G, H*T, kb]
        fade = torch.exp(top - safe)  # rescales what earlier blocks summed
        total = total * fade + weights.sum(-1, keepdim=True)
        acc = acc * fade + torch.matmul(weights.to(v.dtype), v).float()
        top = new_top
    return (acc / total.clamp_min(1e-30)).to(q.dtype).view(b, g, h, t, dv)  # a row with no key: zeros


def attention_mass(q: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, scale: float,
                   is_query: torch.Tensor) -> torch.Tensor:
    """The softmax weight each key gets, summed over heads and real queries (H2O's score).

    q [B, G, H, T, D], keys [B, G, S, D], mask [B, 1, T, S], is_query [B, T] bool -> [B, S] float32.
    Queries go a few at a time, so the scores held stay under SCORE_BUDGET.
    """
    b, g, h, t, _ = q.shape
    s = keys.shape[2]
    out = torch.zeros(b, s, device=q.device)
    step = max(1, SCORE_BUDGET // (b * g * h * max(s, 1)))
    for t0 in range(0, t, step):
        scores = torch.matmul(q[:, :, :, t0:t0 + step], keys[:, :, None].transpose(-1, -2)).float() * scale
        scores = scores.masked_fill(~mask[:, :, None, t0:t0 + step], float("-inf"))  # [B, G, H, t, S]
        probs = scores.softmax(-1).nan_to_num(0.0) * is_query[:, None, None, t0:t0 + step, None]
        out += probs.sum((1, 2, 3))
    return out


def select_blocks(q: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, select: torch.Tensor,
                  block: int) -> torch.Tensor:
    """Quest: each query keeps of its mask only the select[b] blocks of `block` slots whose keys
    could score highest, bounded per channel by the block's min and max key; its own block (the
    last it may attend) always among them. select 0: the row's mask as it is.

    q [B, G, H, T, D], keys [B, G, S, D], mask [B, 1, T, S], select [B] -> mask [B, 1, T, S].
    """
    b, g, _, t, d = q.shape
    s = keys.shape[2]
    nb = -(-s // block)
    pad = nb * block - s
    allowed = torch.nn.functional.pad(mask[:, 0], (0, pad)).view(b, t, nb, block).any(-1)  # [B, T, nb]
    valid = torch.nn.functional.pad(mask[:, 0].any(1), (0, pad))[:, None, :, None]  # [B, 1, S', 1] slots in use
    padded = torch.nn.functional.pad(keys.float(), (0, 0, 0, pad))  # [B, G, S', D]
    top = padded.masked_fill(~valid, float("-inf")).view(b, g, nb, block, d).amax(3)  # [B, G, nb, D]
    low = padded.masked_fill(~valid, float("inf")).view(b, g, nb, block, d).amin(3)
    top, low = top.nan_to_num(0.0, 0.0, 0.0), low.nan_to_num(0.0, 0.0, 0.0)  # blocks with no key: no bound
    qf = q.float()
    # sum_d max(q_d top_d, q_d low_d) = relu(q) . top - relu(-q) . low, as two matmuls
    bound = qf.clamp_min(0) @ top[:, :, None].transpose(-1, -2) - (-qf).clamp_min(0) @ low[:, :, None].transpose(-1, -2)
    score = bound.sum((1, 2)).masked_fill(~allowed, float("-inf"))  # [B, T, nb]
    own = nb - 1 - allowed.flip(-1).int().argmax(-1)  # [B, T] the last block each query may attend
    score.scatter_(-1, own[..., None], float("inf"))
    order = score.argsort(-1, descending=True)  # [B, T, nb]
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(nb, device=q.device).expand_as(order))
    chosen = rank < torch.where(select > 0, select, nb)[:, None, None]  # [B, T, nb]
    per_slot = chosen.repeat_interleave(block, -1)[..., :s]  # [B, T, S]
    return mask & per_slot[:, None]
