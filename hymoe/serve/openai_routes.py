"""OpenAI API: /v1/models, /v1/chat/completions, /v1/completions (streaming SSE and not)."""
from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request as HttpRequest
from fastapi.responses import JSONResponse

from hymoe.serve import structured
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
    # a forced tool call's grammar wins over response_format
    params.grammar = (plan and plan.grammar(s.llm)) or structured.openai_grammar(s.llm, body.response_format)
    return params


async def _run(s, http, ids, params, body, kind: str, plan: structured.ToolPlan | None = None):
    """kind: 'chat' or 'text'. Streams SSE chunks or returns one JSON object."""
    req, queue = s.start(ids, params)
    plan = plan or structured.ToolPlan(None)
    rid, created = new_id("chatcmpl" if kind == "chat" else "cmpl"), int(time.time())
    obj = "chat.completion" if kind == "chat" else "text_completion"

    def chunk(text: str | None, finish: str | None, first: bool = False, delta: dict | None = None) -> dict:
        if kind == "chat":
            delta = delta or ({"role": "assistant", "content": ""} if first else ({"content": text} if text else {}))
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        return {"id": rid, "object": obj + (".chunk" if kind == "chat" else ""), "created": created,
                "model": s.model_name, "choices": [choice]}

    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))

        async def gen():
            tools = structured.ToolStream(plan)
            if kind == "chat":
                yield sse(chunk(None, None, first=True))
            async for ev, data in s.events(req, queue, http):
                if ev == "text":
                    if text := tools.feed(data["text"]):  # held back while it may be a tool call
                        yield sse(chunk(text, None))
                    for delta in tools.openai_deltas():
                        yield sse(chunk(None, None, delta=delta))
                elif ev == "done":
                    rest, calls = tools.finish()
                    if rest:
                        yield sse(chunk(rest, None))
                    for delta in tools.openai_deltas(is_done=True, calls=calls):
                        yield sse(chunk(None, None, delta=delta))
                    yield sse(chunk(None, "tool_calls" if calls else data["finish_reason"]))
                    if include_usage:
                        yield sse({"id": rid, "object": obj + ".chunk", "created": created, "model": s.model_name,
                                   "choices": [], "usage": data["usage"]})
                else:
                    yield sse({"error": {"message": data["message"], "type": "server_error"}})
            yield "data: [DONE]\n\n"

        return stream(gen())

    content, done = await s.collect(req, queue, http)
    if done is None:  # the client went away
        return JSONResponse({}, status_code=499)
    content, calls = plan.parse(content)
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = structured.openai_calls(calls)
    choice = ({"index": 0, "message": message, "finish_reason": "tool_calls" if calls else done["finish_reason"],
               "logprobs": None} if kind == "chat" else
              {"index": 0, "text": content, "finish_reason": done["finish_reason"], "logprobs": None})
    return {"id": rid, "object": obj, "created": created, "model": s.model_name, "choices": [choice],
            "usage": done["usage"]}


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
