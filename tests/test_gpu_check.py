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
    assert d["total_seconds"] < d["budget_s"]


@needs_native
def test_a_failing_run_costs_only_itself(tmp_path):
    fault = "hybrid=crash;cpu+eager=raise;hybrid+eager=hang"
    d = _run(tmp_path, "--skip", "setup,gpu_tests,plan", "--variants", "cpu,hybrid,cpu+eager,hybrid+eager,layers:2",
             "--run-limit", "8", env={"HYMOE_GPU_CHECK_FAULT": fault})
    status = {v: r["status"] for v, r in d["e2e"].items()}
    assert status == {"cpu": "ok", "hybrid": "crashed", "cpu+eager": "failed", "hybrid+eager": "crashed",
                      "layers:2": "ok"}
    assert "ran past 8" in d["e2e"]["hybrid+eager"]["error"]
    assert "fault injected" in d["e2e"]["cpu+eager"]["error"]
