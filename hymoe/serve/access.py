"""Every request, once it has ended: counted in the metrics and, unless quiet, one line on stderr.

Plain ASGI, as RequireKey (app.py), so a route still sees its client go away. The routes add their
tokens to a dict this puts in the request's scope (`usage(http)`); a streamed answer's tokens are
all in when its body ends, which is when the line is written.
"""
from __future__ import annotations

import json
import sys
import time

_KEY = "hymoe.usage"


def new_usage() -> dict:
    return {"t0": time.perf_counter(), "prompt": 0, "generated": 0, "ttft": []}


def usage(http) -> dict:
    """The current request's tally (a fresh one outside RequestLog, as in a bare app)."""
    return http.scope.setdefault(_KEY, new_usage())


def count_sequence(http, seq, is_prompt_counted: bool = True) -> None:
    """A generation request's sequence has ended (or was cancelled): its tokens and first-token time."""
    tally = usage(http)
    tally["prompt"] += len(seq.prompt) if is_prompt_counted else 0
    tally["generated"] += len(seq.token_ids)
    if seq.t_first is not None:
        tally["ttft"].append(seq.t_first - seq.t_submit)


def line(method: str, path: str, status: int, tally: dict, seconds: float) -> str:
    rate = tally["generated"] / seconds if seconds > 0 else 0.0
    path = json.dumps(path[:200])[1:-1]  # a client's %0A must not start a line of its own
    return (f"hymoe: {method} {path} {status} prompt={tally['prompt']} generated={tally['generated']} "
            f"{rate:.1f} tok/s {seconds:.3f}s")


class RequestLog:
    """The metrics' route: the template of the route that answered ("/v1/models/{name}", as the
    router leaves it in the scope), else "other": a scanner's thousand paths would otherwise make a
    thousand metric series."""

    def __init__(self, app, metrics, quiet: bool = False):
        self.app, self.metrics, self.quiet = app, metrics, quiet

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        tally = scope[_KEY] = new_usage()
        status = 500  # unless a response starts: an exception the app did not answer

        async def watch(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            seconds = time.perf_counter() - tally["t0"]
            path = scope["path"]
            self.metrics.record(getattr(scope.get("route"), "path", None) or "other", status, tally)
            if not self.quiet:
                print(line(scope["method"], path, status, tally, seconds), file=sys.stderr, flush=True)
