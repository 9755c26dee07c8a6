"""OpenAI API: /v1/models, /v1/chat/completions, /v1/completions (streaming SSE and not)."""
from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request as HttpRequest
from fastapi.responses import JSONResponse

from hymoe.serve import structured
from hymoe.serve.logprobs import Formatter
from hymoe.serve.protocol import ApiError, ChatBody, CompletionBody, new_id, parse_body, sse, stream

router = APIRouter()


def _server(http: HttpRequest):
    return http.app.state.server


@router.get("/v1/models")
async def models(http: HttpRequest):
    s = _server(http)
    return {"object": "list", "data": [{"id": s.model_name, "object": "model", "created": s.created,
                                        "owned_by": "hymoe"}]}


@router.get("/v1/models/{name}")
async def model(name: str, http: HttpRequest):
    s = _server(http)
    s.check_model(name)
    return {"id": s.model_name, "object": "model", "created": s.created, "owned_by": "hymoe"}


def _prepare(s, body, plan: structured.ToolPlan | None = None):
    s.check_model(body.model)
    if body.n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    params = s.params(body.max_completion_tokens or body.max_tokens, body.temperature, body.top_p, body.seed,
                      body.stop)
    params.logprobs = body.logprobs_k()
    # a forced tool call's grammar wins over response_format
    params.grammar = (plan and plan.grammar(s.llm)) or structured.openai_grammar(s.llm, body.response_format)
    return params


class _Reply:
    """One response's id, object names and chunk shapes; kind: 'chat' or 'text'."""

    def __init__(self, s, kind: str, body):
        self.s, self.kind, self.created = s, kind, int(time.time())
        self.rid = new_id("chatcmpl" if kind == "chat" else "cmpl")
        self.obj = "chat.completion" if kind == "chat" else "text_completion"
        self.lp = Formatter(s.llm.tokenizer, kind) if body.logprobs_k() is not None else None

    def logprobs(self, entries: list) -> dict | None:
        return self.lp(entries) if self.lp is not None else None

    def chunk(self, text: str | None, finish: str | None, first: bool = False, delta: dict | None = None,
              entries: list = ()) -> dict:
        lp = self.logprobs(list(entries)) if entries else None  # chunks without tokens carry none
        if self.kind == "chat":
            delta = delta or ({"role": "assistant", "content": ""} if first else ({"content": text} if text else {}))
            choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": lp, "finish_reason": finish}
        return self.wrap([choice], ".chunk" if self.kind == "chat" else "")

    def wrap(self, choices: list, suffix: str = "") -> dict:
        return {"id": self.rid, "object": self.obj + suffix, "created": self.created, "model": self.s.model_name,
                "choices": choices}


async def _stream(s, http, req, queue, reply: _Reply, plan: structured.ToolPlan, include_usage: bool):
    """The SSE chunks of one streamed reply; each carries the log-probabilities of its tokens."""
    tools = structured.ToolStream(plan)
    if reply.kind == "chat":
        yield sse(reply.chunk(None, None, first=True))
    async for ev, data in s.events(req, queue, http):
        if ev == "text":
            text = tools.feed(data["text"])  # held back while it may be a tool call
            if text or (reply.lp is not None and data.get("logprobs")):
                yield sse(reply.chunk(text, None, entries=data.get("logprobs", ())))
            for delta in tools.openai_deltas():
                yield sse(reply.chunk(None, None, delta=delta))
        elif ev == "done":
            rest, calls = tools.finish()
            if rest:
                yield sse(reply.chunk(rest, None))
            for delta in tools.openai_deltas(is_done=True, calls=calls):
                yield sse(reply.chunk(None, None, delta=delta))
            entries = data.get("logprobs", ()) if reply.lp is not None else ()
            yield sse(reply.chunk(None, "tool_calls" if calls else data["finish_reason"], entries=entries))
            if include_usage:
                yield sse({**reply.wrap([], ".chunk"), "usage": data["usage"]})
        else:
            yield sse({"error": {"message": data["message"], "type": "server_error"}})
    yield "data: [DONE]\n\n"


async def _run(s, http, ids, params, body, kind: str, plan: structured.ToolPlan | None = None):
    """kind: 'chat' or 'text'. Streams SSE chunks or returns one JSON object."""
    req, queue = s.start(ids, params)
    plan = plan or structured.ToolPlan(None)
    reply = _Reply(s, kind, body)
    if body.stream:
        return stream(_stream(s, http, req, queue, reply, plan, bool((body.stream_options or {}).get("include_usage"))))
    content, done = await s.collect(req, queue, http)
    if done is None:  # the client went away
        return JSONResponse({}, status_code=499)
    content, calls = plan.parse(content)
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = structured.openai_calls(calls)
    lp = reply.logprobs(req.logprobs)
    choice = ({"index": 0, "message": message, "finish_reason": "tool_calls" if calls else done["finish_reason"],
               "logprobs": lp} if kind == "chat" else
              {"index": 0, "text": content, "finish_reason": done["finish_reason"], "logprobs": lp})
    return {**reply.wrap([choice]), "usage": done["usage"]}


@router.post("/v1/chat/completions")
async def chat_completions(http: HttpRequest):
    s, body = _server(http), await parse_body(http, ChatBody)
    plan = structured.ToolPlan(body.tools, body.tool_choice)
    params = await asyncio.to_thread(_prepare, s, body, plan)  # a schema may take a while to compile
    ids = await asyncio.to_thread(s.chat_ids, [m.model_dump() for m in body.messages], plan.tools)  # off the loop
    return await _run(s, http, ids, params, body, "chat", plan)


@router.post("/v1/completions")
async def completions(http: HttpRequest):
    s, body = _server(http), await parse_body(http, CompletionBody)
    params = await asyncio.to_thread(_prepare, s, body)  # a schema may take a while to compile
    if isinstance(body.prompt, str):
        if not body.prompt:
            raise ApiError(400, "'prompt' must not be empty", param="prompt")
        ids = await asyncio.to_thread(s.llm.tokenizer.encode, body.prompt)
    else:
        ids = list(body.prompt)
        if not ids or any(not 0 <= i < s.llm.config.vocab_size for i in ids):
            raise ApiError(400, "'prompt' token ids must be non-empty and inside the vocabulary", param="prompt")
    return await _run(s, http, ids, params, body, "text")
