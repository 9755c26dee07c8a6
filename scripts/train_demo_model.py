"""Train hymoe's bundled demo model: a small DeepSeek-V3-architecture MoE, on the CPU.

Text: the King James Version of the Bible (1611, public domain), from Debian's packages
`bible-kjv-text` (the text) and `bible-kjv` (the `bible` program that prints it); nothing else is
downloaded. Every 25th chapter is held out for evaluation. A byte-level BPE tokenizer is trained
with `tokenizers`, the model with Hugging Face transformers' own DeepseekV3ForCausalLM (MLA, one
shared + 16 routed experts, top-4 of 4 groups with 2 chosen, a dense first layer), and
DeepSeek-V3's auxiliary-loss-free balancing: each step nudges every expert's score-correction
bias toward equal load. Deterministic for a given --seed and thread count.

    python scripts/train_demo_model.py --out hymoe/demo_model [--steps 1800] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import tempfile
import time
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
HELD_OUT_EVERY = 25  # chapter i is held out when i % 25 == 12


def kjv_chapters() -> list[str]:
    """Download the two Debian packages, print the whole Bible, one chapter per string."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", "bible-kjv", "bible-kjv-text"], cwd=tmp, check=True,
                       capture_output=True)
        root = Path(tmp) / "root"
        for deb in Path(tmp).glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        raw = subprocess.run([str(root / "usr/bin/bible"), "-p", str(root / "usr/lib"), "Gen1:1-Rev22:21"],
                             check=True, capture_output=True, text=True).stdout
    chapters, verses, title = [], [], None
    for line in raw.splitlines():
        if re.match(r"^\S.* \d+$", line) and not line.startswith(" "):  # "Genesis 1": a new chapter
            if title:
                chapters.append(title + "\n" + "\n".join(verses) + "\n")
            title, verses = line.strip(), []
        elif m := re.match(r"^\s+\d+ (.*)$", line):  # "  3 And God said, ...": a new verse
            verses.append(m[1].strip())
        elif line.strip() and verses:  # a wrapped verse continues
            verses[-1] += " " + line.strip()
    chapters.append(title + "\n" + "\n".join(verses) + "\n")
    return chapters


def train_tokenizer(text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|end|>", chat_template=CHAT_TEMPLATE)


def build_model(vocab_size: int, eos_id: int):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    cfg = DeepseekV3Config(
        vocab_size=vocab_size, hidden_size=256, intermediate_size=768, moe_intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=16,
        n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2, q_lora_rank=96, kv_lora_rank=64,
        qk_rope_head_dim=16, qk_nope_head_dim=32, v_head_dim=32, first_k_dense_replace=1,
        routed_scaling_factor=1.0, max_position_embeddings=1024, eos_token_id=eos_id, bos_token_id=None,
        tie_word_embeddings=False)
    return DeepseekV3ForCausalLM(cfg)


def batches(ids: torch.Tensor, batch: int, seq: int, gen: torch.Generator):
    while True:
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=gen)
        yield torch.stack([ids[s:s + seq] for s in starts.tolist()])


def train_step(model, x: torch.Tensor, opt, sched) -> torch.Tensor:
    """One optimizer step on the next-token loss of x [B, T] (gradients clipped to norm 1); the loss."""
    loss = model(input_ids=x, labels=x).loss
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss


@torch.no_grad()
def evaluate(model, ids: torch.Tensor, seq: int) -> float:
    """Mean next-token loss over non-overlapping windows of the held-out tokens."""
    model.eval()
    n = (len(ids) - 1) // seq
    x = ids[: n * seq].view(n, seq)
    total = sum(model(input_ids=x[i:i + 16], labels=x[i:i + 16]).loss.item() * len(x[i:i + 16])
                for i in range(0, n, 16))
    model.train()
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="hymoe/demo_model")
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # parallel index_add in the experts' backward is not, otherwise
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    chapters = kjv_chapters()
    train_text = "\n".join(c for i, c in enumerate(chapters) if i % HELD_OUT_EVERY != 12)
    held_text = "\n".join(c for i, c in enumerate(chapters) if i % HELD_OUT_EVERY == 12)
    tok = train_tokenizer(train_text, args.vocab)
    train_ids = torch.tensor(tok.encode(train_text))
    held_ids = torch.tensor(tok.encode(held_text))
    model = build_model(len(tok), tok.eos_token_id)
    print(f"{len(chapters)} chapters; train {len(train_ids)} tokens, held-out {len(held_ids)}; "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)

    loads: list[torch.Tensor] = []  # each MoE layer's chosen expert ids this step
    routers = [layer.mlp.gate for layer in model.model.layers if hasattr(layer.mlp, "gate")]
    for r in routers:
        r.register_forward_hook(lambda mod, inp, out: loads.append(out[2].detach()))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 25)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))))
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    t0, log = time.time(), []
    for step, x in zip(range(1, args.steps + 1), batches(train_ids, args.batch, args.seq, gen)):
        loads.clear()
        loss = train_step(model, x, opt, sched)
        with torch.no_grad():  # auxiliary-loss-free balancing (DeepSeek-V3): bias up for idle experts
            for r, ids in zip(routers, loads):
                counts = torch.bincount(ids.flatten(), minlength=r.e_score_correction_bias.numel()).float()
                r.e_score_correction_bias += 1e-3 * torch.sign(counts.mean() - counts)
        if step % 100 == 0 or step == args.steps:
            entry = {"step": step, "tokens": step * args.batch * args.seq, "train_loss": round(loss.item(), 4),
                     "minutes": round((time.time() - t0) / 60, 2)}
            if step % 600 == 0 or step == args.steps:
                entry["heldout_loss"] = round(evaluate(model, held_ids, args.seq), 4)
            log.append(entry)
            print(json.dumps(entry), flush=True)

    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.8
    model.generation_config.top_p = 0.95
    model.generation_config.eos_token_id = tok.eos_token_id
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "heldout.txt").write_text(held_text)
    (out / "training.json").write_text(json.dumps({
        "source": "King James Version (1611, public domain), Debian packages bible-kjv-text + bible-kjv 4.38",
        "chapters": len(chapters), "train_tokens": len(train_ids), "heldout_tokens": len(held_ids),
        "args": vars(args), "parameters": sum(p.numel() for p in model.parameters()), "log": log}, indent=1))


if __name__ == "__main__":
    main()
