"""Render JSON lines from scripts/bench_table.py as a markdown table (one row per shape x format)."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
rows = [r for r in rows if "error" not in r]
batches = sorted({r["batch"] for r in rows})
head = "| shape | backend, format | " + " | ".join(f"batch {b}" for b in batches) + " |"
print(head)
print("|" + "---|" * (2 + len(batches)))
keys = []
for r in rows:
    k = (r["shape"], r["backend"], r["format"])
    if k not in keys:
        keys.append(k)
for shape, backend, fmt in keys:
    cells = []
    for b in batches:
        r = next((r for r in rows if (r["shape"], r["backend"], r["format"], r["batch"]) == (shape, backend, fmt, b)), None)
        if r is None:
            cells.append("")
        elif b == 1:
            cells.append(f"{r['layer_ms']:.2f} ms, {r['fraction']:.0%} BW")
        else:
            cells.append(f"{r['tokens_per_s']:.0f} tok/s, {r['gflops']:.0f} GF")
    print(f"| {shape} | {backend} {fmt} | " + " | ".join(cells) + " |")
