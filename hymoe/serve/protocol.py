"""What the OpenAI and Ollama routes share on the wire: request bodies, reading them, errors, SSE.

The route modules and app.py import from here, so no route module imports the app that includes it.
"""
from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import Request as HttpRequest
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, ValidationError


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


# ---- Ollama request bodies (messages as OpenAI's)

class Options(BaseModel):
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    num_predict: int | None = None
    stop: list[str] | None = None


class OllamaBody(BaseModel):
    model: str
    stream: bool = True
    options: Options = Field(default_factory=Options)


class OllamaChat(OllamaBody):
    messages: list[ChatMessage]


class OllamaGenerate(OllamaBody):
    prompt: str
    system: str | None = None
    raw: bool = False


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


# ---- OpenAI responses: ids and server-sent events

def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def stream(gen) -> StreamingResponse:
    return StreamingResponse(gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
