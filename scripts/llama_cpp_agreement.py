"""Table: hymoe vs llama.cpp (llama-cpp-python) on the same GGUF files, per architecture and type.

Builds the test suite's briefly trained tiny models (tests/gguf_models.py), converts each with
`hymoe convert`, and reports teacher-forced top-1 agreement over 300 positions, the largest logit
difference, identical tokenization, and hymoe's GGUF against its own HF directory.
Usage: python scripts/llama_cpp_agreement.py [--types F16,Q8_0,Q4_K]
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import hymoe  # noqa: E402
import llama_ref  # noqa: E402
from gguf_models import CONFIGS, SAMPLE, TEXT, make_gguf_model  # noqa: E402
from hymoe.convert import convert  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="F32,F16,BF16,Q8_0,Q6_K,Q5_K,Q4_K,Q4_0,TQ2_0")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    print("| architecture | type | file MB | top-1 vs llama.cpp | max abs dlogit vs llama.cpp | top-1 vs HF dir | tokens identical |")
    print("|---|---|---|---|---|---|---|")
    for name in CONFIGS:
        d = Path(tempfile.mkdtemp())
        make_gguf_model(name, d / "hf", steps=100)
        hf = hymoe.load(d / "hf", dtype="float32", progress=False)
        ids = hf.tokenizer.encode(TEXT[5000:9000])[:300]
        want_hf = hf.logits(ids).argmax(-1)
        for typ in args.types.split(","):
            path = convert(d / "hf", d / f"{typ}.gguf", type=typ, progress=False)
            ours = hymoe.load(path, dtype="float32", progress=False)
            ref = llama_ref.load(path)
            got = ours.logits(ids)
            lref = llama_ref.logits(ref, ids)
            agree = (got.argmax(-1).numpy() == lref.argmax(-1)).mean()
            diff = abs(got.numpy() - lref).max()
            same = all(ours.tokenizer.encode(t) == ref.tokenize(t.encode(), add_bos=True, special=False)
                       for t in (SAMPLE, TEXT[:4000]))
            print(f"| {ours.config.model_type} | {typ} | {path.stat().st_size / 1e6:.1f} | {agree:.1%} | {diff:.3f} "
                  f"| {(got.argmax(-1) == want_hf).float().mean().item():.1%} | {same} |", flush=True)


if __name__ == "__main__":
    main()
