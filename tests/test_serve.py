"""The HTTP server against the official openai client (and httpx for Ollama's routes), on loopback."""
from __future__ import annotations

import asyncio
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

openai = pytest.importorskip("openai")


PROMPTS = ["And God said", "In the beginning", "The Lord is my shepherd", "Blessed are the meek",
           "And Moses went up", "Let there be light", "Now the serpent was", "And it came to pass"]


class LiveServer:
    def __init__(self, llm, request_timeout: float = 30.0, **kw):
        from hymoe.serve import timeouts
        from hymoe.serve.app import Server, build_app

        self.server = Server(llm, "hymoe-demo", **kw)
        self.uv, self.thread, self.port = timeouts.start_on_loopback(build_app(self.server), request_timeout)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, key="none") -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def stop(self):
        self.uv.should_exit = True
        self.thread.join(timeout=10)
        self.server.scheduler.close()


@pytest.fixture(scope="module")
def live(llm):
    s = LiveServer(llm, max_batch=8, max_queue=16)
    yield s
    s.stop()


def _chat(client, prompt, **kw):
    return client.chat.completions.create(model="hymoe-demo", messages=[{"role": "user", "content": prompt}],
                                          temperature=0, max_tokens=kw.pop("max_tokens", 24), **kw)


def test_models_and_a_greedy_chat_completion(live, llm):
    c = live.client()
    assert [m.id for m in c.models.list().data] == ["hymoe-demo"]
    r = _chat(c, "Who was Moses?")
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    want_prompt = len(llm.tokenizer.apply_chat_template([{"role": "user", "content": "Who was Moses?"}]))
    assert r.usage.prompt_tokens == want_prompt and r.usage.completion_tokens >= 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_equals_the_whole_answer(live):
    c = live.client()
    whole = _chat(c, "Who was Moses?").choices[0].message.content
    chunks = list(_chat(c, "Who was Moses?", stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finish) == 1


def test_completions_with_stop_and_seed(live, llm):
    c = live.client()
    free = c.completions.create(model="hymoe-demo", prompt="And God said", max_tokens=30, temperature=0)
    text = free.choices[0].text
    stop = text[10:13]
    cut = c.completions.create(model="hymoe-demo", prompt="And God said", max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == text[: text.index(stop)]
    a, b = (c.completions.create(model="hymoe-demo", prompt="And God said", max_tokens=12, temperature=1.0,
                                 seed=7).choices[0].text for _ in range(2))
    assert a == b


def test_eight_parallel_greedy_streams_equal_each_run_alone(live):
    c = live.client()
    alone = [_chat(c, p, max_tokens=32).choices[0].message.content for p in PROMPTS]

    def streamed(p):
        return "".join(ch.choices[0].delta.content or "" for ch in _chat(live.client(), p, max_tokens=32, stream=True)
                       if ch.choices)

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(streamed, PROMPTS))
    assert together == alone
    assert live.server.scheduler.steps > 0


def test_cancel_mid_stream_frees_the_slot(live):
    stream = _chat(live.client(), "And it came to pass", max_tokens=400, stream=True)
    got = 0
    for ch in stream:
        got += 1
        if got == 4:
            break
    stream.close()
    deadline = time.time() + 15
    while live.server.scheduler.load["active"] and time.time() < deadline:
        time.sleep(0.1)
    assert live.server.scheduler.load["active"] == 0


@pytest.mark.parametrize("body, status, fragment", [
    ("{not json", 400, "not valid JSON"),
    (json.dumps({"model": "hymoe-demo", "messages": "hello"}), 400, "messages"),
    (json.dumps({"model": "hymoe-demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"}), 400,
     "max_tokens"),
    (json.dumps({"model": "hymoe-demo", "messages": []}), 400, "must not be empty"),
    (json.dumps({"model": "hymoe-demo", "messages": [{"role": "user", "content": "amen " * 600}]}), 400,
     "context"),
    (json.dumps({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}), 404, "does not exist"),
    (json.dumps({"model": "hymoe-demo", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}), 400,
     "temperature"),
    ('{"model": "hymoe-demo", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}", 400, "nested too deeply"),
    (json.dumps({"model": "hymoe-demo", "messages": [{"role": "user", "content": "hi"}], "seed": 2**64}), 400, "seed"),
    (json.dumps({"model": "hymoe-demo", "messages": [{"role": "user", "content": "hi"}], "seed": -2**63 - 1}), 400,
     "seed"),
    ('{"model": "hymoe-demo", "messages": [{"role": "user", "content": "\\ud800"}]}', 400, "UTF-8"),
    (json.dumps({"model": "hymoe-demo", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}),
     400, "messages.0.content"),
    (json.dumps({"model": "hymoe-demo", "messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}),
     400, "messages.0.content"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(live, body, status, fragment):
    r = httpx.post(live.url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"]
    assert _chat(live.client(), "Amen", max_tokens=2).choices[0].message.content is not None


def test_a_shared_prefix_is_reported_as_cached_tokens(live, llm):
    """A second request that begins with a first one's prompt reuses the KV blocks it left: the
    shared prefix in whole blocks (the system prompt spans several)."""
    system = "Thou shalt answer in the words of the prophets, briefly, and in the manner of the scribes of old. " * 8
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Who was Aaron?"}]
    c = live.client()
    first = c.chat.completions.create(model="hymoe-demo", messages=messages, temperature=0, max_tokens=4)
    messages[-1]["content"] = "Who was Miriam?"
    second = c.chat.completions.create(model="hymoe-demo", messages=messages, temperature=0, max_tokens=4)
    ids = [llm.tokenizer.apply_chat_template([messages[0], {"role": "user", "content": q}])
           for q in ("Who was Aaron?", "Who was Miriam?")]
    shared = next(i for i, (a, b) in enumerate(zip(*ids)) if a != b)  # the system prompt and "Who was"
    bs = llm.options.kv_block_size
    assert shared >= 2 * bs and second.usage.prompt_tokens_details.cached_tokens == shared // bs * bs
    assert first.usage.prompt_tokens_details.cached_tokens < shared


def test_a_body_past_the_limit_is_refused_with_413(live):
    big = json.dumps({"model": "hymoe-demo", "messages": [{"role": "user", "content": "a" * (9 << 20)}]})
    r = httpx.post(live.url + "/v1/chat/completions", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]
    assert _chat(live.client(), "Amen", max_tokens=2).choices[0].message.content is not None


def test_a_dropped_non_streamed_request_frees_its_slot(live, monkeypatch):
    """The server cancels it (it does not just run to its end: that passed on a fast machine while
    starlette's BaseHTTPMiddleware hid every disconnect)."""
    cancelled = []
    cancel = live.server.scheduler.cancel
    monkeypatch.setattr(live.server.scheduler, "cancel", lambda req: cancelled.append(req) or cancel(req))
    # at least 10 ms a step, so 480 tokens take longer than the wait below on any machine (a fast one
    # decoded them in 1.8 s, before the server's next look at the connection)
    step = live.server.scheduler.scheduler.step
    monkeypatch.setattr(live.server.scheduler.scheduler, "step", lambda: time.sleep(0.01) or step())
    body = {"model": "hymoe-demo", "messages": [{"role": "user", "content": "And it came to pass"}],
            "max_tokens": 480, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(live.url + "/v1/chat/completions", json=body, timeout=1.0)
    deadline = time.time() + 2.5  # the server looks at the connection every second
    while live.server.scheduler.load["active"] and time.time() < deadline:
        time.sleep(0.1)
    assert live.server.scheduler.load["active"] == 0
    assert len(cancelled) == 1 and len(cancelled[0].token_ids) < 480


def test_openai_client_sees_typed_errors(live):
    with pytest.raises(openai.NotFoundError):
        live.client().chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="context"):
        _chat(live.client(), "amen " * 600)


def test_api_key_is_enforced(llm):
    s = LiveServer(llm, api_key="sesame", max_batch=2)
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        assert httpx.get(s.url + "/api/tags").status_code == 401
        assert _chat(s.client("sesame"), "Amen", max_tokens=2).choices[0].message.content is not None
        # the scheme is case-insensitive (RFC 7235); the key is not
        assert httpx.get(s.url + "/api/tags", headers={"Authorization": "bearer sesame"}).status_code == 200
        assert httpx.get(s.url + "/api/tags", headers={"Authorization": "Bearer Sesame"}).status_code == 401
        assert httpx.get(s.url + "/api/tags", headers={"Authorization": "Basic sesame"}).status_code == 401
        two = [("Authorization", "Bearer sesame"), ("Authorization", "Bearer other")]
        assert httpx.get(s.url + "/api/tags", headers=two).status_code == 401
    finally:
        s.stop()


def test_ollama_routes(live):
    tags = httpx.get(live.url + "/api/tags").json()
    assert tags["models"][0]["name"] == "hymoe-demo:latest"
    lines = []
    with httpx.stream("POST", live.url + "/api/chat", json={
            "model": "hymoe-demo:latest", "messages": [{"role": "user", "content": "Who was Moses?"}],
            "options": {"temperature": 0, "num_predict": 16}}) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert lines[-1]["done"] is True and all(not x["done"] for x in lines[:-1])
    text = "".join(x["message"]["content"] for x in lines)
    assert text == _chat(live.client(), "Who was Moses?", max_tokens=16).choices[0].message.content
    assert lines[-1]["eval_count"] >= 1 and lines[-1]["prompt_eval_count"] > 0
    gen = httpx.post(live.url + "/api/generate", json={"model": "hymoe-demo", "prompt": "And God said",
                                                      "raw": True, "stream": False,
                                                      "options": {"temperature": 0, "num_predict": 8}}).json()
    assert gen["done"] is True and gen["response"]
    assert httpx.post(live.url + "/api/chat", json={"model": "llama3", "messages": []}).status_code == 404


def test_a_hundred_concurrent_requests_complete_or_are_refused_properly(live):
    async def one(client, i):
        r = await client.post("/v1/completions", json={"model": "hymoe-demo", "prompt": PROMPTS[i % 8],
                                                        "max_tokens": 4, "temperature": 0})
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) > 0 and r.json()["error"]["code"] == "server_busy"
        else:
            assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
        return r.status_code

    async def all_of_them():
        async with httpx.AsyncClient(base_url=live.url, timeout=300,
                                     limits=httpx.Limits(max_connections=100)) as client:
            return await asyncio.gather(*(one(client, i) for i in range(100)))

    codes = asyncio.run(all_of_them())
    assert len(codes) == 100 and set(codes) <= {200, 503} and codes.count(200) >= 16
    assert codes.count(200) >= 8 + 16  # every slot and the whole queue before the first refusal
    assert live.server.scheduler.load["active"] == 0


def test_chat_page_streams_in_headless_chromium(live, tmp_path):
    page = httpx.get(live.url + "/")
    assert page.status_code == 200 and "/v1/chat/completions" in page.text
    pytest.importorskip("websockets", reason="websockets (a test dependency) is not installed")
    from browser import Chromium

    try:
        browser = Chromium()
    except FileNotFoundError:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    try:
        browser.goto(live.url + "/?q=Who%20was%20Moses%3F")
        browser.wait_for("document.body.dataset.replies === '1'")
        assert browser.eval("document.getElementById('model').textContent") == "hymoe-demo"
        assert browser.eval("document.querySelector('.user').textContent") == "> Who was Moses?"
        reply = browser.eval("document.querySelector('.assistant').textContent")
        assert reply and len(reply) > 10
        # typing a second message into the form streams a second reply
        browser.eval("document.getElementById('temperature').value = '0';"
                     "document.getElementById('prompt').value = 'Who was Moses?';"
                     "document.getElementById('send').click()")
        browser.wait_for("document.body.dataset.replies === '2'")
        second = browser.eval("document.querySelectorAll('.assistant')[1].textContent")
        history = [{"role": "user", "content": "Who was Moses?"}, {"role": "assistant", "content": reply},
                   {"role": "user", "content": "Who was Moses?"}]
        want = live.client().chat.completions.create(model="hymoe-demo", messages=history, temperature=0,
                                                     max_tokens=128)
        assert second == want.choices[0].message.content
        _cut_stop_and_clear(live, browser)
        browser.screenshot(tmp_path / "page.png")
        assert (tmp_path / "page.png").stat().st_size > 1000
    finally:
        browser.close()


def _cut_stop_and_clear(live, browser):
    """A reply cut by max tokens says so; Stop aborts a stream and the server frees its row; Clear
    empties the conversation, and the next message starts a new one."""
    def send(text, max_tokens, temperature):
        browser.eval(f"document.getElementById('max_tokens').value = '{max_tokens}';"
                     f"document.getElementById('temperature').value = '{temperature}';"
                     f"document.getElementById('prompt').value = '{text}';"
                     "document.getElementById('send').click()")

    send("Who was Abraham?", 3, 0)
    browser.wait_for("document.body.dataset.replies === '3'")
    assert "max tokens" in browser.eval("document.querySelector('#log > :last-child').textContent")
    assert browser.eval("document.querySelector('#log > :last-child').className") == "note"
    send("Tell me the whole story of Noah and the flood.", 480, 1)
    browser.wait_for("document.body.dataset.state === 'streaming' && "
                     "[...document.querySelectorAll('.assistant')].at(-1).textContent.length > 0")
    assert live.server.scheduler.load["active"] == 1
    browser.eval("document.getElementById('stop').click()")
    browser.wait_for("document.body.dataset.state === 'idle'")
    assert browser.eval("document.querySelector('#log > :last-child').textContent") == "(stopped)"
    assert browser.eval("document.body.dataset.replies") == "4"
    deadline = time.time() + 10
    while live.server.scheduler.load["active"] and time.time() < deadline:  # the server sees the client leave
        time.sleep(0.1)
    assert live.server.scheduler.load["active"] == 0
    browser.eval("document.getElementById('clear').click()")
    assert browser.eval("document.getElementById('log').children.length") == 0
    assert browser.eval("document.body.dataset.replies") == "0"
    send("Who was Moses?", 8, 0)
    browser.wait_for("document.body.dataset.replies === '1'")  # a new conversation: one exchange
    alone = live.client().chat.completions.create(model="hymoe-demo", temperature=0, max_tokens=8,
                                                  messages=[{"role": "user", "content": "Who was Moses?"}])
    assert browser.eval("document.querySelector('.assistant').textContent") == alone.choices[0].message.content


def test_bench_serve_and_serve_arguments():
    import sys

    run = lambda *a: subprocess.run([sys.executable, "-m", "hymoe.cli", *a], capture_output=True, text=True,
                                    timeout=300)
    r = run("bench", "serve", "--users", "1,2", "--gen-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert [x["users"] for x in out] == [1, 2]
    assert all(x["aggregate_tokens_per_s"] > 0 and x["ttft_ms"] > 0 for x in out)
    r = run("serve", "--placement", "everywhere")
    assert r.returncode == 1 and "unknown placement 'everywhere'" in r.stderr
