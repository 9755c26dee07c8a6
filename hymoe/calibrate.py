"""`hymoe calibrate`: routing statistics of a model over a text, for choosing GPU-resident experts.

Every token of the text passes through the model once (windows of --context tokens); each MoE
layer counts the tokens routed to each expert. `--gpu-experts N --expert-stats FILE` then keeps
each layer's N most used experts on the GPU instead of an even spread.
"""
from __future__ import annotations

import json
from pathlib import Path

from hymoe.errors import HymoeError
from hymoe.experts.counting import CountingExperts
from hymoe.layers.moe import MoE

STATS_FORMAT = "hymoe-routing-stats-1"


def moe_layers(model) -> dict[int, MoE]:
    """Layer index -> its MoE module."""
    return {i: layer.mlp for i, layer in enumerate(model.layers) if isinstance(layer.mlp, MoE)}


def calibrate(llm, ids: list[int], context: int = 512) -> dict:
    """Route ids through the model in windows; returns the statistics as written to the JSON file."""
    if len(ids) < 1:
        raise HymoeError("the calibration text has no tokens")
    layers = moe_layers(llm.model)
    counters = {i: CountingExperts(m.experts, llm.config.num_experts) for i, m in layers.items()}
    for i, m in layers.items():
        m.experts = counters[i]
    try:
        for start in range(0, len(ids), context):
            llm.logits(ids[start:start + context])
    finally:
        for i, m in layers.items():
            m.experts = counters[i].wrapped
    return {"format": STATS_FORMAT, "num_experts": llm.config.num_experts, "tokens": len(ids),
            "num_experts_per_tok": llm.config.num_experts_per_tok,
            "layers": {str(i): c.counts.tolist() for i, c in counters.items()}}


def load_stats(path: str | Path, model) -> dict[int, list[int]]:
    """Layer index -> routed-token count per expert, checked against the model."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise HymoeError(f"{path}: no such file (write one with `hymoe calibrate`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HymoeError(f"{path}: not a JSON file") from None
    if not isinstance(d, dict) or d.get("format") != STATS_FORMAT:
        raise HymoeError(f"{path}: not routing statistics from `hymoe calibrate`")
    want = {str(i) for i in moe_layers(model)}
    if d["num_experts"] != model.cfg.num_experts or set(d["layers"]) != want:
        raise HymoeError(f"{path}: statistics for {len(d['layers'])} MoE layers of {d['num_experts']} experts; "
                         f"this model has {len(want)} of {model.cfg.num_experts}")
    return {int(i): counts for i, counts in d["layers"].items()}


def hottest(counts: list[int], n: int) -> list[int]:
    """The n most used experts (ties: the lower id), ascending."""
    return sorted(sorted(range(len(counts)), key=lambda e: (-counts[e], e))[:n])
