"""OpenAI API: /v1/models, /v1/chat/completions, /v1/completions (streaming SSE and not)."""
from __future__ import annotations

import asyncio
import dataclasses
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


# Choices of one request: n of each prompt (several prompts: legacy completions). Each one holds
# a KV row while it runs and the request's replies are kept whole, so both are bounded.
MAX_N = 16
MAX_CHOICES = 64


def _prepare(s, body, plan: structured.ToolPlan | None = None):
    s.check_model(body.model)
    if body.n > MAX_N:
        raise ApiError(400, f"'n' must be at most {MAX_N}", param="n")
    params = s.params(body.max_completion_tokens or body.max_tokens, body.temperature, body.top_p, body.seed,
                      body.stop)
    params.logprobs = body.logprobs_k()
    # a forced tool call's grammar wins over response_format
    params.grammar = (plan and plan.grammar(s.llm)) or structured.openai_grammar(s.llm, body.response_format)
    return params


def _jobs(s, prompts: list[list[int]], params, n: int) -> list[tuple[list[int], object]]:
    """(prompt, params) of each choice, prompt-major as OpenAI indexes them; choice j of a prompt
    samples with seed + j, so n seeded choices differ and a request sent again repeats them."""
    if len(prompts) * n > MAX_CHOICES:
        raise ApiError(400, f"{len(prompts)} prompts x n={n} choices: at most {MAX_CHOICES} per request", param="n")
    blocks = s.scheduler.scheduler.blocks
    if len(prompts) * n * params.max_new_tokens > blocks.num_blocks * blocks.block_size:
        raise ApiError(400, f"n={n} x max_tokens={params.max_new_tokens} (x {len(prompts)} prompts) is more than "
                            f"this server's KV pool holds ({blocks.num_blocks * blocks.block_size} positions)",
                       param="n")
    seeded = (lambda j: params if params.seed is None or j == 0 else
              dataclasses.replace(params, seed=(params.seed + j) % 2**64))
    return [(ids, seeded(j)) for ids in prompts for j in range(n)]


def _usage(reqs: list) -> dict:
    """Each prompt counted once (its siblings share it), every choice's completion."""
    leaders = [r for r in reqs if r.leader is None]
    prompt, completion = sum(len(r.prompt) for r in leaders), sum(len(r.token_ids) for r in reqs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(r.reused for r in leaders)}}


class _Reply:
    """One response's id, object names and chunk shapes; kind: 'chat' or 'text'."""

    def __init__(self, s, kind: str, body, count: int, echo: list[tuple[str, list]] | None = None):
        self.s, self.kind, self.created = s, kind, int(time.time())
        self.echo = echo  # per choice: the prompt's text and its tokens' logprob entries, to lead its text
        self.rid = new_id("chatcmpl" if kind == "chat" else "cmpl")
        self.obj = "chat.completion" if kind == "chat" else "text_completion"
        # one per choice: a completion's text_offset runs on along its own text
        self.lp = [Formatter(s.llm.tokenizer, kind) for _ in range(count)] if body.logprobs_k() is not None else None

    def logprobs(self, i: int, entries: list) -> dict | None:
        return self.lp[i](entries) if self.lp is not None else None

    def chunk(self, i: int, text: str | None, finish: str | None, first: bool = False, delta: dict | None = None,
              entries: list = ()) -> dict:
        lp = self.logprobs(i, list(entries)) if entries else None  # chunks without tokens carry none
        if self.kind == "chat":
            delta = delta or ({"role": "assistant", "content": ""} if first else ({"content": text} if text else {}))
            choice = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}
        else:
            choice = {"index": i, "text": text or "", "logprobs": lp, "finish_reason": finish}
        return self.wrap([choice], ".chunk" if self.kind == "chat" else "")

    def wrap(self, choices: list, suffix: str = "") -> dict:
        return {"id": self.rid, "object": self.obj + suffix, "created": self.created, "model": self.s.model_name,
                "choices": choices}


async def _stream(s, http, reqs, queue, reply: _Reply, plan: structured.ToolPlan, include_usage: bool):
    """The SSE chunks of one streamed reply, each for one choice (its index); each carries the
    log-probabilities of its tokens."""
    tools = [structured.ToolStream(plan) for _ in reqs]
    for i in range(len(reqs)):
        if reply.kind == "chat":
            yield sse(reply.chunk(i, None, None, first=True))
        elif reply.echo is not None:
            yield sse(reply.chunk(i, reply.echo[i][0], None, entries=reply.echo[i][1]))
    async for i, ev, data in s.events_many(reqs, queue, http):
        if ev == "text":
            text = tools[i].feed(data["text"])  # held back while it may be a tool call
            if text or (reply.lp is not None and data.get("logprobs")):
                yield sse(reply.chunk(i, text, None, entries=data.get("logprobs", ())))
            for delta in tools[i].openai_deltas():
                yield sse(reply.chunk(i, None, None, delta=delta))
        elif ev == "done":
            rest, calls = tools[i].finish()
            if rest:
                yield sse(reply.chunk(i, rest, None))
            for delta in tools[i].openai_deltas(is_done=True, calls=calls):
                yield sse(reply.chunk(i, None, None, delta=delta))
            entries = data.get("logprobs", ()) if reply.lp is not None else ()
            yield sse(reply.chunk(i, None, "tool_calls" if calls else data["finish_reason"], entries=entries))
        else:
            yield sse({"error": {"message": data["message"], "type": "server_error"}})
    if include_usage and all(r.finish_reason not in (None, "cancelled") for r in reqs):
        yield sse({**reply.wrap([], ".chunk"), "usage": _usage(reqs)})
    yield "data: [DONE]\n\n"


def _choice(reply: _Reply, i: int, req, content: str, done: dict, plan: structured.ToolPlan) -> dict:
    head, head_entries = reply.echo[i] if reply.echo is not None else ("", [])
    lp = reply.logprobs(i, head_entries + req.logprobs)
    if reply.kind == "text":
        return {"index": i, "text": head + content, "finish_reason": done["finish_reason"], "logprobs": lp}
    content, calls = plan.parse(content)
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = structured.openai_calls(calls)
    return {"index": i, "message": message, "finish_reason": "tool_calls" if calls else done["finish_reason"],
            "logprobs": lp}


async def _run(s, http, jobs, body, kind: str, plan: structured.ToolPlan | None = None, echo: list | None = None):
    """kind: 'chat' or 'text'. Streams SSE chunks or returns one JSON object."""
    reqs, queue = s.start_many(jobs)
    plan = plan or structured.ToolPlan(None)
    reply = _Reply(s, kind, body, len(reqs), echo)
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return stream(_stream(s, http, reqs, queue, reply, plan, include_usage))
    results = await s.collect_many(reqs, queue, http)
    if any(done is None for _, done in results):  # the client went away
        return JSONResponse({}, status_code=499)
    choices = [_choice(reply, i, req, text, done, plan) for i, (req, (text, done)) in enumerate(zip(reqs, results))]
    return {**reply.wrap(choices), "usage": _usage(reqs)}


@router.post("/v1/chat/completions")
async def chat_completions(http: HttpRequest):
    s, body = _server(http), await parse_body(http, ChatBody)
    plan = structured.ToolPlan(body.tools, body.tool_choice)
    params = await asyncio.to_thread(_prepare, s, body, plan)  # a schema may take a while to compile
    ids = await asyncio.to_thread(s.chat_ids, [m.model_dump() for m in body.messages], plan.tools)  # off the loop
    return await _run(s, http, _jobs(s, [ids], params, body.n), body, "chat", plan)


def _listed(prompt) -> list:
    """The prompts of a legacy completion, as a list: one string or token-id list is one prompt."""
    return prompt if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)) else [prompt]


def _prompt_ids(s, prompt) -> list[list[int]]:
    """The prompts of a legacy completion: a string, token ids, or a non-empty list of either."""
    out = []
    for p in _listed(prompt):
        if isinstance(p, str):
            if not p:
                raise ApiError(400, "'prompt' must not be empty", param="prompt")
            out.append(s.llm.tokenizer.encode(p))
        elif not p or any(not 0 <= i < s.llm.config.vocab_size for i in p):
            raise ApiError(400, "'prompt' token ids must be non-empty and inside the vocabulary", param="prompt")
        else:
            out.append(list(p))
    return out


@router.post("/v1/completions")
async def completions(http: HttpRequest):
    s, body = _server(http), await parse_body(http, CompletionBody)
    params = await asyncio.to_thread(_prepare, s, body)  # a schema may take a while to compile
    prompts = await asyncio.to_thread(_prompt_ids, s, body.prompt)  # tokenizing is off the loop
    jobs = _jobs(s, prompts, params, body.n)
    echo = None
    if body.echo:  # a forward pass over each prompt where its logprobs are asked for: off the loop
        heads = await asyncio.to_thread(_echo, s, body.prompt, prompts, body.logprobs)
        echo = [head for head in heads for _ in range(body.n)]
    return await _run(s, http, jobs, body, "text", echo=echo)


def _echo(s, prompt, prompts: list[list[int]], k: int | None) -> list[tuple[str, list]]:
    """Per prompt: its text as sent (token ids decoded) and, with logprobs, its tokens' entries."""
    texts = [p if isinstance(p, str) else s.llm.tokenizer.decode(ids) for p, ids in zip(_listed(prompt), prompts)]
    return [(text, s.llm.prompt_logprobs(ids, k) if k is not None else []) for text, ids in zip(texts, prompts)]
