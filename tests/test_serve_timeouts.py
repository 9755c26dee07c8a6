"""Connections whose request never arrives whole are answered 408 and closed (issue 24, item 3);
they never hold the server, and time spent answering does not count."""
import json
import socket
import time

import pytest

import hymoe
from hymoe.default_model import ensure_default_model
from test_serve import LiveServer, _chat

TIMEOUT = 1.0
BRISK = 0.1  # a deadline short enough that any machine answers 400 tokens in many of them


def _server(request_timeout: float) -> LiveServer:
    llm = hymoe.load(ensure_default_model(), dtype="float32", progress=False, max_context=512)
    return LiveServer(llm, request_timeout=request_timeout, max_batch=4, max_queue=8)


@pytest.fixture(scope="module")
def quick():
    s = _server(TIMEOUT)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def brisk():
    s = _server(BRISK)
    yield s
    s.stop()


def _send_and_wait(server, data: bytes, wait: float = 6.0) -> tuple[bytes, float]:
    """Send data, then read until the server closes: what it said, and after how long."""
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.settimeout(wait)
        t0 = time.monotonic()
        if data:
            s.sendall(data)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
        return got, time.monotonic() - t0


@pytest.mark.parametrize("data", [b"", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n",
                                  b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: 100\r\n\r\n{\"prompt\": \"And"])
def test_an_unfinished_request_is_answered_408_and_closed(quick, data):
    got, seconds = _send_and_wait(quick, data)
    assert got.startswith(b"HTTP/1.1 408") and b"did not arrive in time" in got
    assert TIMEOUT * 0.9 <= seconds < TIMEOUT + 3


def test_half_open_connections_do_not_stall_others(quick):
    idle = [socket.create_connection(("127.0.0.1", quick.port)) for _ in range(30)]
    for s in idle:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")  # never finished
    try:
        t0 = time.monotonic()
        assert _chat(quick.client(), "And God said", max_tokens=4).choices[0].message.content
        assert time.monotonic() - t0 < TIMEOUT  # served at once, not after the stragglers time out
    finally:
        for s in idle:
            s.close()


def test_time_spent_answering_does_not_count(brisk):
    """A reply that takes several deadlines to compute comes back whole, on a kept-alive connection twice.
    The deadline is brisk's, not quick's: a fast machine answers 400 tokens of the demo model in about
    a second, so against quick's the reply would not outlast it and the test would prove nothing."""
    client = brisk.client()
    for _ in range(2):
        t0 = time.monotonic()
        out = _chat(client, "In the beginning", max_tokens=400)
        assert out.usage.completion_tokens == 400 and time.monotonic() - t0 > 3 * BRISK


@pytest.mark.parametrize("raw, status", [
    (b"GARBAGE\r\n\r\n", 400),  # not HTTP: was uvicorn's plain-text 400
    (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: upgrade, close\r\nUpgrade: websocket\r\n\r\n", 200),  # no
    # route is a WebSocket: was a plain-text 400 from the websockets protocol, which has no request deadline
    (b"POST /v1/chat/completions/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", 404),
    # was a bodiless 307 to the path without the slash
])
def test_odd_http_gets_a_json_answer(quick, raw, status):
    got, _ = _send_and_wait(quick, raw)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status) and b"content-type: application/json" in head.lower()
    answer = json.loads(body)
    assert answer["data"][0]["id"] == "hymoe-demo" if status == 200 else answer["error"]["message"]
