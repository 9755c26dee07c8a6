"""Routing statistics (`hymoe calibrate`), GPU-resident experts chosen from them, and expert deferral,
each against transformers' own DeepSeek-V3 modules."""
from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
import torch

import hymoe
from hymoe.calibrate import calibrate
from hymoe.errors import HymoeError
from hymoe.experts.native import library
from hymoe.layers.moe import MoE

pytestmark = pytest.mark.skipif(library() is None, reason="the native CPU kernels are not built")
IDS = [(i * 37 + 11) % 256 for i in range(200)]
PROMPT = IDS[:40]


def hf_moe_layers(hf):
    return {i: layer.mlp for i, layer in enumerate(hf.model.layers) if hasattr(layer.mlp, "experts")}


def test_calibrate_counts_what_transformers_routes(tiny_model):
    hf_dir, hf = tiny_model("deepseek_v3")
    llm = hymoe.load(hf_dir, dtype="float32", progress=False, placement="cpu")
    stats = calibrate(llm, IDS, context=64)
    want = {}

    def count(i):
        def hook(module, args, out):  # the router returns (logits, topk_weights, topk_indices)
            want[i] = want.get(i, 0) + torch.bincount(out[2].reshape(-1), minlength=16)
        return hook

    handles = [m.gate.register_forward_hook(count(i)) for i, m in hf_moe_layers(hf).items()]
    try:
        with torch.no_grad():
            for start in range(0, len(IDS), 64):
                hf(torch.tensor([IDS[start:start + 64]]))
    finally:
        for h in handles:
            h.remove()
    assert stats["tokens"] == len(IDS) and set(stats["layers"]) == {str(i) for i in want}
    for i, counts in want.items():
        assert stats["layers"][str(i)] == counts.tolist(), i
        assert sum(counts.tolist()) == len(IDS) * 4


def test_gpu_experts_follow_statistics_and_budget(tiny_model, tmp_path):
    hf_dir, _ = tiny_model("deepseek_v3")
    stats_file = tmp_path / "stats.json"
    r = subprocess.run([sys.executable, "-m", "hymoe.cli", "calibrate", str(hf_dir), "--prompts", str(hf_dir / "config.json"),
                        "--out", str(stats_file), "--context", "32"], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "no tokenizer" in r.stderr  # tiny models carry none: one clear line
    cpu = hymoe.load(hf_dir, dtype="float32", progress=False, placement="cpu")
    stats = calibrate(cpu, IDS, context=64)
    stats_file.write_text(json.dumps(stats))
    llm = hymoe.load(hf_dir, dtype="float32", progress=False, placement="hybrid", gpu_experts=3,
                     expert_stats=stats_file)
    for i, layer in enumerate(llm.model.layers):
        if isinstance(layer.mlp, MoE):
            counts = stats["layers"][str(i)]
            hot = (layer.mlp.experts.local >= 0).nonzero().flatten().tolist()
            assert len(hot) == 3 and min(counts[e] for e in hot) >= max(
                c for e, c in enumerate(counts) if e not in hot), i
    assert (llm.logits(PROMPT) - cpu.logits(PROMPT)).abs().max().item() <= 1e-4
    # a budget: 3 x 64 x 32 float32 values = 24,576 bytes per expert, two MoE layers -> 2 each in 100 KB
    budget = hymoe.load(hf_dir, dtype="float32", progress=False, placement="hybrid", gpu_experts="0.1MB")
    assert [int((m.experts.local >= 0).sum()) for m in budget.model.modules() if isinstance(m, MoE)] == [2, 2]
    with pytest.raises(HymoeError, match="holds no expert"):
        hymoe.load(hf_dir, progress=False, placement="hybrid", gpu_experts="0.01MB")
    stats["num_experts"] = 8
    stats_file.write_text(json.dumps(stats))
    with pytest.raises(HymoeError, match="this model has 2 of 16"):
        hymoe.load(hf_dir, progress=False, placement="hybrid", gpu_experts=2, expert_stats=stats_file)
    with pytest.raises(HymoeError, match="give --gpu-experts"):
        hymoe.load(hf_dir, progress=False, placement="hybrid", expert_stats=stats_file)


def _defer_in_transformers(hf, k, monkeypatch):
    """Patch transformers' own MoE modules: a token's k lowest-weighted experts are computed with
    the layer's weights and added at the next MoE layer's output (the last MoE layer defers none)."""
    layers = list(hf_moe_layers(hf).values())
    state = {"pending": None}

    def forward(self, hidden):
        _, w, ids = self.gate(hidden)  # [T, K]
        flat = hidden.view(-1, hidden.shape[-1])
        is_later = torch.zeros_like(ids, dtype=torch.bool).scatter_(1, w.argsort(-1)[:, :k], True)
        if self is layers[-1]:
            is_later[:] = False
        now = self.experts(flat, ids, w * ~is_later)  # a zero weight drops a pair's contribution
        out = now.view_as(hidden) + self.shared_experts(hidden)
        if state["pending"] is not None:
            out = out + state["pending"].view_as(hidden)
        state["pending"] = None if self is layers[-1] else self.experts(flat, ids, w * is_later)
        return out

    for m in layers:
        monkeypatch.setattr(m, "forward", types.MethodType(forward, m))


@pytest.mark.parametrize("k", [1, 3])
def test_expert_deferral_matches_transformers_with_deferral(tiny_model, monkeypatch, k):
    hf_dir, hf = tiny_model("deepseek_v3")
    with torch.no_grad():
        plain = hf(torch.tensor([PROMPT])).logits[0]
    _defer_in_transformers(hf, k, monkeypatch)
    with torch.no_grad():
        want = hf(torch.tensor([PROMPT])).logits[0]
    assert (want - plain).abs().max().item() > 1e-2  # deferral really changes this model's output
    outs = {}
    for placement in ("cpu", "hybrid"):
        llm = hymoe.load(hf_dir, dtype="float32", progress=False, placement=placement, defer_experts=k)
        outs[placement] = llm.logits(PROMPT)
        assert (outs[placement] - want).abs().max().item() <= 1e-4, placement
    # decode (one token per step) defers across layers the same way as prefill, row by row
    greedy = [llm.generate(PROMPT, max_new_tokens=8, is_eos_ignored=True)]
    ids = list(PROMPT)
    for _ in range(8):
        with torch.no_grad():
            ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
    assert greedy[0] == ids[len(PROMPT):]


def test_defer_experts_bounds(tiny_model):
    hf_dir, _ = tiny_model("deepseek_v3")
    with pytest.raises(HymoeError, match="between 1 and 3"):
        hymoe.load(hf_dir, progress=False, placement="cpu", defer_experts=4)
