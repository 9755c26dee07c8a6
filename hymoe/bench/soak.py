"""`hymoe bench serve --soak SECONDS --users N`: the HTTP server under a steady mixed load.

N users send requests back to back for SECONDS through the real server (uvicorn on loopback, the
same app and engine as `hymoe serve`): OpenAI chat and completions, streamed and not, Ollama chat,
streams dropped after a few chunks, and bad requests. Every 10 s the process's resident memory is
sampled. A request is failed when its answer is not the one expected (a 5xx, a bad body, an
exception), lost when no answer came at all before its timeout.
"""
from __future__ import annotations

import random
import statistics
import threading
import time
from collections import Counter

import httpx
import uvicorn

from hymoe.bench.serve import PROMPTS
from hymoe.serve import timeouts
from hymoe.serve.app import Server, build_app

SAMPLE_S = 10.0
MODEL = "hymoe-demo"


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _one(client: httpx.Client, r: random.Random) -> str:
    """One request of a random kind; what became of it: ok, failed or lost."""
    kind = r.choice(["chat", "chat_stream", "completion", "ollama", "dropped", "bad"])
    prompt, tokens = r.choice(PROMPTS), r.randint(4, 48)
    try:
        if kind == "bad":
            resp = client.post("/v1/chat/completions", json={"model": "x", "messages": "not a list"})
            return "ok" if resp.status_code == 400 else "failed"
        if kind == "ollama":
            resp = client.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": prompt}], "stream": False,
                                                  "options": {"num_predict": tokens}})
            return "ok" if resp.status_code == 200 and resp.json()["done"] else "failed"
        if kind in ("chat_stream", "dropped"):
            body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
                    "stream": True}
            with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                if resp.status_code != 200:
                    return "failed"
                chunks = 0
                for line in resp.iter_lines():
                    chunks += line.startswith("data: ")
                    if kind == "dropped" and chunks >= 3:
                        return "ok"  # the client leaves; the server must free the slot
                    if line == "data: [DONE]":
                        return "ok"
                return "failed"
        if kind == "chat":
            resp = client.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": tokens,
                                                             "messages": [{"role": "user", "content": prompt}]})
            return "ok" if resp.status_code == 200 and resp.json()["choices"][0]["message"] else "failed"
        resp = client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": tokens})
        return "ok" if resp.status_code == 200 and resp.json()["choices"][0]["text"] is not None else "failed"
    except httpx.TimeoutException:
        return "lost"
    except (httpx.HTTPError, ValueError, KeyError):
        return "failed"


def _serve(llm, users: int) -> tuple[uvicorn.Server, Server, str]:
    server = Server(llm, MODEL, max_batch=users, max_queue=4 * users, quiet=True)  # no access log amid the report
    uv, _, port = timeouts.start_on_loopback(build_app(server))
    return uv, server, f"http://127.0.0.1:{port}"


def soak(llm, seconds: float, users: int, warmup: float | None = None) -> dict:
    uv, server, url = _serve(llm, users)
    outcomes: Counter = Counter()
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def user(i: int) -> None:
        r = random.Random(i)
        with httpx.Client(base_url=url, timeout=120) as client:
            while time.monotonic() < stop:
                what = _one(client, r)
                with lock:
                    outcomes[what] += 1

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    samples = [(0.0, rss_bytes())]
    while any(t.is_alive() for t in threads):
        time.sleep(min(SAMPLE_S, max(0.1, t0 + len(samples) * SAMPLE_S - time.monotonic())))
        if time.monotonic() - t0 >= len(samples) * SAMPLE_S:
            samples.append((round(time.monotonic() - t0, 1), rss_bytes()))
    samples.append((round(time.monotonic() - t0, 1), rss_bytes()))
    active = server.scheduler.load["active"]
    uv.should_exit = True
    server.scheduler.close()
    return _summary(seconds, users, outcomes, samples, warmup if warmup is not None else min(60.0, seconds / 5), active)


def _summary(seconds, users, outcomes: Counter, samples: list, warmup: float, active: int) -> dict:
    after = [rss for t, rss in samples if t >= warmup] or [samples[-1][1]]
    base, end = statistics.median(after[:3]), statistics.median(after[-3:])
    return {"seconds": seconds, "users": users, "requests": sum(outcomes.values()), "ok": outcomes["ok"],
            "failed": outcomes["failed"], "lost": outcomes["lost"], "slots_held_at_end": active,
            "warmup_s": warmup, "rss_samples": [{"t": t, "rss_bytes": rss} for t, rss in samples],
            "rss_after_warmup_bytes": base, "rss_end_bytes": end, "rss_growth_after_warmup": round(end / base - 1, 4)}
