"""Placements compute the same model: cpu (experts in the calling thread) and hybrid (dense part on
its own device slot, routed experts submitted to the CPU pool and overlapped with the shared experts)."""
from __future__ import annotations

import pytest
import torch

import hymoe
from hymoe.errors import HymoeError
from hymoe.experts.native import NativeExperts, library
from hymoe.layers.moe import MoE

pytestmark = pytest.mark.skipif(library() is None, reason="the native CPU kernels are not built")
PROMPT = list(range(3, 40))


@pytest.mark.parametrize("name", ["deepseek_v3", "qwen2_moe", "mixtral"])
def test_cpu_and_hybrid_agree(tiny_model, name):
    hf_dir, _ = tiny_model(name)
    cpu = hymoe.load(hf_dir, dtype="float32", progress=False, placement="cpu")
    hybrid = hymoe.load(hf_dir, dtype="float32", progress=False, placement="hybrid")
    engines = {m.experts.engine.is_async for llm in (cpu, hybrid) for m in llm.model.modules()
               if isinstance(m, MoE) and isinstance(m.experts, NativeExperts)}
    assert engines == {False, True}  # hybrid really submits and overlaps; cpu runs in the caller
    assert (cpu.logits(PROMPT) - hybrid.logits(PROMPT)).abs().max().item() <= 1e-4
    assert cpu.generate(PROMPT, max_new_tokens=16, is_eos_ignored=True) == \
        hybrid.generate(PROMPT, max_new_tokens=16, is_eos_ignored=True)


def test_default_and_unknown_placements(tiny_model):
    hf_dir, _ = tiny_model("mixtral")
    llm = hymoe.load(hf_dir, progress=False)
    assert llm.placement == ("hybrid" if torch.cuda.is_available() else "cpu")
    with pytest.raises(HymoeError, match="not available yet"):
        hymoe.load(hf_dir, progress=False, placement="layers:2")
    with pytest.raises(HymoeError, match="contradicts"):
        hymoe.load(hf_dir, progress=False, placement="cpu", device="cuda")


def test_bench_e2e_reports_each_placement(tiny_model):
    import json
    import subprocess
    import sys

    hf_dir, _ = tiny_model("qwen2_moe")
    r = subprocess.run([sys.executable, "-m", "hymoe.cli", "bench", "e2e", str(hf_dir), "--placement", "cpu,hybrid",
                        "--prompt-tokens", "16", "--gen-tokens", "4", "--json"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout.splitlines()[-1])
    assert [x["placement"] for x in rows] == ["cpu", "hybrid"]
    for x in rows:
        assert x["prefill_tokens_per_s"] > 0 and x["decode_tokens_per_s"] > 0 and 0 < x["cpu_busy"] <= 1.05
        assert x["decode_bound_tokens_per_s"] == pytest.approx(x["bandwidth_gbps"] * 1e9 / x["weight_bytes_per_token"],
                                                             rel=1e-2)
