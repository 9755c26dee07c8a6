"""Every GPU check of the dense part in block formats, in one run on a lent GPU machine:

    python scripts/gpu_check.py [--out DIR]

1. the GPU tests (pytest -m gpu);
2. a 4-layer full-width DeepSeek-V3 (random weights: Q4_K experts, Q4_K dense) under hybrid, with
   and without CUDA graphs, and its GPU memory (torch's peak);
3. the memory plan of a full DeepSeek-V3 Q4_K_M file (headers only) at 8K context.
Prints one JSON object and writes it to DIR/gpu_check.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device")
    out: dict = {"device": torch.cuda.get_device_name(0)}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", str(ROOT / "tests")],
                           capture_output=True, text=True)
    out["gpu_tests"] = tests.stdout.strip().splitlines()[-1] if tests.stdout else tests.stderr[-500:]

    from hymoe.bench.e2e import bench_e2e
    from hymoe.bench.synthetic import random_model

    torch.cuda.reset_peak_memory_stats()
    model = random_model("deepseek-v3", 4, "Q4_K", dense_format="Q4_K")
    out["deepseek_v3_4_layers"] = bench_e2e(model, ["hybrid", "hybrid+eager"], 512, 64)
    out["deepseek_v3_4_layers_peak_gpu_bytes"] = torch.cuda.max_memory_allocated()

    from hymoe.inspect import inspect_model
    from test_quantized_dense import _sparse_deepseek_v3

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "DeepSeek-V3-Q4_K_M.gguf"
        _sparse_deepseek_v3(path)
        out["deepseek_v3_full_8k_devices"] = inspect_model(path, "hybrid", "bfloat16", 8192)["devices"]
    text = json.dumps(out, indent=1)
    print(text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(text)


if __name__ == "__main__":
    main()
