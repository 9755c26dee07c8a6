"""Run `hymoe bench experts` over shapes x formats x batches; JSON lines on stdout, for the README table."""
import json
import subprocess
import sys

SHAPES = ["qwen3-30b-a3b", "deepseek-v3"]
RUNS = [("native", f) for f in ("Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "IQ1_S", "TQ2_0", "BF16")] + [("torch", "BF16")]
BATCHES = "1,8,32,128,512"

for shape in SHAPES:
    for backend, fmt in RUNS:
        cmd = ["hymoe", "bench", "experts", "--shape", shape, "--format", fmt, "--batch", BATCHES,
               "--backend", backend, "--max-gb", "4", "--json"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            print(json.dumps({"shape": shape, "format": fmt, "backend": backend, "error": r.stderr.strip()[-300:]}))
            continue
        for row in json.loads(r.stdout.strip().splitlines()[-1]):
            print(json.dumps(row), flush=True)
        print(r.stderr.strip(), file=sys.stderr, flush=True)
