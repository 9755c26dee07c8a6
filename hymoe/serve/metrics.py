"""/health and Prometheus /metrics.

Each server has its own CollectorRegistry (prometheus_client's global one would mix the servers a
test process starts). Counters and the time-to-first-token histogram are updated once per request,
when it ends (access.py); queue depth and KV use are read from the engine at scrape time.
"""
from __future__ import annotations

from fastapi import APIRouter, Request as HttpRequest
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

router = APIRouter()

# seconds: from a few ms (a short prompt on a GPU) to a long prompt on a CPU
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _EngineLoad:
    """A collector of the engine's state of the moment: nothing to update, nothing to go stale."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        load = self.engine.load
        gauges = [("num_requests_waiting", "Requests submitted and not yet running", load["waiting"]),
                  ("num_requests_running", "Sequences holding a KV row", load["active"]),
                  ("kv_cache_blocks_used", "KV blocks held by running sequences", load["kv_blocks_used"]),
                  ("kv_cache_blocks_cached", "KV blocks kept only for prefix reuse", load["kv_blocks_cached"]),
                  ("kv_cache_blocks_total", "KV blocks in the pool", load["kv_blocks_total"]),
                  ("kv_cache_positions_used", "Positions written by running sequences", load["kv_positions_used"]),
                  ("kv_cache_positions_total", "Positions the KV pool holds",
                   load["kv_blocks_total"] * load["kv_block_size"]),
                  ("kv_cache_usage_ratio", "Fraction of KV blocks held by running sequences",
                   load["kv_blocks_used"] / max(1, load["kv_blocks_total"]))]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(f"hymoe_{name}", doc, value=value)


class Metrics:
    def __init__(self, engine):
        self.registry = CollectorRegistry()
        self.requests = Counter("hymoe_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.prompt_tokens = Counter("hymoe_prompt_tokens", "Prompt tokens of ended requests, embeddings included",
                                     registry=self.registry)
        self.generation_tokens = Counter("hymoe_generation_tokens", "Tokens generated", registry=self.registry)
        self.ttft = Histogram("hymoe_time_to_first_token_seconds", "From submission to the first sampled token",
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.registry.register(_EngineLoad(engine))

    def record(self, route: str, status: int, usage: dict) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.prompt_tokens.inc(usage["prompt"])
        self.generation_tokens.inc(usage["generated"])
        for seconds in usage["ttft"]:
            self.ttft.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@router.get("/health")
async def health(http: HttpRequest):
    s = http.app.state.server
    if not s.scheduler.thread.is_alive():
        return Response('{"status": "engine stopped"}', status_code=503, media_type="application/json")
    load = s.scheduler.load
    return {"status": "ok", "model": s.model_name, "running": load["active"], "waiting": load["waiting"]}


@router.get("/metrics")
async def metrics(http: HttpRequest):
    return Response(http.app.state.server.metrics.render(), media_type=CONTENT_TYPE_LATEST)
