"""Ollama API: /api/version, /api/chat, /api/generate (NDJSON streaming), as Open WebUI calls them."""
from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone

from fastapi import APIRouter, Request as HttpRequest
from fastapi.responses import StreamingResponse

from hymoe.serve import structured
from hymoe.serve.access import usage
from hymoe.serve.protocol import OllamaBody, OllamaChat, OllamaGenerate, parse_body

router = APIRouter()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


@router.get("/api/version")
async def version():
    from importlib.metadata import version as v

    return {"version": v("hymoe")}


def durations(req, t0: float) -> dict:
    """Ollama's counts and nanosecond timings. The model stays loaded, so load_duration is the time
    before the prompt's evaluation began: reading the request and waiting for a KV row."""
    now = time.perf_counter()
    admit = req.t_admit or now
    first = req.t_first or now
    done = req.t_done or now
    return {"total_duration": _ns(now - t0), "load_duration": _ns(admit - t0), "prompt_eval_count": len(req.prompt),
            "prompt_eval_duration": _ns(first - admit), "eval_count": len(req.token_ids),
            "eval_duration": _ns(done - first)}


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


async def _run(s, http, ids, body: OllamaBody, key: str, plan: structured.ToolPlan | None = None):
    o = body.options
    params = s.params(o.num_predict if o.num_predict and o.num_predict > 0 else None, o.temperature, o.top_p,
                      o.seed, o.stop)
    params.grammar = await asyncio.to_thread(structured.ollama_grammar, s.llm, body.format)  # off the loop
    plan = plan or structured.ToolPlan(None)
    req, queue = s.start(ids, params)

    def piece(text: str, calls: list[dict] | None = None) -> dict:
        body_ = {"role": "assistant", "content": text} if key == "message" else text
        if calls:
            body_["tool_calls"] = structured.ollama_calls(calls)
        return {"model": body.model, "created_at": _now(), key: body_, "done": False}

    def final(done: dict) -> dict:
        out = piece("")
        out.update(done=True, done_reason=done["finish_reason"], **durations(req, usage(http)["t0"]))
        return out

    if body.stream:
        async def gen():
            tools = structured.ToolStream(plan)
            async for ev, data in s.events(req, queue, http):
                if ev == "text":
                    if text := tools.feed(data["text"]):  # held back while it may be a tool call
                        yield json.dumps(piece(text)) + "\n"
                elif ev == "done":
                    rest, calls = tools.finish()
                    if rest or calls:
                        yield json.dumps(piece(rest, calls)) + "\n"
                    yield json.dumps(final(data)) + "\n"
                else:
                    yield json.dumps({"error": data["message"]}) + "\n"
        return StreamingResponse(gen(), media_type="application/x-ndjson")
    text, done = await s.collect(req, queue, http)
    out = final(done or {"finish_reason": "cancelled", "usage": req.usage()})
    content, calls = plan.parse(text)
    out[key] = piece(content or "", calls)[key] if key == "message" else text
    return out


@router.post("/api/chat")
async def chat(http: HttpRequest):
    s, body = http.app.state.server, await parse_body(http, OllamaChat)
    s.check_model(body.model)
    plan = structured.ToolPlan(body.tools)
    ids = await asyncio.to_thread(s.chat_ids, [m.model_dump() for m in body.messages], plan.tools)  # off the loop
    return await _run(s, http, ids, body, "message", plan)


@router.post("/api/generate")
async def generate(http: HttpRequest):
    s, body = http.app.state.server, await parse_body(http, OllamaGenerate)
    s.check_model(body.model)
    if not body.prompt:  # Ollama clients send an empty prompt to load a model
        return {"model": body.model, "created_at": _now(), "response": "", "done": True, "done_reason": "load",
                "load_duration": int(s.llm.load_seconds * 1e9)}
    if body.raw:
        ids = await asyncio.to_thread(s.llm.tokenizer.encode, body.prompt)
    else:
        msgs = ([{"role": "system", "content": body.system}] if body.system else []) + \
               [{"role": "user", "content": body.prompt}]
        ids = await asyncio.to_thread(s.chat_ids, msgs) if s.llm.tokenizer.has_chat_template else \
            await asyncio.to_thread(s.llm.tokenizer.encode, body.prompt)
    return await _run(s, http, ids, body, "response")
