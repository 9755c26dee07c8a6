"""scripts/gpu_check.py, the one prepared run for a lent GPU machine, checked here on the CPU: its
dry run (toy sizes, GPU parts skipping) must complete every step, and one run's crash, hang or
error must cost only that run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hymoe.experts import native

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
needs_native = pytest.mark.skipif(native.library() is None, reason="native kernels not built")


def _run(tmp_path, *args, env=None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    r = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out", tmp_path, *args], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| run | graphs |" in r.stdout
    assert (tmp_path / "gpu_check.md").read_text().strip() == r.stdout.strip()
    return json.loads((tmp_path / "gpu_check.json").read_text())


@needs_native
def test_dry_run_runs_every_step(tmp_path):
    # pytest -m gpu is left out: it would run this suite's collection inside this test
    d = _run(tmp_path, "--skip", "gpu_tests")
    assert d["dry_run"] and d["sizes"]["shape"] == "deepseek-v3-tiny"
    assert d["steps"]["setup"]["status"] == "ok" and d["steps"]["plan"]["status"] == "ok"
    assert set(d["plan"]) >= {"cpu", "hybrid", "layers:2", "hot_experts_bytes"}
    assert d["plan"]["layers:2"]["devices"]["gpu"] > d["plan"]["hybrid"]["devices"]["gpu"] > 0
    assert list(d["e2e"]) == d["sizes"]["variants"]
    assert all(r["status"] == "ok" for r in d["e2e"].values()), d["e2e"]
    assert d["e2e"]["hybrid"]["rows"][0]["decode_tokens_per_s"] > 0
    assert d["e2e"]["prefill"]["rows"][0]["prompt_tokens"] == 512
    assert len(d["steps"]["e2e"]["children"]) == 1  # one set of weights for every run
    assert d["steps"]["dense_kernels"]["status"] == "ok"
    dense = {(r["shape"], r["kernel"]): r for r in d["dense_kernels"]["rows"]}
    for shape in ("q_a", "head"):  # each candidate timed, and right against gguf-py's values
        for kernel in ("dequant", "int4pack", "bf16"):
            assert dense[shape, kernel]["ms"] > 0 and dense[shape, kernel]["rel_error"] < 0.01
    assert d["total_seconds"] < d["budget_s"]


@needs_native
def test_a_failing_run_costs_only_itself(tmp_path):
    fault = "hybrid=crash;cpu+eager=raise;hybrid+eager=hang"
    d = _run(tmp_path, "--skip", "setup,gpu_tests,plan", "--variants", "cpu,hybrid,cpu+eager,hybrid+eager,layers:2",
             "--run-limit", "20", env={"HYMOE_GPU_CHECK_FAULT": fault})
    status = {v: r["status"] for v, r in d["e2e"].items()}
    assert status == {"cpu": "ok", "hybrid": "crashed", "cpu+eager": "failed", "hybrid+eager": "crashed",
                      "layers:2": "ok"}
    assert "ran past 20" in d["e2e"]["hybrid+eager"]["error"]
    assert "fault injected" in d["e2e"]["cpu+eager"]["error"]


def test_the_table_of_a_gpu_run():
    """The branches only a GPU run takes (memory beside the plan, graphs refused, targets), on a
    made-up result: a typo there must not cost the device run its table."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    gib = 2**30

    def run(placement, decode, graphs, peak, notes=()):
        row = {"prefill_tokens_per_s": 100.0, "decode_tokens_per_s": decode, "experts_busy": 0.93, "cpu_busy": 0.5,
               "gpu_busy": 0.2, "cuda_graphs": graphs, "decode_bandwidth_fraction": 0.6}
        return {"status": "ok", "rows": [row], "memory": {"gpu_base_bytes": 0, "gpu_peak_bytes": peak},
                "seconds": 10.0, "notes": list(notes)}

    out = {"dry_run": False, "sizes": {"shape": "deepseek-v3", "layers": 12, "gpu_layers": 5, "gpu_experts": 32,
                                       "experts_type": "Q4_K", "dense_type": "Q4_K", "prompt_tokens": 128,
                                       "gen_tokens": 64},
           "device": {"gpu": "NVIDIA H200, 143771 MiB", "cpu_count": 16, "torch": "2.11.0+cu130"},
           "plan": {"cpu": {"devices": {"cpu": 70 * gib}}, "hybrid": {"devices": {"gpu": 3 * gib, "cpu": 65 * gib}},
                    "layers:5": {"devices": {"gpu": 85 * gib, "cpu": 43 * gib}}, "hot_experts_bytes": 30 * gib},
           "e2e": {"cpu": run("cpu", 10.0, False, 0), "hybrid": run("hybrid", 40.0, True, int(3.1 * gib)),
                   "layers:5": run("layers:5", 12.0, True, int(86 * gib)),
                   "hybrid+gpu32": run("hybrid+gpu32", 45.0, True, 36 * gib,
                                       ["hymoe: CUDA graphs off, decoding eagerly: routed experts that cannot be "
                                        "captured (hot experts)"]),
                   "prefill": {"status": "ok", "rows": [{"prompt_tokens": 2048, "gpu": "cuda:0",
                                                         "cpu_experts_tokens_per_s": 300.0,
                                                         "gpu_stream_tokens_per_s": 900.0}],
                               "memory": {"gpu_peak_bytes": 8 * gib}, "seconds": 30.0},
                   "layers:5+eager": {"status": "skipped", "reason": "time budget"}},
           "steps": {"gpu_tests": {"status": "ok", "seconds": 40, "summary": "15 passed", "failed": []}},
           "total_seconds": 400.0}
    gc.summarize(out)
    table = gc.markdown(out)
    rows = {r["variant"]: r for r in out["table"]}
    assert rows["hybrid"]["graphs"] == "on" and rows["hybrid+gpu32"]["graphs"] == "refused"
    assert rows["hybrid+gpu32"]["gpu_planned_bytes"] == 33 * gib
    # hybrid's fastest run counts (hot experts here); CPU busy comes from the fastest one with graphs
    assert out["targets"]["hybrid_over_cpu"] == {"value": 4.5, "target": 3.5, "met": True, "variant": "hybrid+gpu32"}
    assert out["targets"]["cpu_busy_with_graphs"]["variant"] == "hybrid"
    assert out["targets"]["hybrid_over_layers"]["met"] is True and out["targets"]["cpu_busy_with_graphs"]["met"]
    worst = out["targets"]["gpu_memory_vs_plan_worst"]  # hybrid 3.3% over its plan, hot experts 9%
    assert worst["value"] == round(36 / 33, 3) and not worst["met"]
    assert "| hybrid | on | 100.0 | 40.00 | 93% |" in table and "skipped: time budget" in table
    assert "streamed to cuda:0 (GPU prefill on) 900 tok/s" in table
