"""Fine-tune the bundled demo model (trained on 256-token windows) into a 4,096-position variant, for
the KV retention policies' quality figures at long context (docs/kv_policies.md). On the CPU, minutes.

Windows of 4,096 tokens of the demo model's own training text (the KJV, as scripts/train_demo_model.py
fetches it), half of them with a retrieval task mixed in: a sentence "The secret word is W." early in
the window and again at its end, so the last tokens can only be predicted from far back. The variant
is written to --out (not bundled: this script rebuilds it).

    python scripts/train_long_context.py --out runs/demo_long [--steps 150] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from train_demo_model import HELD_OUT_EVERY, kjv_chapters, train_step

ROOT = Path(__file__).resolve().parents[1]


def needle_window(ids: torch.Tensor, seq: int, tok, gen: torch.Generator) -> torch.Tensor:
    """A window of `seq` training tokens; with probability 1/2 a secret word placed early and asked
    for at the end."""
    start = int(torch.randint(0, len(ids) - seq - 1, (1,), generator=gen))
    x = ids[start:start + seq].clone()
    if torch.rand(1, generator=gen).item() < 0.5:
        word = tok.decode([int(torch.randint(200, len(tok) - 10, (1,), generator=gen))]).strip() or "light"
        fact = torch.tensor(tok.encode(f"\nThe secret word is {word}.\n"))
        at = int(torch.randint(0, seq // 4, (1,), generator=gen))
        x[at:at + len(fact)] = fact
        x[seq - len(fact):] = fact
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=str(ROOT / "hymoe" / "demo_model"))
    ap.add_argument("--out", default="runs/demo_long")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from transformers import AutoTokenizer, DeepseekV3ForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(args.base)
    model = DeepseekV3ForCausalLM.from_pretrained(args.base, torch_dtype=torch.float32)
    model.config.max_position_embeddings = args.seq
    chapters = kjv_chapters()
    train_ids = torch.tensor(tok.encode("\n".join(c for i, c in enumerate(chapters) if i % HELD_OUT_EVERY != 12)))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / args.steps))))
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    t0, log = time.time(), []
    for step in range(1, args.steps + 1):
        loss = train_step(model, needle_window(train_ids, args.seq, tok, gen)[None], opt, sched)
        if step % 10 == 0 or step == args.steps:
            log.append({"step": step, "loss": round(loss.item(), 4), "minutes": round((time.time() - t0) / 60, 2)})
            print(json.dumps(log[-1]), flush=True)
    out = Path(args.out)
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "heldout.txt").write_text((Path(args.base) / "heldout.txt").read_text())
    (out / "training.json").write_text(json.dumps({"base": args.base, "args": vars(args), "log": log}, indent=1))


if __name__ == "__main__":
    main()
