"""Fine-tune the bundled demo model (trained on 256-token windows) into a 4,096-position variant that
reads back what it saw thousands of tokens before, for the KV retention policies' quality figures at
long context (docs/kv_policies.md). On 2 CPU cores, about 30 minutes with the default stages.

Every training window is the demo model's own training text (the KJV, as scripts/train_demo_model.py
fetches it) with a passkey hidden in it (hymoe/eval/passkey.py: "The secret word is W." at a random
depth and again at the end, W one of 64 single-token words). The loss is the next-token loss of the
whole window plus the answer's loss, so the one token that needs far context weighs as much as the
rest together. Stages of growing windows, each at about the same tokens a step: at 256 positions
the retrieval forms (a few hundred steps); at 1,024 to 4,096 the model learns positions past its
training length and the longer reach; --base continues from an earlier run's output. The variant
is written to --out (not bundled: this script rebuilds it).

    python scripts/train_long_context.py --out runs/demo_long [--stages 256x16x500@1e-3,...]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from train_demo_model import HELD_OUT_EVERY, kjv_chapters

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from hymoe.eval.passkey import Passkeys  # noqa: E402


def batch(ids: torch.Tensor, keys: Passkeys, seq: int, size: int, gen: torch.Generator):
    """[size, seq] windows of training text, a passkey in each; the answers' positions [size]."""
    xs, at = [], []
    for _ in range(size):
        start = int(torch.randint(0, len(ids) - seq - 1, (1,), generator=gen))
        key = keys.keys[int(torch.randint(0, len(keys.keys), (1,), generator=gen))]
        depth = int(torch.randint(0, keys.depths(seq), (1,), generator=gen))
        x, a = keys.window(ids[start:start + seq].tolist(), key, depth)
        xs.append(torch.tensor(x))
        at.append(a)
    return torch.stack(xs), torch.tensor(at)


def step(model, x: torch.Tensor, at: torch.Tensor, opt, weight: float) -> tuple[float, float, float]:
    """One optimizer step on the window loss plus `weight` x the answer loss; (window loss, answer
    loss, answer top-1 accuracy)."""
    logits = model(input_ids=x).logits  # [B, T, V]
    lm = F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    rows = torch.arange(len(x))
    guess = logits[rows, at - 1]  # [B, V]: the answer is predicted one position before it
    answer = F.cross_entropy(guess, x[rows, at])
    opt.zero_grad()
    (lm + weight * answer).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return lm.item(), answer.item(), (guess.argmax(-1) == x[rows, at]).float().mean().item()


def stages(spec: str) -> list[tuple[int, int, int, float]]:
    """"256x16x500@1e-3,..." -> (window, batch, steps, lr) per stage."""
    out = []
    for s in spec.split(","):
        shape, lr = s.split("@")
        seq, size, steps = (int(v) for v in shape.split("x"))
        out.append((seq, size, steps, float(lr)))
    return out


def schedule(steps: int, is_last: bool):
    """lr factor by step: 20 steps of warm-up, then constant; the last stage decays to 0.1 (cosine)."""
    def factor(s: int) -> float:
        decay = 0.55 + 0.45 * math.cos(math.pi * min(1.0, s / steps)) if is_last else 1.0
        return min(1.0, (s + 1) / 20) * decay
    return factor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=str(ROOT / "hymoe" / "demo_model"))
    ap.add_argument("--out", default="runs/demo_long")
    ap.add_argument("--stages", default="256x16x500@1e-3,1024x4x300@5e-4,2048x2x150@5e-4,4096x1x200@3e-4",
                    help="window x batch x steps @ learning rate of each stage")
    ap.add_argument("--answer-weight", type=float, default=1.0, help="the answer's loss against the window's")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from transformers import AutoTokenizer, DeepseekV3ForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(args.base)
    keys = Passkeys(tok)
    model = DeepseekV3ForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    plan = stages(args.stages)
    model.config.max_position_embeddings = max(seq for seq, *_ in plan)
    chapters = kjv_chapters()
    train_ids = torch.tensor(tok.encode("\n".join(c for i, c in enumerate(chapters) if i % HELD_OUT_EVERY != 12)))
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    t0, log = time.time(), []
    for i, (seq, size, steps, lr) in enumerate(plan):
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(steps, i == len(plan) - 1))
        recent = []
        for s in range(1, steps + 1):
            recent.append(step(model, *batch(train_ids, keys, seq, size, gen), opt, args.answer_weight))
            sched.step()
            if s % 10 == 0 or s == steps:
                lm, answer, acc = (sum(v) / len(recent) for v in zip(*recent))
                log.append({"window": seq, "step": s, "loss": round(lm, 4), "answer_loss": round(answer, 4),
                            "answer_top1": round(acc, 3), "minutes": round((time.time() - t0) / 60, 2)})
                print(json.dumps(log[-1]), flush=True)
                recent = []
    out = Path(args.out)
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "heldout.txt").write_text((Path(args.base) / "heldout.txt").read_text())
    (out / "training.json").write_text(json.dumps({"base": args.base, "args": vars(args), "log": log}, indent=1))


if __name__ == "__main__":
    main()
