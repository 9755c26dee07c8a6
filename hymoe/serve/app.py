"""The HTTP server: OpenAI routes (/v1/...), Ollama routes (/api/...), and a chat page at /.

Requests become engine Sequences; the engine thread's events cross into asyncio through a
queue per request. A client that goes away cancels its request (its KV slot is freed at the next
step). Errors use OpenAI's error JSON with a 4xx code; the server keeps serving.
"""
from __future__ import annotations

import asyncio
import hmac
import time
from pathlib import Path

from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from hymoe.engine.engine_thread import EngineThread, QueueFull
from hymoe.engine.sampler import SamplingParams
from hymoe.engine.sequence import Sequence
from hymoe.errors import HymoeError
from hymoe.serve import embeddings, metrics, ollama, ollama_models, openai_routes, structured
from hymoe.serve.access import RequestLog, count_sequence
from hymoe.serve.protocol import MAX_REQUEST_BYTES, ApiError, error_body

PAGE = Path(__file__).with_name("page.html")


class Server:
    def __init__(self, llm, model_name: str, api_key: str | None = None, max_batch: int = 8,
                 max_queue: int = 64, default_max_tokens: int = 256, max_request_bytes: int = MAX_REQUEST_BYTES,
                 quiet: bool = False):
        self.llm, self.model_name, self.api_key, self.quiet = llm, model_name, api_key, quiet
        self.max_request_bytes = max_request_bytes
        self.default_max_tokens = default_max_tokens
        self.scheduler = EngineThread(llm, max_batch=max_batch, max_queue=max_queue)
        self.metrics = metrics.Metrics(self.scheduler)
        self.created = int(time.time())

    # ---- shared by both APIs

    def check_model(self, name: str | None) -> None:
        if name not in (None, "", self.model_name, f"{self.model_name}:latest"):
            raise ApiError(404, f"The model '{name}' does not exist; this server has '{self.model_name}'",
                           "model_not_found", "model")

    def chat_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        if not messages:
            raise ApiError(400, "'messages' must not be empty", param="messages")
        flat = []
        for m in messages:
            content = m.get("content") or ""
            if isinstance(content, list):  # content parts: the text ones
                content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
            if m.get("role") not in ("system", "user", "assistant", "tool", "developer"):
                raise ApiError(400, f"unknown message role {m.get('role')!r}", param="messages")
            flat.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
            flat[-1].update({k: m[k] for k in ("tool_calls", "tool_call_id", "name") if m.get(k) is not None})
        tok = self.llm.tokenizer
        if tools and not tok.renders_tools:  # a template without tools: they go in a system message
            flat.insert(0, {"role": "system", "content": structured.describe_tools(tools)})
        try:
            return tok.apply_chat_template(structured.template_messages(flat), tools if tok.renders_tools else None)
        except HymoeError as e:
            raise ApiError(400, str(e), param="messages") from None

    def params(self, max_tokens, temperature, top_p, seed, stop) -> SamplingParams:
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "'stop' takes up to 4 non-empty strings", param="stop")
        return SamplingParams(max_new_tokens=max_tokens or self.default_max_tokens,
                              temperature=1.0 if temperature is None else temperature,
                              top_p=1.0 if top_p is None else top_p, seed=seed, stop=stops)

    def start(self, ids: list[int], params: SamplingParams) -> tuple[Sequence, asyncio.Queue]:
        reqs, queue = self.start_many([(ids, params)])
        return reqs[0], queue

    def start_many(self, jobs: list[tuple[list[int], SamplingParams]]) -> tuple[list[Sequence], asyncio.Queue]:
        """One request's sequences (n choices of each prompt), submitted together; the queue gets
        (index, kind, data). A later sequence of a prompt follows the first (its leader), so the
        prompt is read once and shared from the prefix cache."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        reqs, leaders = [], {}
        for i, (ids, params) in enumerate(jobs):
            if len(ids) >= self.llm.max_context:
                raise ApiError(400, f"The prompt has {len(ids)} tokens; this server's context holds "
                                    f"{self.llm.max_context}", "context_length_exceeded", "messages")
            put = (lambda i: lambda kind, data: loop.call_soon_threadsafe(queue.put_nowait, (i, kind, data)))(i)
            reqs.append(req := self.llm.sequence(ids, params, put))
            req.leader = leaders.get(tuple(ids))
            leaders.setdefault(tuple(ids), req)
        try:
            self.scheduler.submit(*reqs)
        except QueueFull as e:
            raise ApiError(503, str(e), "server_busy", headers={"Retry-After": "2"}) from None
        except HymoeError as e:
            raise ApiError(400, str(e)) from None
        return reqs, queue

    async def events(self, req: Sequence, queue: asyncio.Queue, http: HttpRequest):
        async for _, kind, data in self.events_many([req], queue, http):
            yield kind, data

    async def events_many(self, reqs: list[Sequence], queue: asyncio.Queue, http: HttpRequest):
        """Yield (index, kind, data) until each has ended; cancel the unfinished if the client goes
        away (looked at every second, also while events flow: a non-streamed client only waits)."""
        loop = asyncio.get_running_loop()
        checked, open_ = loop.time(), len(reqs)
        try:
            while open_:
                try:
                    i, kind, data = await asyncio.wait_for(queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    kind = None
                if loop.time() - checked >= 1.0:
                    checked = loop.time()
                    if await http.is_disconnected():
                        return
                if kind is None:
                    continue
                yield i, kind, data
                open_ -= kind in ("done", "error")
        finally:
            for req in reqs:
                if req.finish_reason is None:
                    self.scheduler.cancel(req)
                count_sequence(http, req, is_prompt_counted=req.leader is None)  # a shared prompt once

    async def collect(self, req: Sequence, queue: asyncio.Queue, http: HttpRequest) -> tuple[str, dict | None]:
        """The whole answer of a non-streamed request: (text, done event data or None if the client left)."""
        return (await self.collect_many([req], queue, http))[0]

    async def collect_many(self, reqs: list[Sequence], queue: asyncio.Queue,
                           http: HttpRequest) -> list[tuple[str, dict | None]]:
        texts, dones = [[] for _ in reqs], [None] * len(reqs)
        async for i, kind, data in self.events_many(reqs, queue, http):
            if kind == "text":
                texts[i].append(data["text"])
            elif kind == "done":
                dones[i] = data
            else:
                raise ApiError(500, data["message"], "internal_error")
        return [("".join(t), d) for t, d in zip(texts, dones)]


class RequireKey:
    """Bearer key on /v1 and /api, as plain ASGI: starlette's BaseHTTPMiddleware hides the client's
    disconnect from the routes (Request.is_disconnected never sees it), so a dropped request
    would keep computing until its end."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(("/v1", "/api")):
            # two keys are refused: a proxy in front and we might each check a different one
            sent = [v for k, v in scope["headers"] if k == b"authorization"]
            scheme, _, key = (sent[0] if len(sent) == 1 else b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(key.strip(), self.key):
                response = JSONResponse(error_body("Incorrect or missing API key", "authentication_error",
                                                   "invalid_api_key"), status_code=401)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def build_app(server: Server) -> FastAPI:
    # a path with a stray '/' is a JSON 404, not a bodiless 307 that API clients (httpx) do not follow
    app = FastAPI(title="hymoe", docs_url=None, redoc_url=None, redirect_slashes=False)
    app.state.server = server
    app.state.max_request_bytes = server.max_request_bytes

    if server.api_key:
        app.add_middleware(RequireKey, key=server.api_key)
    # outermost: refused keys are counted and logged too
    app.add_middleware(RequestLog, metrics=server.metrics, quiet=server.quiet)

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        kind = "invalid_request_error" if e.status < 500 else "server_error"
        return JSONResponse(error_body(e.message, kind, e.code, e.param), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        msg = "Request body is not valid JSON" if first.get("type") == "json_invalid" else \
            f"Invalid request: {where or 'body'}: {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body(msg, param=where), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        return JSONResponse(error_body(str(e.detail)), status_code=e.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text()

    app.include_router(openai_routes.router)
    app.include_router(ollama.router)
    app.include_router(ollama_models.router)
    app.include_router(embeddings.router)
    app.include_router(metrics.router)
    return app
