"""Accuracy cost of expert deferral: perplexity and next-token (top-1) agreement with no deferral,
over the same sliding windows of a text, for --defer-experts K = 0..k-1.

    python scripts/deferral_accuracy.py [MODEL] [--text FILE] [--context 256] [--max-tokens N]

Defaults: the bundled demo model over its held-out text. Prints a markdown table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import math

import torch

import hymoe
from hymoe.default_model import DEMO_MODEL_DIR
from hymoe.eval.ppl import llm_scorer, windows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?", default=str(DEMO_MODEL_DIR))
    p.add_argument("--text", default=str(DEMO_MODEL_DIR / "heldout.txt"))
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--placement", default="cpu")
    args = p.parse_args()
    base = hymoe.load(args.model, dtype="float32", progress=False, placement=args.placement)
    ids = base.tokenizer.encode(open(args.text, encoding="utf-8").read())[: args.max_tokens]
    ks = range(base.config.num_experts_per_tok)
    llms = {k: base if k == 0 else hymoe.load(args.model, dtype="float32", progress=False,
                                              placement=args.placement, defer_experts=k) for k in ks}
    scorers = {k: llm_scorer(llm) for k, llm in llms.items()}
    nll = {k: 0.0 for k in ks}
    agree = {k: 0 for k in ks}
    count = 0
    spans = windows(len(ids), args.context)
    for i in range(0, len(spans), 8):
        chunk = spans[i:i + 8]
        wins = [ids[b:e] for b, e, _ in chunk]
        outs = {k: scorers[k](wins) for k in ks}
        for j, (begin, end, first) in enumerate(chunk):
            targets = torch.tensor(ids[first:end])
            rows = slice(first - begin - 1, end - begin - 1)  # token t is predicted at position t - 1
            ref_top = outs[0][j][rows].argmax(-1)
            for k in ks:
                logits = outs[k][j][rows].float()
                nll[k] -= torch.log_softmax(logits, -1).gather(1, targets[:, None]).sum().item()
                agree[k] += int((logits.argmax(-1) == ref_top).sum())
            count += end - first
    rows = [{"defer_experts": k, "ppl": round(math.exp(nll[k] / count), 4),
             "ppl_change": round(math.exp((nll[k] - nll[0]) / count) - 1, 5),
             "top1_agreement": round(agree[k] / count, 4), "tokens": count} for k in ks]
    print(f"{'K':>2} | ppl | change | top-1 agreement with K=0")
    for r in rows:
        print(f"{r['defer_experts']:>2} | {r['ppl']:.3f} | {r['ppl_change']:+.2%} | {r['top1_agreement']:.2%}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
