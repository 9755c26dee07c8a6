"""Table: hymoe vs llama.cpp on GGUF files of the low-bit and older expert formats, quantized by
llama.cpp itself (tests/test_lowbit_llama_cpp.py's files): teacher-forced top-1 agreement over 300
positions and the largest logit difference, per architecture and file type.
Usage: python scripts/lowbit_agreement.py [--archs deepseek_v3,qwen3_moe]
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402

import hymoe  # noqa: E402
import llama_ref  # noqa: E402
from gguf_models import TEXT, make_gguf_model  # noqa: E402
from hymoe.convert import convert  # noqa: E402
from test_lowbit_llama_cpp import FTYPES, NEEDS_IMATRIX, expert_types  # noqa: E402


def compare(path, positions: int = 300) -> tuple[float, float]:
    ours = hymoe.load(path, dtype="float32", progress=False)
    ids = ours.tokenizer.encode(TEXT[5000:9000])[:positions]
    want = llama_ref.logits(llama_ref.load(path), ids)
    got = ours.logits(ids).numpy()
    return float((got.argmax(-1) == want.argmax(-1)).mean()), float(np.abs(got - want).max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="deepseek_v3,qwen3_moe")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    print("| architecture | file (experts) | made by | top-1 vs llama.cpp | max abs dlogit |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            d = Path(tmp) / arch
            make_gguf_model(arch, d / "hf", steps=100)
            f16 = convert(d / "hf", d / "F16.gguf", type="F16", progress=False)
            q8 = convert(d / "hf", d / "Q8_0.gguf", type="Q8_0", progress=False)
            files = []
            for name, (code, _) in FTYPES.items():
                llama_ref.quantize_file(f16, d / f"{name}.gguf", code)
                files.append((name, d / f"{name}.gguf", "llama_model_quantize"))
            for fmt in NEEDS_IMATRIX:
                path = llama_ref.with_quantized_experts(q8, f16, d / f"{fmt}.gguf", fmt)
                files.append((fmt, path, "ggml_quantize_chunk (rest Q8_0)"))
            for name, path, how in files:
                top1, dlogit = compare(path)
                kinds = "/".join(sorted(expert_types(path)))
                print(f"| {arch} | {name} ({kinds}) | {how} | {top1:.3f} | {dlogit:.4f} |", flush=True)


if __name__ == "__main__":
    main()
