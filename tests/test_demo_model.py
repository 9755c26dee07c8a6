"""The bundled demo model: trained (held-out perplexity), equal to transformers, chat-ready, the default."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter

import pytest
import torch

import hymoe
from hymoe.default_model import DEMO_MODEL_DIR, ensure_default_model

# measured on the committed model: held-out ppl 16.14 over the first 4096 tokens, context 256 (float32)
PPL_BOUND = 17.0
EVAL_TOKENS, CONTEXT = 4096, 256


@pytest.fixture(scope="module")
def demo():
    return hymoe.load(ensure_default_model(), dtype="float32", progress=False)


def test_it_is_small_and_a_standard_hf_directory():
    from transformers import AutoConfig, AutoTokenizer

    total = sum(p.stat().st_size for p in DEMO_MODEL_DIR.iterdir())
    assert total <= 25e6
    cfg = AutoConfig.from_pretrained(DEMO_MODEL_DIR)
    assert cfg.model_type == "deepseek_v3" and cfg.n_routed_experts >= 16 and cfg.num_experts_per_tok > 1
    assert cfg.n_group > 1 and cfg.topk_group < cfg.n_group and cfg.n_shared_experts >= 1 and cfg.kv_lora_rank
    assert AutoTokenizer.from_pretrained(DEMO_MODEL_DIR).chat_template


def test_heldout_perplexity_is_low_and_far_below_unigram(demo):
    r = subprocess.run([sys.executable, "-m", "hymoe.cli", "eval", "ppl", "--text", str(DEMO_MODEL_DIR / "heldout.txt"),
                        "--context", str(CONTEXT), "--max-tokens", str(EVAL_TOKENS), "--dtype", "float32", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["tokens"] == EVAL_TOKENS - 1
    ids = demo.tokenizer.encode((DEMO_MODEL_DIR / "heldout.txt").read_text())[:EVAL_TOKENS]
    counts = Counter(ids)  # the held-out text's own unigram distribution: a generous baseline
    unigram = math.exp(-sum(c * math.log(c / len(ids)) for c in counts.values()) / len(ids))
    assert out["ppl"] < PPL_BOUND
    assert out["ppl"] < unigram / 4, (out["ppl"], unigram)


def test_greedy_generation_equals_transformers(demo):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32).eval()
    prompt = demo.tokenizer.encode("And God said unto Moses,")
    with torch.no_grad():
        want = hf.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False, top_p=None,
                           temperature=None)[0, len(prompt):].tolist()
    got = demo.generate(prompt, max_new_tokens=40, temperature=0.0, is_eos_ignored=True)
    assert got == want[: len(got)] and len(got) == len(want)
    assert demo.generate(prompt, max_new_tokens=40, temperature=0.0, is_eos_ignored=True) == got


def test_chat_template_round_trips(demo):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who was Moses?"}]
    ids = demo.tokenizer.apply_chat_template(messages)
    text = demo.tokenizer.hf.decode(ids)
    assert text == "<|system|>Answer briefly.<|end|><|user|>Who was Moses?<|end|><|assistant|>"
    assert demo.tokenizer.hf.encode(text) == ids
    assert demo.tokenizer.hf.convert_tokens_to_ids("<|end|>") in demo.eos_ids


def test_llama_cpp_perplexity_of_the_same_gguf_agrees_within_one_percent(tmp_path):
    llama_ref = pytest.importorskip("llama_ref")
    from hymoe.convert import convert
    from hymoe.eval.ppl import llm_scorer, perplexity

    path = convert(DEMO_MODEL_DIR, tmp_path / "demo-q8_0.gguf", type="Q8_0", progress=False)
    llm = hymoe.load(path, dtype="float32", progress=False)
    ids = llm.tokenizer.encode((DEMO_MODEL_DIR / "heldout.txt").read_text())[:2048]
    ours, n = perplexity(llm_scorer(llm), ids, CONTEXT)
    ref_model = llama_ref.load(path, n_ctx=CONTEXT)
    theirs, _ = perplexity(llama_ref.scorer(ref_model), ids, CONTEXT)
    assert n == 2047 and abs(ours / theirs - 1) < 0.01, (ours, theirs)
