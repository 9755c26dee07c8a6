"""The HTTP server: OpenAI routes (/v1/...), Ollama routes (/api/...), and a chat page at /.

Requests become engine Sequences; the engine thread's events cross into asyncio through a
queue per request. A client that goes away cancels its request (its KV slot is freed at the next
step). Errors use OpenAI's error JSON with a 4xx code; the server keeps serving.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException

from hymoe.engine.sampler import SamplingParams
from hymoe.errors import HymoeError
from hymoe.engine.engine_thread import EngineThread, QueueFull
from hymoe.engine.sequence import Sequence

PAGE = Path(__file__).with_name("page.html")


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict | None = None):
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ---- OpenAI request bodies (unknown fields are accepted and ignored, as OpenAI-compatible servers do)

class ChatMessage(BaseModel):
    role: str
    content: str | list[dict[str, Any]] | None = None


class SamplingFields(BaseModel):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(default=1, ge=1)


class ChatBody(SamplingFields):
    messages: list[ChatMessage]


class CompletionBody(SamplingFields):
    prompt: str | list[int]


async def parse_body(http: HttpRequest, model: type[BaseModel]):
    """The JSON body as `model`, whatever Content-Type the client sent (curl users often send none)."""
    raw = await http.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "Request body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or None
        raise ApiError(400, f"Invalid request: {where or 'body'}: {first.get('msg', 'invalid value')}",
                       param=where) from None


class Server:
    def __init__(self, llm, model_name: str, api_key: str | None = None, max_batch: int = 8,
                 max_queue: int = 64, default_max_tokens: int = 256):
        self.llm, self.model_name, self.api_key = llm, model_name, api_key
        self.default_max_tokens = default_max_tokens
        self.scheduler = EngineThread(llm, max_batch=max_batch, max_queue=max_queue)
        self.created = int(time.time())

    # ---- shared by both APIs

    def check_model(self, name: str | None) -> None:
        if name not in (None, "", self.model_name, f"{self.model_name}:latest"):
            raise ApiError(404, f"The model '{name}' does not exist; this server has '{self.model_name}'",
                           "model_not_found", "model")

    def chat_ids(self, messages: list[dict]) -> list[int]:
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
        try:
            return self.llm.tokenizer.apply_chat_template(flat)
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
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        req = self.llm.sequence(ids, params, lambda kind, data: loop.call_soon_threadsafe(queue.put_nowait, (kind, data)))
        if len(ids) >= self.llm.max_context:
            raise ApiError(400, f"The prompt has {len(ids)} tokens; this server's context holds "
                                f"{self.llm.max_context}", "context_length_exceeded", "messages")
        try:
            self.scheduler.submit(req)
        except QueueFull as e:
            raise ApiError(503, str(e), "server_busy", headers={"Retry-After": "2"}) from None
        except HymoeError as e:
            raise ApiError(400, str(e)) from None
        return req, queue

    async def events(self, req: Sequence, queue: asyncio.Queue, http: HttpRequest):
        """Yield (kind, data) until done; cancel the request if the client goes away."""
        try:
            while True:
                try:
                    kind, data = await asyncio.wait_for(queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await http.is_disconnected():
                        return
                    continue
                yield kind, data
                if kind in ("done", "error"):
                    return
        finally:
            if req.finish_reason is None:
                self.scheduler.cancel(req)

    async def collect(self, req: Sequence, queue: asyncio.Queue, http: HttpRequest) -> tuple[str, dict | None]:
        """The whole answer of a non-streamed request: (text, done event data or None if the client left)."""
        text, done = [], None
        async for kind, data in self.events(req, queue, http):
            if kind == "text":
                text.append(data["text"])
            elif kind == "done":
                done = data
            else:
                raise ApiError(500, data["message"], "internal_error")
        return "".join(text), done


def build_app(server: Server) -> FastAPI:
    from hymoe.serve import ollama, openai_routes

    app = FastAPI(title="hymoe", docs_url=None, redoc_url=None)
    app.state.server = server

    @app.middleware("http")
    async def require_key(request: HttpRequest, call_next):
        if server.api_key and request.url.path.startswith(("/v1", "/api")):
            auth = request.headers.get("authorization", "")
            if auth != f"Bearer {server.api_key}":
                return JSONResponse(error_body("Incorrect or missing API key", "authentication_error",
                                               "invalid_api_key"), status_code=401)
        return await call_next(request)

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
    return app


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def stream(gen) -> StreamingResponse:
    return StreamingResponse(gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
