"""The native kernels built for another CPU and checked there under qemu-user (issue 23):

    python scripts/cross_check.py aarch64 [--json]

Cross-compiles every source of hymoe/csrc with Debian's g++-aarch64-linux-gnu (static, so qemu needs
no target libraries) together with scripts/cross_selftest.cpp, writes the cases (each native format:
random blocks with sane scales, activations, gguf-py's dequantized weights), and runs the self-test
under qemu-aarch64 (Debian's qemu-user): every ISA level the emulated CPU has (portable, NEON with
dot products) against the float reference and against the portable level. Exit status 0 when every
check passes, 1 when one fails, 2 when the tools are missing (the message names the packages).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGETS = {  # compiler, emulator, flags per source file (the rest: none)
    "aarch64": ("aarch64-linux-gnu-g++", "qemu-aarch64",
                {"kernels_neon.cpp": ["-march=armv8.2-a+dotprod+fp16"]}),
}
PACKAGES = {"aarch64": "g++-aarch64-linux-gnu qemu-user"}
SHAPES = ((16, 512, 1), (7, 768, 3))  # rows, row length, tokens: a decode row and a small batch


def write_cases(path: Path) -> int:
    import numpy as np

    from hymoe.bench.experts import random_experts
    from hymoe.quant.formats import NATIVE_FORMATS, dequantize, qtype

    rng = np.random.default_rng(0)
    count = 0
    with open(path, "wb") as f:
        body = bytearray()
        for fmt in NATIVE_FORMATS:
            for j, (rows, n, ntok) in enumerate(SHAPES):
                w = random_experts(fmt, 1, rows, n, seed=17 * count + j).view(rows, -1)
                deq = dequantize(w, fmt, (rows, n)).float().numpy()
                x = _exact_activations(rng, ntok, n)
                body += fmt.encode().ljust(16, b"\0")
                body += struct.pack("<4iq", qtype(fmt).value, rows, n, ntok, w.numel())
                body += w.numpy().tobytes() + x.tobytes() + np.ascontiguousarray(deq, dtype=np.float32).tobytes()
                count += 1
        f.write(b"HYST" + struct.pack("<i", count) + bytes(body))
    return count


def _exact_activations(rng, ntok: int, n: int):
    """Activations that int8 quantization keeps exactly, per block of 32 and of 256 alike: integers of
    [-127, 127] times 2^-6, each 32 holding a +-127; so every kernel's sum is the float reference's
    up to rounding, and a small error in a kernel is not hidden by the activations' own."""
    import numpy as np

    k = rng.integers(-127, 128, size=(ntok, n))
    k[:, ::32] = 127 * rng.choice([-1, 1], size=(ntok, n // 32))
    return (k * 2.0 ** -6).astype(np.float32)


def build(target: str, out: Path) -> Path:
    cxx, _, flags = TARGETS[target]
    sources = sorted((ROOT / "hymoe" / "csrc").glob("*.cpp")) + [ROOT / "scripts" / "cross_selftest.cpp"]
    base = ["-std=c++17", "-O2", "-pthread", "-fno-strict-aliasing", "-Wall", "-Wno-unused-function",
            "-Wno-maybe-uninitialized", "-Wno-uninitialized"]

    def compile_one(src: Path) -> Path:
        obj = out / (src.stem + ".o")
        r = subprocess.run([cxx, *base, *flags.get(src.name, []), "-c", str(src), "-o", str(obj)],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{src.name} does not compile for {target}:\n{r.stderr[-3000:]}")
        return obj

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        objects = list(pool.map(compile_one, sources))
    exe = out / "selftest"
    r = subprocess.run([cxx, "-static", "-pthread", *map(str, objects), "-o", str(exe)], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"linking for {target} failed:\n{r.stderr[-3000:]}")
    return exe


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", choices=sorted(TARGETS))
    ap.add_argument("--json", action="store_true", help="one JSON object: the levels, cases and failures")
    args = ap.parse_args()
    cxx, emulator, _ = TARGETS[args.target]
    missing = [tool for tool in (cxx, emulator) if shutil.which(tool) is None]
    if missing:
        print(f"cross_check: {', '.join(missing)} not found (Debian: apt-get install {PACKAGES[args.target]})",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            exe = build(args.target, tmp)
        except RuntimeError as e:
            print(f"cross_check: {e}", file=sys.stderr)
            return 1
        built = time.perf_counter() - t0
        count = write_cases(tmp / "cases.bin")
        r = subprocess.run([emulator, str(exe), str(tmp / "cases.bin")], capture_output=True, text=True, timeout=600)
    lines = r.stdout.splitlines()
    levels = sorted({m[1] for ln in lines if (m := re.match(r"\S+\s+(\S+)\s+rows", ln))})
    failed = [ln for ln in lines if ln.endswith("FAILED")]
    summary = {"target": args.target, "levels": levels, "cases": count, "checks": len(lines) - 1,
               "failed": failed, "returncode": r.returncode, "build_s": round(built, 1),
               "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(r.stdout + r.stderr, end="")
        print(f"cross_check {args.target}: levels {', '.join(levels)}; {count} cases; "
              f"{len(failed)} checks failed; built in {built:.0f} s, {summary['seconds']:.0f} s in all")
    return 0 if r.returncode == 0 and not failed and lines else 1


if __name__ == "__main__":
    sys.exit(main())
