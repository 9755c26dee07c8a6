"""Seeded fuzzing of model files (issue 24): mutated GGUF files and corrupted safetensors model
directories, loaded and decoded in a subprocess (tests/fuzz_files_worker.py). Each case must load
and decode, or be refused with a one-line HymoeError; never a signal, a hang or a traceback."""
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "fuzz_files_worker.py"
CASES = {"gguf": 600, "safetensors": 300}  # the survey: 479 GGUF files, 111 directories


@pytest.mark.parametrize("kind", list(CASES))
def test_mutated_model_files_load_or_are_refused_in_one_line(kind, gguf_model, tmp_path):
    hf_dir, gguf = gguf_model("mixtral", "Q4_K")  # a trained tiny model with a tokenizer, and its GGUF file
    source = gguf if kind == "gguf" else hf_dir
    count, seed = CASES[kind], 24
    out = subprocess.run([sys.executable, str(WORKER), kind, str(source), str(tmp_path), str(seed), str(count)],
                         capture_output=True, text=True, timeout=600)
    lines = out.stdout.splitlines()
    last = next((line for line in reversed(lines) if line.startswith("case ")), "no case")
    where = f"{kind} seed {seed}, {last}"
    assert out.returncode == 0 and "Traceback" not in out.stderr, f"{where}: exit {out.returncode}\n{out.stderr[-3000:]}"
    results = Counter("ok" if line == "ok" else "refused" for line in lines if not line.startswith("case "))
    assert sum(results.values()) == count, f"{where}: {results}"
    assert results["ok"] > 0 and results["refused"] > 0, results
    print(kind, dict(results))
