"""Seeded fuzzing of the HTTP server (issue 24): `hymoe serve` runs in a subprocess and meets
malformed bodies on every route, bodies of the wrong shape, broken headers and raw garbage over
sockets. Every answer must be a 4xx with a JSON error, or a 200 where the input was in fact
valid: never a 5xx, a hang or a traceback; afterwards the server still answers properly."""
import json
import random
import socket
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest

SEED = 24
VALID = {  # route -> a valid body that decodes a few tokens
    "/v1/chat/completions": {"model": "hymoe-demo", "messages": [{"role": "user", "content": "Amen"}], "max_tokens": 3},
    "/v1/completions": {"model": "hymoe-demo", "prompt": "And God said", "max_tokens": 3},
    "/api/chat": {"model": "hymoe-demo", "messages": [{"role": "user", "content": "Amen"}], "stream": False,
                  "options": {"num_predict": 3}},
    "/api/generate": {"model": "hymoe-demo", "prompt": "And God said", "stream": False, "options": {"num_predict": 3}},
    "/v1/embeddings": {"model": "hymoe-demo", "input": ["Amen", "And God said"], "encoding_format": "float"},
    "/api/embed": {"model": "hymoe-demo", "input": "Amen", "truncate": True},
}
ODD = [None, True, -1, 0, 2**63, -2**64, 1e308, -0.5, "", "x" * 5000, "\ud800", [], [1, "a"], {}, {"a": {"b": []}},
       [[[[[]]]]], "NaN"]


@pytest.fixture(scope="module")
def server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "hymoe.cli", "serve", "--port", str(port), "--max-context", "256",
                             "--max-batch", "4", "--request-timeout", "2", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url, port, proc
    proc.terminate()
    proc.wait(timeout=30)


def json_cases(r: random.Random) -> list[tuple[str, bytes]]:
    """(route, body): a field of a valid body replaced, removed, nested deeper or added."""
    cases = []
    for route, body in VALID.items():
        paths = [(k,) for k in body] + [(k, sub) for k, v in body.items() if isinstance(v, dict) for sub in v] + \
                [("messages", 0, "role"), ("messages", 0, "content")] * ("messages" in body)
        for path in paths:
            for value in ODD + ["<drop>"]:
                doc = json.loads(json.dumps(body))
                node = doc
                for key in path[:-1]:
                    node = node[key]
                if value == "<drop>":
                    node.pop(path[-1], None) if isinstance(node, dict) else None
                else:
                    node[path[-1]] = value
                cases.append((route, json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")))
        extra = dict(body, stream=r.choice([True, "yes", 3]), n=r.choice([0, 2, -1]), logprobs=r.choice([True, 7]))
        cases.append((route, json.dumps(extra).encode()))
    return cases


def garbage_cases(r: random.Random) -> list[tuple[str, bytes]]:
    """(route, body): bytes that are not the JSON object a route takes."""
    bodies = [b"", b"{", b"[]", b'"text"', b"42", b"null", b"\xff\xfe\x00", b'{"model": "hymoe-demo", ',
              b"[" * 5000 + b"]" * 5000, b'{"a":' * 2000 + b"1" + b"}" * 2000, b'{"messages": NaN}']
    bodies += [bytes(r.randrange(256) for _ in range(r.randrange(1, 200))) for _ in range(12)]
    return [(route, body) for route in VALID for body in bodies]


RAW = [b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", b"POST /v1/completions HTTP/1.1\r\n\r\n",
       b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n{}{}{}",
       b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
       b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n{}",
       b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
       b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
       b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /v1/models%00 HTTP/1.1\r\nHost: x\r\n\r\n",
       b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: \xff\r\n\r\n",
       b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"]


def raw_status(port: int, data: bytes) -> int | None:
    """The status the server answers raw bytes with (None: it closed without one)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(10)
        s.sendall(data)
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
                if b"\r\n" in got:
                    break
        except ConnectionResetError:
            return None
    return int(got.split()[1]) if got.startswith(b"HTTP/1.") else None


def test_malformed_requests_never_crash_or_500(server):
    url, port, proc = server
    r = random.Random(SEED)
    statuses: Counter = Counter()
    with httpx.Client(base_url=url, timeout=30) as client:
        for route, body in json_cases(r) + garbage_cases(r):
            ctype = r.choice(["application/json"] * 4 + ["text/plain", "application/x-www-form-urlencoded", ""])
            resp = client.post(route, content=body, headers={"content-type": ctype} if ctype else {})
            statuses[resp.status_code] += 1
            assert resp.status_code < 500, (route, body[:200], resp.status_code, resp.text[:300])
            if resp.status_code >= 400:
                assert "error" in resp.json(), (route, body[:200], resp.text[:300])
        for path in ["/v1/models/%2e%2e", "/api/tags?x=" + "y" * 10_000, "/v1/models/" + "z" * 3000, "/nope"]:
            statuses[client.get(path).status_code] += 1
    for data in RAW:
        status = raw_status(port, data)
        statuses[status or "closed"] += 1
        assert status is None or 400 <= status < 500 or status == 200, (data[:80], status)
    print(dict(statuses), sum(statuses.values()), "requests")
    assert sum(statuses.values()) >= 450  # the survey sent 316
    assert proc.poll() is None  # the server lives
    ok = httpx.post(url + "/v1/completions", json=VALID["/v1/completions"], timeout=60)
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"] is not None
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err[-3000:]
