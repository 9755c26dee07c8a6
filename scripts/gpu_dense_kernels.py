"""Candidates for the dense part's quantized matmul on the GPU, timed on DeepSeek-V3's shapes with
Q4_K weights (issue 19 item 1: choose by measurement):

    python scripts/gpu_dense_kernels.py [--tokens 1,128] [--json FILE]

- dequant: hymoe today (layers/linear.py): the blocks dequantized by torch ops at each call, then matmul;
- int4pack: torch's int4 weight-only matmul (tinygemm) on the same blocks as codes, scales and zeros
  (quant/int4pack.py's Int4PackMatmul, the engine's `--gpu-dense-kernel int4pack`);
- bf16: a plain bf16 matmul of the dequantized weight (3.6x the memory): the bound to compare with.
Each: median ms per call, GB/s of the weight bytes it holds, and the error against gguf-py's values.
Without CUDA it runs the same on the CPU at reduced sizes (torch's CPU int4 matmul), to check the script.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hymoe.bench.experts import random_experts  # noqa: E402
from hymoe.layers.linear import QuantLinear  # noqa: E402
from hymoe.quant.int4pack import Int4PackMatmul  # noqa: E402

SHAPES = {  # name: (in, out) of DeepSeek-V3's dense linears
    "q_a": (7168, 1536), "q_b": (1536, 24576), "kv_a": (7168, 576), "o": (16384, 7168),
    "shared_up": (7168, 2048), "shared_down": (2048, 7168), "head": (7168, 129280)}


def _timed(fn, cuda: bool, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def one_shape(name: str, k: int, n: int, tokens: list[int], device, reps: int) -> list[dict]:
    raw = random_experts("Q4_K", 1, n, k, seed=len(name)).view(n, -1)
    layer = QuantLinear(k, n, "Q4_K", raw.to(device))
    want_w = layer.dequantized(torch.float32)  # gguf-py's values (torch_dequant is checked against it)
    dense = want_w.to(torch.bfloat16)
    candidates = {"dequant": layer, "bf16": lambda x: F.linear(x, dense)}
    try:
        candidates["int4pack"] = Int4PackMatmul(raw.to(device), k)  # what --gpu-dense-kernel int4pack runs
    except Exception as e:  # not in this torch or on this device: recorded
        candidates["int4pack"] = e
    rows = []
    for t in tokens:
        x = torch.randn(t, k, device=device).bfloat16()
        want = x.float() @ want_w.T
        for cand, fn in candidates.items():
            row = {"shape": name, "in": k, "out": n, "tokens": t, "kernel": cand}
            try:
                if isinstance(fn, Exception):
                    raise fn
                got = fn(x).float()
                row["rel_error"] = round(((got - want).abs().max() / want.abs().max()).item(), 5)
                row["ms"] = round(_timed(lambda: fn(x), device.type == "cuda", reps), 4)
                row["weight_gbps"] = round(raw.numel() / row["ms"] / 1e6, 1)  # the Q4_K bytes' rate
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="1,128")
    ap.add_argument("--shapes", help="comma list of " + ", ".join(SHAPES) + " (default: all)")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    names = args.shapes.split(",") if args.shapes else list(SHAPES)
    rows = []
    for name in names:
        k, n = SHAPES[name]
        if not cuda:  # a check of the script: the same shapes at an eighth of the rows
            n = max(256, n // 8 // 256 * 256)
        rows += one_shape(name, k, n, [int(t) for t in args.tokens.split(",")], device, 20 if cuda else 3)
    for r in rows:
        got = f"{r['ms']:.3f} ms, {r['weight_gbps']:.0f} GB/s, error {r['rel_error']:.4f}" if "ms" in r else r["error"]
        print(f"{r['shape']:<12} {r['in']:>6} -> {r['out']:<7} T={r['tokens']:<4} {r['kernel']:<9} {got}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name() if cuda else "cpu",
                                               "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
