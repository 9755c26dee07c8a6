"""Embeddings: OpenAI's /v1/embeddings, Ollama's /api/embed and its legacy /api/embeddings.

A vector is the mean of the model's final hidden states over the input (after the last norm),
L2-normalized (LLM.embed): a generative model's states, not a trained embedding model's. Each
input is computed on its own, so a batch gives exactly the vectors of its inputs sent singly.
"""
from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request as HttpRequest
from pydantic import BaseModel

from hymoe.errors import HymoeError
from hymoe.serve.access import usage
from hymoe.serve.protocol import ApiError, parse_body

router = APIRouter()

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


class OpenAIEmbeddingBody(BaseModel):
    model: str
    input: Any
    encoding_format: str = "float"
    dimensions: int | None = None


class OllamaEmbedBody(BaseModel):
    model: str
    input: Any
    truncate: bool = True


class OllamaLegacyBody(BaseModel):
    model: str
    prompt: str


def _inputs(value, param: str, is_ids_allowed: bool) -> list[str | list[int]]:
    """A string, or a non-empty list of strings (or of token ids, or lists of them, for OpenAI)."""
    def is_ids(x):
        return isinstance(x, list) and bool(x) and all(isinstance(i, int) and not isinstance(i, bool) for i in x)

    if isinstance(value, str):
        items = [value]
    elif is_ids_allowed and is_ids(value):
        items = [value]
    elif isinstance(value, list) and value and all(isinstance(x, str) or (is_ids_allowed and is_ids(x)) for x in value):
        items = value
    else:
        kinds = "a string, a list of strings, or token ids" if is_ids_allowed else "a string or a list of strings"
        raise ApiError(400, f"'{param}' must be {kinds}, and not empty", param=param)
    if len(items) > MAX_INPUTS:
        raise ApiError(400, f"'{param}' holds {len(items)} inputs; the most is {MAX_INPUTS}", param=param)
    if any(isinstance(x, str) and not x for x in items):
        raise ApiError(400, f"'{param}' must not hold an empty string", param=param)
    return items


def _token_ids(llm, items: list[str | list[int]], param: str, truncate: bool) -> list[list[int]]:
    out = []
    for x in items:
        ids = llm.tokenizer.encode(x) if isinstance(x, str) else list(x)
        if truncate:
            ids = ids[: llm.max_context - 1]
        if not ids:
            raise ApiError(400, f"an input of '{param}' has no tokens", param=param)
        if len(ids) >= llm.max_context:
            raise ApiError(400, f"An input has {len(ids)} tokens; this server's context holds {llm.max_context}",
                           "context_length_exceeded", param)
        if any(not 0 <= i < llm.config.vocab_size for i in ids):
            raise ApiError(400, f"'{param}' token ids must be inside the vocabulary of {llm.config.vocab_size}",
                           param=param)
        out.append(ids)
    return out


async def _embed(http: HttpRequest, items, param: str, truncate: bool = False) -> tuple[list[np.ndarray], int]:
    """The vectors of items and their token count, computed off the event loop."""
    llm = http.app.state.server.llm

    def work():
        ids = _token_ids(llm, items, param, truncate)
        try:
            return [llm.embed(x).numpy() for x in ids], sum(map(len, ids))
        except HymoeError as e:
            raise ApiError(400, str(e), param=param) from None

    vectors, num_tokens = await asyncio.to_thread(work)
    usage(http)["prompt"] += num_tokens
    return vectors, num_tokens


@router.post("/v1/embeddings")
async def openai_embeddings(http: HttpRequest):
    s, body = http.app.state.server, await parse_body(http, OpenAIEmbeddingBody)
    s.check_model(body.model)
    if body.encoding_format not in ("float", "base64"):
        raise ApiError(400, "'encoding_format' is 'float' or 'base64'", param="encoding_format")
    if body.dimensions is not None and body.dimensions != s.llm.config.hidden_size:
        raise ApiError(400, f"this model's embeddings have {s.llm.config.hidden_size} dimensions",
                       param="dimensions")
    vectors, num_tokens = await _embed(http, _inputs(body.input, "input", True), "input")

    def encode(v: np.ndarray):  # base64: little-endian float32, as OpenAI sends it
        return base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" \
            else v.tolist()

    return {"object": "list", "model": s.model_name,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens}}


@router.post("/api/embed")
async def ollama_embed(http: HttpRequest):
    s, body = http.app.state.server, await parse_body(http, OllamaEmbedBody)
    s.check_model(body.model)
    t0 = usage(http)["t0"]
    # as Ollama: a too-long input is cut to the context unless truncate is false
    vectors, num_tokens = await _embed(http, _inputs(body.input, "input", False), "input", body.truncate)
    return {"model": body.model, "embeddings": [v.tolist() for v in vectors], "prompt_eval_count": num_tokens,
            "total_duration": int((time.perf_counter() - t0) * 1e9), "load_duration": 0}


@router.post("/api/embeddings")
async def ollama_embeddings(http: HttpRequest):
    s, body = http.app.state.server, await parse_body(http, OllamaLegacyBody)
    s.check_model(body.model)
    vectors, _ = await _embed(http, _inputs(body.prompt, "prompt", False), "prompt")
    return {"embedding": vectors[0].tolist()}
