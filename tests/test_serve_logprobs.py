"""Log-probabilities (chat `logprobs`/`top_logprobs`, legacy `logprobs`), against the official openai
client on a live server, checked against the model's own log_softmax computed here."""
from __future__ import annotations

import json

import httpx
import pytest
import torch

openai = pytest.importorskip("openai")

from hymoe.engine.sampler import SamplingParams  # noqa: E402
from test_serve import LiveServer  # noqa: E402

TOL = 2e-3  # float32: a batched decode step and one whole prefill differ in summation order
MESSAGES = [{"role": "user", "content": "Who was Moses?"}]


@pytest.fixture(scope="module")
def live(llm):
    s = LiveServer(llm, max_batch=8, max_queue=16)
    yield s
    s.stop()


def _reference(llm, prompt: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """The greedy continuation and the log_softmax at each of its positions [n, V], from one prefill."""
    ids = llm.generate(prompt, max_new_tokens=n)
    lp = llm.logits(prompt + ids)[len(prompt) - 1:len(prompt) - 1 + len(ids)].log_softmax(-1)
    return ids, lp


def test_the_engine_reports_the_models_log_softmax(llm):
    prompt = llm.tokenizer.encode("And God said")
    seqs, _ = llm.generate_batch([prompt], SamplingParams(max_new_tokens=8, logprobs=4))
    ids, lp = _reference(llm, prompt, 8)
    got = seqs[0].logprobs
    assert [t for t, _, _ in got] == seqs[0].token_ids == ids
    for i, (token, logprob, top) in enumerate(got):
        assert abs(logprob - float(lp[i, token])) < TOL
        want = lp[i].topk(4)
        assert [a for a, _ in top] == want.indices.tolist()
        assert torch.allclose(torch.tensor([v for _, v in top]), want.values, atol=TOL)


def test_chat_logprobs_equal_log_softmax_and_greedy_is_the_argmax(live, llm):
    c = live.client()
    r = c.chat.completions.create(model="hymoe-demo", messages=MESSAGES, temperature=0, max_tokens=12,
                                  logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    ids, lp = _reference(llm, live.server.chat_ids(MESSAGES), 12)
    assert len(content) == len(ids) == r.usage.completion_tokens
    assert "".join(e.token for e in content) == r.choices[0].message.content
    for i, e in enumerate(content):
        assert e.token == llm.tokenizer.decode([ids[i]]) and e.bytes == list(e.token.encode())
        assert abs(e.logprob - float(lp[i, ids[i]])) < TOL
        values = [t.logprob for t in e.top_logprobs]
        assert len(values) == 5 and values == sorted(values, reverse=True)
        assert abs(values[0] - e.logprob) < 1e-6  # greedy: the chosen token is the most likely
        assert torch.allclose(torch.tensor(values), lp[i].topk(5).values, atol=TOL)


def test_streamed_logprobs_equal_the_whole_answers(live):
    c = live.client()
    kw = dict(model="hymoe-demo", messages=MESSAGES, temperature=0, max_tokens=16, logprobs=True, top_logprobs=3)
    whole = c.chat.completions.create(**kw).choices[0].logprobs.content
    chunks = list(c.chat.completions.create(stream=True, **kw))
    streamed = [e for ch in chunks if ch.choices and ch.choices[0].logprobs for e in ch.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in whole]
    assert [[t.token for t in e.top_logprobs] for e in streamed] == [[t.token for t in e.top_logprobs] for e in whole]


def test_completion_logprobs_streamed_and_not(live, llm):
    c = live.client()
    kw = dict(model="hymoe-demo", prompt="And God said", temperature=0, max_tokens=10, logprobs=3)
    r = c.completions.create(**kw)
    lps = r.choices[0].logprobs
    ids, lp = _reference(llm, llm.tokenizer.encode("And God said"), 10)
    assert "".join(lps.tokens) == r.choices[0].text
    assert lps.text_offset == [sum(len(t) for t in lps.tokens[:i]) for i in range(len(lps.tokens))]
    for i, (logprob, top) in enumerate(zip(lps.token_logprobs, lps.top_logprobs)):
        assert abs(logprob - float(lp[i, ids[i]])) < TOL
        assert list(top.values()) == sorted(top.values(), reverse=True) and abs(max(top.values()) - logprob) < 1e-6
    chunks = list(c.completions.create(stream=True, **kw))
    tokens = [t for ch in chunks if ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens]
    offsets = [o for ch in chunks if ch.choices[0].logprobs for o in ch.choices[0].logprobs.text_offset]
    assert tokens == lps.tokens and offsets == lps.text_offset


def test_sampled_logprobs_are_of_the_raw_distribution(live):
    """At temperature 1.5 with top_p, the reported numbers are still the model's log-softmax: the
    chosen token's logprob is at most the best alternative's, and the texts add up."""
    r = live.client().chat.completions.create(model="hymoe-demo", messages=MESSAGES, temperature=1.5, top_p=0.9,
                                              seed=3, max_tokens=12, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert "".join(e.token for e in content) == r.choices[0].message.content
    assert all(e.logprob <= e.top_logprobs[0].logprob + 1e-6 and e.logprob <= 0 for e in content)


def test_no_logprobs_unless_asked(live):
    c = live.client()
    assert c.chat.completions.create(model="hymoe-demo", messages=MESSAGES, max_tokens=3).choices[0].logprobs is None
    assert c.completions.create(model="hymoe-demo", prompt="Amen", max_tokens=3).choices[0].logprobs is None


@pytest.mark.parametrize("path,extra,fragment", [
    ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("chat", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ("chat", {"top_logprobs": 2}, "needs 'logprobs'"),
    ("chat", {"logprobs": False, "top_logprobs": 2}, "needs 'logprobs'"),
    ("chat", {"logprobs": "yes please"}, "logprobs"),
    ("text", {"logprobs": 21}, "logprobs"),
    ("text", {"logprobs": -1}, "logprobs"),
])
def test_bad_logprobs_are_400s_with_openai_errors(live, path, extra, fragment):
    body = {"model": "hymoe-demo", "max_tokens": 2, **({"messages": MESSAGES} if path == "chat" else {"prompt": "Amen"})}
    body.update(extra)
    url = live.url + ("/v1/chat/completions" if path == "chat" else "/v1/completions")
    r = httpx.post(url, content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"] and r.json()["error"]["type"] == "invalid_request_error"


# ---- n > 1 and lists of prompts

def _sampled(c, **kw):
    return c.chat.completions.create(model="hymoe-demo", messages=MESSAGES, temperature=1.0, seed=11,
                                     max_tokens=kw.pop("max_tokens", 12), **kw)


def test_n_choices_are_indexed_seeded_apart_and_counted_once(live):
    c = live.client()
    one = _sampled(c)
    three = _sampled(c, n=3)
    assert [ch.index for ch in three.choices] == [0, 1, 2]
    assert three.choices[0].message.content == one.choices[0].message.content  # choice 0 keeps the seed
    assert len({ch.message.content for ch in three.choices}) > 1  # seed + j: they differ
    again = _sampled(c, n=3)
    assert [ch.message.content for ch in again.choices] == [ch.message.content for ch in three.choices]
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert three.usage.completion_tokens == sum(
        len(live.server.llm.tokenizer.encode(ch.message.content)) for ch in three.choices) or \
        three.usage.completion_tokens >= 3  # an EOS or a merge may make re-encoding differ
    assert three.usage.total_tokens == three.usage.prompt_tokens + three.usage.completion_tokens


def test_n_siblings_read_the_prompt_once(live, llm):
    """The first choice reads the prompt; the others wait for it and share its full blocks from the
    prefix cache, so they compute only the last, partial block."""
    timings, block = live.server.scheduler.scheduler.timings, llm.options.kv_block_size
    prompt = "Tell me, in order, of " + ", ".join(f"the {i}th generation of Adam" for i in range(36))
    ids = live.server.chat_ids([{"role": "user", "content": prompt}])
    assert 3 * block < len(ids) < 450
    before = timings.prefill_tokens
    r = live.client().chat.completions.create(model="hymoe-demo", messages=[{"role": "user", "content": prompt}],
                                              n=4, max_tokens=2, temperature=1.0, seed=1)
    read = timings.prefill_tokens - before
    assert len(r.choices) == 4 and r.usage.prompt_tokens == len(ids)
    assert len(ids) <= read <= len(ids) + 3 * block < 2 * len(ids)  # not 4 x the prompt


def test_n_streamed_equals_not_streamed(live):
    c = live.client()
    whole = [ch.message.content for ch in _sampled(c, n=3, max_tokens=16).choices]
    chunks = list(_sampled(c, n=3, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    texts, finishes = ["", "", ""], [0, 0, 0]
    for ch in chunks:
        for choice in ch.choices:
            texts[choice.index] += choice.delta.content or ""
            finishes[choice.index] += choice.finish_reason is not None
    assert texts == whole and finishes == [1, 1, 1]
    assert chunks[-1].usage.completion_tokens >= 3


def test_completions_take_a_list_of_prompts_times_n(live):
    c = live.client()
    prompts = ["And God said", "In the beginning"]
    r = c.completions.create(model="hymoe-demo", prompt=prompts, n=2, max_tokens=8, temperature=1.0, seed=5)
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    alone = c.completions.create(model="hymoe-demo", prompt=prompts[1], max_tokens=8, temperature=1.0, seed=6)
    assert r.choices[3].text == alone.choices[0].text  # prompt-major; choice j of a prompt: seed + j
    ids = [live.server.llm.tokenizer.encode(p) for p in prompts]
    by_ids = c.completions.create(model="hymoe-demo", prompt=ids, max_tokens=8, temperature=0)
    by_text = c.completions.create(model="hymoe-demo", prompt=prompts, max_tokens=8, temperature=0)
    assert [ch.text for ch in by_ids.choices] == [ch.text for ch in by_text.choices]
    assert by_text.usage.prompt_tokens == sum(len(i) for i in ids)


@pytest.mark.parametrize("path,extra,fragment", [
    ("chat", {"n": 0}, "n"),
    ("chat", {"n": 1000}, "'n' must be at most 16"),
    ("text", {"n": 17}, "'n' must be at most 16"),
    ("text", {"n": 16, "max_tokens": 100_000}, "KV pool"),
    ("text", {"prompt": []}, "prompt"),
    ("text", {"prompt": [[]]}, "prompt"),
    ("text", {"prompt": [""]}, "prompt"),
    ("text", {"prompt": ["Amen", [1, 2]]}, "prompt"),
    ("text", {"prompt": ["Amen", 7]}, "prompt"),
    ("text", {"prompt": [10**9]}, "prompt"),
    ("text", {"prompt": ["Amen"] * 5, "n": 16}, "at most 64"),
])
def test_bad_n_and_prompt_lists_are_400s(live, path, extra, fragment):
    test_bad_logprobs_are_400s_with_openai_errors(live, path, extra, fragment)


# ---- echo

def test_echo_prepends_the_prompt_and_its_logprobs(live, llm):
    c = live.client()
    prompt = "And God said"
    ids = llm.tokenizer.encode(prompt)
    plain = c.completions.create(model="hymoe-demo", prompt=prompt, max_tokens=6, temperature=0, logprobs=2)
    r = c.completions.create(model="hymoe-demo", prompt=prompt, max_tokens=6, temperature=0, logprobs=2, echo=True)
    text, lps = r.choices[0].text, r.choices[0].logprobs
    assert text == prompt + plain.choices[0].text
    assert len(lps.tokens) == len(ids) + len(plain.choices[0].logprobs.tokens)
    assert lps.token_logprobs[0] is None and lps.top_logprobs[0] is None  # nothing precedes the first token
    lp = llm.logits(ids).log_softmax(-1)  # position i predicts token i + 1
    for i in range(1, len(ids)):
        assert abs(lps.token_logprobs[i] - float(lp[i - 1, ids[i]])) < TOL
        assert list(lps.top_logprobs[i].values()) == sorted(lps.top_logprobs[i].values(), reverse=True)
    assert lps.token_logprobs[len(ids):] == pytest.approx(plain.choices[0].logprobs.token_logprobs, abs=1e-5)
    chunks = list(c.completions.create(model="hymoe-demo", prompt=prompt, max_tokens=6, temperature=0, logprobs=2,
                                       echo=True, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == text
    streamed = [t for ch in chunks if ch.choices[0].logprobs for t in ch.choices[0].logprobs.token_logprobs]
    assert streamed[0] is None and streamed[1:] == pytest.approx(lps.token_logprobs[1:], abs=1e-5)


def test_echo_of_token_ids_and_of_several_prompts(live, llm):
    c = live.client()
    ids = [llm.tokenizer.encode("In the beginning"), llm.tokenizer.encode("Amen")]
    r = c.completions.create(model="hymoe-demo", prompt=ids, n=2, max_tokens=3, temperature=0, echo=True)
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    assert all(ch.text.startswith(llm.tokenizer.decode(ids[0])) for ch in r.choices[:2])
    assert all(ch.text.startswith(llm.tokenizer.decode(ids[1])) and ch.logprobs is None for ch in r.choices[2:])
    texts = c.completions.create(model="hymoe-demo", prompt=["In the beginning", "Amen"], max_tokens=3,
                                 temperature=0, echo=True)
    assert [ch.text.split(" beginning")[0] for ch in texts.choices[:1]] == ["In the"]
    assert texts.choices[1].text.startswith("Amen")


def test_n_choices_stream_their_own_logprobs(live):
    c = live.client()
    kw = dict(model="hymoe-demo", prompt="And God said", n=2, max_tokens=8, temperature=1.0, seed=9, logprobs=1)
    whole = c.completions.create(**kw)
    tokens, offsets = [[], []], [[], []]
    for ch in c.completions.create(stream=True, **kw):
        for choice in ch.choices:
            if choice.logprobs:
                tokens[choice.index] += choice.logprobs.tokens
                offsets[choice.index] += choice.logprobs.text_offset
    assert tokens == [ch.logprobs.tokens for ch in whole.choices]
    assert offsets == [ch.logprobs.text_offset for ch in whole.choices]  # each choice's own text
