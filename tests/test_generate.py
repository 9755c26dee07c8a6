"""Stop conditions of the generation loop: EOS, stop strings, token budget."""
import pytest

import hymoe
from hymoe.engine.sampler import SamplingParams


@pytest.fixture(scope="module")
def default_llm(tmp_path_factory):
    from hymoe.default_model import ensure_default_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        return hymoe.load(ensure_default_model(), dtype="float32", progress=False)


def test_stop_string_cuts_the_text(default_llm):
    ids = default_llm.tokenizer.encode("The experts")
    free, _ = default_llm.generate_batch([ids], SamplingParams(max_new_tokens=24, is_eos_ignored=True))
    text = free[0].text
    stop = text[len(text) // 2: len(text) // 2 + 2]
    cut, _ = default_llm.generate_batch([ids], SamplingParams(max_new_tokens=24, is_eos_ignored=True, stop=(stop,)))
    assert cut[0].finish_reason == "stop"
    assert cut[0].text == text[: text.index(stop)]


def test_eos_stops_and_is_not_returned(default_llm):
    ids = default_llm.tokenizer.encode("The experts")
    first = default_llm.generate(ids, max_new_tokens=3, is_eos_ignored=True)
    out, _ = default_llm.generate_batch([ids], SamplingParams(max_new_tokens=10, extra_eos_ids=(first[1],)))
    assert out[0].token_ids == first[:1] and out[0].finish_reason == "stop"


def test_token_budget_gives_length(default_llm):
    ids = default_llm.tokenizer.encode("The experts")
    out, timings = default_llm.generate_batch([ids], SamplingParams(max_new_tokens=5, is_eos_ignored=True))
    assert len(out[0].token_ids) == 5 and out[0].finish_reason == "length"
    assert timings.decode_tokens == 4 and timings.prefill_tokens == len(ids)


def test_chat_template_round_trips(default_llm):
    tok = default_llm.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "hi there"}])
    assert tok.hf.decode(ids) == "<|user|>hi there<|end|><|assistant|>"
