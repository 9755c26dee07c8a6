"""Quality table: perplexity of the demo model's held-out text per GGUF quantization, in hymoe and llama.cpp.

Each row converts the bundled demo model with `hymoe convert`, then scores the held-out text with
hymoe (`hymoe.eval.ppl`, the code behind `hymoe eval ppl`) and with llama.cpp's logits
(llama-cpp-python) over the very same windows. Prints a Markdown table, then one JSON line.
Usage: python scripts/quality_table.py [--context 256] [--max-tokens 8192]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import hymoe  # noqa: E402
import llama_ref  # noqa: E402
from hymoe.convert import convert  # noqa: E402
from hymoe.default_model import ensure_default_model  # noqa: E402
from hymoe.eval.ppl import llm_scorer, perplexity  # noqa: E402

# (label, --type, --experts-type)
ROWS = [("BF16", "BF16", None), ("Q8_0", "Q8_0", None), ("Q6_K", "Q6_K", None), ("Q4_K", "Q4_K", None),
        ("Q4_0", "Q4_0", None), ("experts TQ2_0, rest Q8_0", "Q8_0", "TQ2_0"),
        ("experts IQ1_S, rest Q8_0", "Q8_0", "IQ1_S")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=None)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    model_dir = ensure_default_model()
    text = (model_dir / "heldout.txt").read_text()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, typ, experts in ROWS:
            path = convert(model_dir, Path(tmp) / f"{label.replace(' ', '_').replace(',', '')}.gguf", type=typ,
                           experts_type=experts, progress=False)
            llm = hymoe.load(path, dtype="float32", progress=False)
            ids = llm.tokenizer.encode(text)[: args.max_tokens]
            ppl, n = perplexity(llm_scorer(llm), ids, args.context)
            ref, _ = perplexity(llama_ref.scorer(llama_ref.load(path, n_ctx=args.context)), ids, args.context)
            results.append({"format": label, "file_mb": round(path.stat().st_size / 1e6, 2), "ppl": round(ppl, 4),
                            "llama_cpp_ppl": round(ref, 4), "tokens": n})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    base = results[0]["ppl"]
    print("| format | file MB | hymoe ppl | change vs BF16 | llama.cpp ppl | hymoe vs llama.cpp |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['format']} | {r['file_mb']} | {r['ppl']:.3f} | {(r['ppl'] / base - 1):+.2%} | "
              f"{r['llama_cpp_ppl']:.3f} | {(r['ppl'] / r['llama_cpp_ppl'] - 1):+.2%} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
