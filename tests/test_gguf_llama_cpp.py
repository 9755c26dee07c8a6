"""The same GGUF file in hymoe and in llama.cpp itself (llama-cpp-python): tokens and next-token choices."""
from __future__ import annotations

import numpy as np
import pytest

import hymoe

llama_ref = pytest.importorskip("llama_ref")
ARCHS = ["deepseek_v3", "qwen3_moe", "qwen2_moe", "mixtral"]


def agreement(path, positions: int) -> float:
    """Teacher-forced top-1 agreement of hymoe and llama.cpp on one file, over a held-back text."""
    from gguf_models import TEXT

    ours = hymoe.load(path, dtype="float32", progress=False)
    ids = ours.tokenizer.encode(TEXT[5000:9000])[:positions]
    want = llama_ref.logits(llama_ref.load(path), ids).argmax(-1)
    return (ours.logits(ids).argmax(-1).numpy() == want).mean()


@pytest.mark.parametrize("typ", ["F16", "Q8_0", "Q4_K"])
@pytest.mark.parametrize("name", ARCHS)
def test_teacher_forced_next_tokens_agree_with_llama_cpp(gguf_model, name, typ):
    assert agreement(gguf_model(name, typ)[1], 300) >= 0.95


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


@pytest.mark.parametrize("typ", ["BF16", "Q5_K", "Q6_K", "Q4_0", "TQ2_0"])
def test_every_convert_type_loads_in_llama_cpp_and_agrees(gguf_model, typ):
    assert agreement(gguf_model("qwen2_moe", typ)[1], 200) >= 0.95


def test_dynamic_mixed_quant_agrees_with_llama_cpp(gguf_model, tmp_path):
    """Experts at 2 bits, attention and the rest at 8, as the 1.58-bit dynamic quants do it."""
    from hymoe.convert import convert

    hf_dir, _ = gguf_model("deepseek_v3", "F16")
    path = convert(hf_dir, tmp_path / "dyn.gguf", type="Q8_0", experts_type="TQ2_0", attn_type="Q8_0", progress=False)
    assert agreement(path, 200) >= 0.95


def test_sentencepiece_vocabulary_tokenizes_like_llama_cpp(gguf_model, tmp_path):
    """A `llama` (SentencePiece) GGUF vocabulary, as Mixtral files carry: identical token ids."""
    from gguf_edit import rewrite
    from gguf_models import SAMPLE, TEXT, spm_vocab

    _, path = gguf_model("mixtral", "Q8_0")
    spm = tmp_path / "spm.gguf"
    rewrite(path, spm, drop_keys=("tokenizer.ggml.merges", "tokenizer.ggml.pre", "tokenizer.chat_template"),
            set_keys=spm_vocab(hymoe.load(path, progress=False).config.vocab_size))
    ours = hymoe.load(spm, progress=False).tokenizer
    ref = llama_ref.load(spm)
    for text in (SAMPLE, TEXT[:3000], "  leading spaces\n\ttabs and 123456 digits, ünïcödé ✓ 中文\n\n"):
        ids = ours.encode(text)
        assert ids == ref.tokenize(text.encode(), add_bos=True, special=False)
        assert ours.decode(ids) == text


def test_iq1_s_experts_written_by_hymoe_run_in_llama_cpp(gguf_model, tmp_path):
    """hymoe's own IQ1_S encoder (the 1.58-bit DeepSeek-R1 files' expert format), read by llama.cpp."""
    from hymoe.convert import convert

    hf_dir, _ = gguf_model("mixtral", "F16")
    path = convert(hf_dir, tmp_path / "iq1.gguf", type="Q8_0", experts_type="IQ1_S", progress=False)
    assert agreement(path, 200) >= 0.95


def logit_error(path, positions: int = 200) -> float:
    """max |hymoe - llama.cpp| / max |llama.cpp| over the teacher-forced logits of a held-back text."""
    from gguf_models import TEXT

    ours = hymoe.load(path, dtype="float32", progress=False)
    ids = ours.tokenizer.encode(TEXT[5000:9000])[:positions]
    want = llama_ref.logits(llama_ref.load(path), ids)
    return float(np.abs(ours.logits(ids).numpy() - want).max() / np.abs(want).max())


DS2 = "deepseek2."
YARN = {DS2 + "rope.scaling.type": "yarn", DS2 + "rope.scaling.factor": 4.0,
        DS2 + "rope.scaling.original_context_length": 128}


@pytest.mark.parametrize("keys", [YARN, {**YARN, DS2 + "rope.scaling.yarn_log_multiplier": 0.0707},
                                  {**YARN, DS2 + "rope.scaling.yarn_beta_fast": 4.0,
                                   DS2 + "rope.scaling.yarn_beta_slow": 2.0}],
                         ids=["no-log-multiplier", "log-multiplier", "betas-in-file"])
def test_deepseek2_yarn_computes_as_llama_cpp(gguf_model, tmp_path, keys):
    """Without a log multiplier llama.cpp scales the attention too; it reads no beta keys for deepseek2."""
    from gguf_edit import rewrite

    _, path = gguf_model("deepseek_v3", "F32")
    rewrite(path, tmp_path / "yarn.gguf", set_keys=keys)
    assert logit_error(tmp_path / "yarn.gguf") <= 2e-3  # 1e-4 measured; 0.07-0.12 with HF's rule


@pytest.mark.parametrize("groups,used,is_norm,is_biased", [(2, 1, False, False), (4, 2, True, False),
                                                           (2, 1, False, True)])
def test_deepseek2_softmax_routing_computes_as_llama_cpp(gguf_model, tmp_path, groups, used, is_norm, is_biased):
    """DeepSeek-V2/V2.5 files: softmax gating, expert groups ranked by their best two (HF's V2: the best one)."""
    from gguf_edit import rewrite

    _, path = gguf_model("deepseek_v3", "F32")
    keys = {DS2 + "expert_gating_func": 1, DS2 + "expert_group_count": groups,
            DS2 + "expert_group_used_count": used, DS2 + "expert_weights_norm": is_norm}
    rewrite(path, tmp_path / "v2.gguf", set_keys=keys,
            tensors=lambda name, _: [] if "exp_probs_b" in name and not is_biased else None)
    assert logit_error(tmp_path / "v2.gguf") <= 2e-3  # 1e-4 measured; 0.08 with HF's V2 routing
