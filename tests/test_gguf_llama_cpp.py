"""The same GGUF file in hymoe and in llama.cpp itself (llama-cpp-python): tokens and next-token choices."""
from __future__ import annotations

import numpy as np
import pytest

import hymoe

llama_ref = pytest.importorskip("llama_ref")
ARCHS = ["deepseek_v3", "qwen3_moe", "qwen2_moe", "mixtral"]


@pytest.mark.parametrize("typ", ["F16", "Q8_0", "Q4_K"])
@pytest.mark.parametrize("name", ARCHS)
def test_teacher_forced_next_tokens_agree_with_llama_cpp(gguf_model, name, typ):
    from gguf_models import TEXT

    _, path = gguf_model(name, typ)
    ours = hymoe.load(path, dtype="float32", progress=False)
    ids = ours.tokenizer.encode(TEXT[5000:9000])[:300]
    want = llama_ref.logits(llama_ref.load(path), ids).argmax(-1)
    got = ours.logits(ids).argmax(-1).numpy()
    assert (got == want).mean() >= 0.95


@pytest.mark.parametrize("name", ARCHS)
def test_tokenization_is_identical_to_llama_cpp(gguf_model, name):
    from gguf_models import SAMPLE, TEXT

    _, path = gguf_model(name, "Q8_0")
    ours = hymoe.load(path, progress=False).tokenizer
    ref = llama_ref.load(path)
    for text in (SAMPLE, TEXT[:4000], "  leading spaces\n\ttabs and 123456 digits, ünïcödé ✓ 中文\n\n"):
        assert ours.encode(text) == ref.tokenize(text.encode(), add_bos=True, special=False)


def test_chat_template_matches_llama_cpp_metadata(gguf_model):
    _, path = gguf_model("qwen2_moe", "Q8_0")
    ref = llama_ref.load(path)
    ours = hymoe.load(path, progress=False).tokenizer
    assert ref.metadata["tokenizer.chat_template"] == ours.hf.chat_template
    ids = ours.apply_chat_template([{"role": "user", "content": "Hello"}])
    assert np.array_equal(ids, ref.tokenize(ours.hf.decode(ids).encode(), add_bos=True, special=True))
