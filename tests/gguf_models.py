"""Tiny HF models with a real byte-level BPE tokenizer, sized for every GGUF block type.

Rows of 256 values let Q4_K/Q5_K/Q6_K apply to experts and most attention tensors; built with
transformers' own classes and saved with save_pretrained, like tiny_models. A random model's
next-token choice sits on a knife edge (its logits are nearly flat), so any rounding flips it;
comparisons of quantized files are therefore made on models trained for a few steps on TEXT,
whose predictions are confident the way real models' are.
"""
from __future__ import annotations

from pathlib import Path

import torch
import transformers

from tiny_models import perturb

# training text that does not move when the docs are edited: the demo model's held-out chapters
TEXT = (Path(__file__).resolve().parents[1] / "hymoe" / "demo_model" / "heldout.txt").read_text()
SAMPLE = ("The quick brown fox jumps over the lazy dog. Experts stream from memory: 42 tokens/s, "
          "isn't it? Mixture-of-Experts models route each token to a few of them.")
COMMON = dict(hidden_size=256, num_attention_heads=4, max_position_embeddings=512, tie_word_embeddings=False,
              rms_norm_eps=1e-6)
CONFIGS = {
    "deepseek_v3": dict(
        cls="DeepseekV3", num_hidden_layers=3, intermediate_size=512, moe_intermediate_size=256,
        num_key_value_heads=4, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2,
        topk_group=1, q_lora_rank=64, kv_lora_rank=64, qk_rope_head_dim=32, qk_nope_head_dim=32,
        v_head_dim=32, first_k_dense_replace=1, routed_scaling_factor=2.5, scales=(0.5, 4.0)),
    "qwen3_moe": dict(
        cls="Qwen3Moe", num_hidden_layers=2, intermediate_size=512, moe_intermediate_size=256,
        num_key_value_heads=2, head_dim=64, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True),
    "qwen2_moe": dict(
        cls="Qwen2Moe", num_hidden_layers=2, intermediate_size=512, moe_intermediate_size=256,
        num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=256),
    "mixtral": dict(
        cls="Mixtral", num_hidden_layers=2, intermediate_size=256, num_key_value_heads=2,
        num_local_experts=4, num_experts_per_tok=2),
}


def make_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|end|>", "<|user|>", "<|assistant|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|end|>", chat_template=template)


def train(model, tok, steps: int, seq: int = 64, batch: int = 8, lr: float = 3e-3) -> float:
    """A few steps of next-token training on TEXT, so predictions are confident as in real models."""
    ids = torch.tensor(tok.encode(TEXT))
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # the same model every run (parallel index_add is not, otherwise)
    model.train()
    try:
        for _ in range(steps):
            starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=g)
            x = torch.stack([ids[s:s + seq] for s in starts.tolist()])
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    model.eval()
    return loss.item()


def make_gguf_model(name: str, out_dir, seed: int = 0, steps: int = 0):
    tok = make_tokenizer()
    spec = dict(CONFIGS[name])
    cls = spec.pop("cls")
    weight_scale, router_scale = spec.pop("scales", (1.0, 8.0))
    cfg = getattr(transformers, f"{cls}Config")(**{**COMMON, **spec}, vocab_size=len(tok),
                                                eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = getattr(transformers, f"{cls}ForCausalLM")(cfg).float().eval()
    perturb(model, router_scale, weight_scale)
    if steps:
        train(model, tok, steps)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return model


def spm_vocab(size: int) -> dict:
    """A SentencePiece-style ("llama") GGUF vocabulary of exactly `size` pieces, built from TEXT.

    <unk>, <s>, </s>, the 256 byte pieces, every character of TEXT, then BPE merges in the order a
    Metaspace BPE learns them; a piece's score is minus its rank, as SentencePiece scores rank pieces.
    """
    import json

    import gguf
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    bpe.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=4 * size, show_progress=False))
    merges = json.loads(bpe.to_str())["model"]["merges"]
    chars = sorted({c for c in TEXT.replace(" ", "▁") if c != "\n"} | {"▁"})
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    pieces = list(chars) + ["".join(m if isinstance(m, list) else m.split(" ")) for m in merges]
    # as in SentencePiece, every character of a piece is a piece (newline stays a byte, as in Llama)
    pieces = list(dict.fromkeys(p for p in pieces if p not in tokens and set(p) <= set(chars)))
    pieces = pieces[: size - len(tokens)]
    scores = [0.0] * len(tokens) + [-float(i) for i in range(len(pieces))]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    assert len(tokens) == size
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores,
            "tokenizer.ggml.token_type": [int(t) for t in types], "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
            "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_space_prefix": True}
