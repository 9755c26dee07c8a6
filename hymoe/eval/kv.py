"""`hymoe eval kv`: what a KV retention policy costs in quality and saves in memory.

The text is cut into the same sliding windows as `hymoe eval ppl` (eval/ppl.py). Each window is
read twice, `chunk` tokens per forward pass: once keeping every position, once under the policy,
which acts after every pass, so later tokens see only what it kept. Both are scored on the same
tokens: perplexity, and how often their most likely next tokens agree. KV bytes are the blocks a
window's row held at its most (during a pass, the chunk's blocks included), the largest window's.
With `passkeys`, as many windows of the text also hide a word early and ask for it at their end
(eval/passkey.py), read the same two ways: how often each cache still answers it.
"""
from __future__ import annotations

import math

import torch
from tqdm import tqdm

from hymoe.eval.passkey import Passkeys
from hymoe.eval.ppl import windows
from hymoe.errors import HymoeError
from hymoe.kv.cache import KVCache
from hymoe.kv.policy import parse_policy

# tokens per forward pass: the policy acts between passes, so a smaller chunk follows it more closely
CHUNK = 32


def eval_kv(llm, ids: list[int], policy: str, context: int, stride: int | None = None, chunk: int = CHUNK,
            batch: int = 8, progress: bool = False, passkeys: int = 0) -> dict:
    if len(ids) < 2:
        raise HymoeError("the text has fewer than 2 tokens")
    if chunk < 1:
        raise HymoeError(f"--chunk {chunk}: at least 1")
    policy = parse_policy(policy)
    spans = windows(len(ids), context, stride)
    block_size = llm.options.kv_block_size
    block_bytes = KVCache.position_bytes(llm.model.cache_entries(), llm.kv_dtype) * block_size
    nll_full = nll_policy = 0.0
    count = agree = blocks_full = blocks_policy = 0
    for i in tqdm(range(0, len(spans), batch), desc="scoring", unit="batch", disable=not progress, leave=False):
        part = spans[i:i + batch]
        wins, rows = [ids[b:e] for b, e, _ in part], list(range(len(part)))
        runners = [llm.runner(len(wins), max(map(len, wins)), kv_policy=p) for p in ("full", policy)]
        full, kept = (r.all_logits(rows, wins, chunk) for r in runners)  # [T, V] per window, each
        for b, (begin, end, first) in enumerate(part):
            targets = torch.tensor(ids[first:end])  # token t is predicted at position t - 1
            scored = slice(first - begin - 1, end - begin - 1)
            nll_full += _nll(full[b][scored], targets)
            nll_policy += _nll(kept[b][scored], targets)
            agree += int((full[b][scored].argmax(-1) == kept[b][scored].argmax(-1)).sum())
            count += end - first
            blocks_full = max(blocks_full, -(-len(wins[b]) // block_size))
            held = runners[1].retention.held(b).peak_blocks  # 0: the policy was full
            blocks_policy = max(blocks_policy, held or -(-len(wins[b]) // block_size))
    out = {"policy": str(policy), "context": context, "chunk": chunk, "tokens": count,
           "ppl_full": round(math.exp(nll_full / count), 6), "ppl_policy": round(math.exp(nll_policy / count), 6),
           "top1_agreement": round(agree / count, 6), "kv_bytes_full": blocks_full * block_bytes,
           "kv_bytes_policy": blocks_policy * block_bytes, "kv_block_size": block_size}
    if passkeys:
        out.update(passkey_accuracy(llm, ids, str(policy), context, passkeys, chunk, batch))
    return out


def passkey_accuracy(llm, ids: list[int], policy: str, context: int, count: int, chunk: int = CHUNK,
                     batch: int = 8) -> dict:
    """{"passkeys", "passkey_full", "passkey_policy"}: top-1 accuracy on `count` passkey windows of
    `context` tokens filled with ids, under the full cache and under the policy."""
    if llm.tokenizer is None:
        raise HymoeError("--passkeys needs the model's tokenizer")
    tests = Passkeys(llm.tokenizer).windows(ids, context, count)
    keys = [w[at] for w, at in tests]
    right = {p: sum(g == k for g, k in zip(passkey_guesses(llm, tests, p, chunk, batch), keys))
             for p in ("full", policy)}
    return {"passkeys": len(tests), "passkey_full": round(right["full"] / len(tests), 6),
            "passkey_policy": round(right[policy] / len(tests), 6)}


def passkey_guesses(llm, tests: list[tuple[list[int], int]], policy: str, chunk: int = CHUNK,
                    batch: int = 8) -> list[int]:
    """The most likely token at each test's answer position (predicted one before it), each window
    read `chunk` tokens a pass under the policy."""
    out = []
    for i in range(0, len(tests), batch):
        part = tests[i:i + batch]
        runner = llm.runner(len(part), max(len(w) for w, _ in part), kv_policy=policy)
        logits = runner.all_logits(list(range(len(part))), [w for w, _ in part], chunk)  # [T, V] each
        out += [int(lg[at - 1].argmax()) for lg, (_, at) in zip(logits, part)]
    return out


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """logits [N, V], targets [N] -> the summed negative log-likelihood."""
    return -torch.log_softmax(logits.float(), -1).gather(1, targets[:, None]).sum().item()
