"""What the OpenAI and Ollama routes share on the wire: request bodies, reading them, errors, SSE.

The route modules and app.py import from here, so no route module imports the app that includes it.
"""
from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import Request as HttpRequest
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, ValidationError, model_validator
from starlette.requests import ClientDisconnect


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict | None = None):
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ---- OpenAI request bodies (unknown fields are accepted and ignored, as OpenAI-compatible servers do)

SEED = dict(ge=-2**63, le=2**64 - 1)  # what torch.Generator.manual_seed takes
MAX_REQUEST_BYTES = 8 << 20  # a 128K-token prompt is under 1 MB of text


class ContentPart(BaseModel):
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_has_text(self):
        if self.type == "text" and self.text is None:
            raise ValueError("a text content part needs a string 'text'")
        return self


class ChatMessage(BaseModel):
    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's earlier calls, for the chat template
    tool_call_id: str | None = None  # a tool message answers this call
    name: str | None = None


class SamplingFields(BaseModel):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, **SEED)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(default=1, ge=1)
    response_format: dict[str, Any] | None = None


MAX_TOP_LOGPROBS = 20  # as OpenAI's chat API


class ChatBody(SamplingFields):
    messages: list[ChatMessage]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("'top_logprobs' needs 'logprobs' set to true")
        return self

    def logprobs_k(self) -> int | None:
        """What the engine is asked for: None, or how many alternatives per token."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionBody(SamplingFields):
    # one prompt (text or token ids) or a list of them; a list mixing the two is refused
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)  # OpenAI caps it at 5; vLLM at 20
    echo: bool = False  # the prompt's text (and with logprobs, its tokens') before each choice's

    def logprobs_k(self) -> int | None:
        return self.logprobs


# ---- Ollama request bodies (messages as OpenAI's)

class Options(BaseModel):
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, **SEED)
    num_predict: int | None = None
    stop: list[str] | None = None


class OllamaBody(BaseModel):
    model: str
    stream: bool = True
    options: Options = Field(default_factory=Options)
    format: str | dict[str, Any] | None = None  # "json" or a JSON schema: the output is constrained to it


class OllamaChat(OllamaBody):
    messages: list[ChatMessage]
    tools: list[dict[str, Any]] | None = None


class OllamaGenerate(OllamaBody):
    prompt: str
    system: str | None = None
    raw: bool = False


async def read_body(http: HttpRequest, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The body, refused with 413 past `limit` bytes before more than that is read."""
    declared = http.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"The request body holds {declared} bytes; this server takes up to {limit}")
    raw = bytearray()
    try:
        async for part in http.stream():
            raw += part
            if len(raw) > limit:
                raise ApiError(413, f"The request body holds more than {limit} bytes, the most this server takes")
    except ClientDisconnect:  # gone before its body arrived (or timed out: 408): no one to answer
        raise ApiError(400, "The client left before sending its whole body") from None
    return bytes(raw)


async def parse_body(http: HttpRequest, model: type[BaseModel]):
    """The JSON body as `model`, whatever Content-Type the client sent (curl users often send none)."""
    raw = await read_body(http, getattr(http.app.state, "max_request_bytes", MAX_REQUEST_BYTES))
    try:
        data = json.loads(raw)
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # refuses unpaired surrogates ("\ud800")
    except (json.JSONDecodeError, UnicodeDecodeError, UnicodeEncodeError):
        raise ApiError(400, "Request body is not valid JSON in UTF-8") from None
    except RecursionError:
        raise ApiError(400, "Request body is nested too deeply") from None
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
