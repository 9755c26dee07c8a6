"""Run `hymoe bench experts` over shapes x formats x batches; JSON lines on stdout, for the table in docs/kernels.md.

    python scripts/bench_table.py > table.jsonl
    python scripts/bench_table.py --only TQ1_0,Q4_K > some.jsonl     # some formats only
    python scripts/bench_table.py --batches 1 > decode.jsonl          # some batch sizes only
    python scripts/bench_table.py --shapes deepseek-v3 > ds.jsonl     # some shapes only
    python scripts/bench_table.py --markdown table.jsonl [more.jsonl ...]   # the table in docs/kernels.md (medians)
"""
import json
import statistics
import subprocess
import sys

SHAPES = ["qwen3-30b-a3b", "deepseek-v3"]
LOWBIT = ("Q2_K", "Q3_K", "IQ4_XS", "IQ4_NL", "Q4_1", "Q5_0", "Q5_1", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS",
          "IQ3_S", "IQ1_M")
RUNS = ([("native", f) for f in ("Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "IQ1_S", "TQ2_0", "TQ1_0", "BF16")]
        + [("torch", "BF16")]
        + [("llama.cpp", f) for f in ("Q8_0", "Q4_K", "IQ1_S", "TQ2_0", "TQ1_0")]  # the peer, on the same blocks
        # llama.cpp's low-bit and older formats (csrc/lowbit.h), each next to the peer
        + [(b, f) for f in LOWBIT for b in ("native", "llama.cpp")])
BATCHES = "1,8,32,128,512"


def run(only: list[str] | None = None, batches: str = BATCHES, shapes: list[str] = SHAPES) -> None:
    for shape in shapes:
        for backend, fmt in RUNS:
            if only and fmt not in only:
                continue
            cmd = ["hymoe", "bench", "experts", "--shape", shape, "--format", fmt, "--batch", batches,
                   "--backend", backend, "--max-gb", "4", "--json"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                print(json.dumps({"shape": shape, "format": fmt, "backend": backend, "error": r.stderr.strip()[-300:]}))
                continue
            rows = json.loads(r.stdout.strip().splitlines()[-1])
            for row in rows if isinstance(rows, list) else [rows]:
                print(json.dumps(row), flush=True)
            print(r.stderr.strip(), file=sys.stderr, flush=True)


def markdown(paths: list[str]) -> None:
    """One cell per (shape, backend, format, batch); with several runs, each figure is their median
    (a shared machine's bad minutes then move no cell)."""
    runs: dict[tuple, list[dict]] = {}
    for path in paths:
        for line in open(path):
            r = json.loads(line) if line.strip() else {}
            if r and "error" not in r:
                runs.setdefault((r["shape"], f"{r['backend']} {r['format']}", r["batch"]), []).append(r)
    cells: dict[tuple, dict[int, str]] = {}
    for (shape, name, batch), rs in runs.items():
        m = {key: statistics.median(r[key] for r in rs)
             for key in ("layer_ms", "fraction", "tokens_per_s", "gflops", "gemm_fraction")}
        if batch == 1:
            cell = f"{m['layer_ms']:.2f} ms, {m['fraction']:.0%} BW"
        else:
            cell = f"{m['tokens_per_s']:.0f} tok/s, {m['gflops']:.0f} GF ({m['gemm_fraction']:.0%})"
        cells.setdefault((shape, name), {})[batch] = cell
    batches = [int(b) for b in BATCHES.split(",")]
    print("| shape | backend, format | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|---|" + "---|" * len(batches))
    order = {f"{b} {f}": i for i, (b, f) in enumerate(RUNS)}  # rows as in RUNS, whatever the files' order
    for (shape, name), by_batch in sorted(cells.items(), key=lambda c: (SHAPES.index(c[0][0]), order.get(c[0][1], 99))):
        print(f"| {shape} | {name} | " + " | ".join(by_batch.get(b, "-") for b in batches) + " |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--markdown"]:
        markdown(sys.argv[2:])
    else:
        args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
        run(args["--only"].split(",") if "--only" in args else None, args.get("--batches", BATCHES),
            args["--shapes"].split(",") if "--shapes" in args else SHAPES)
