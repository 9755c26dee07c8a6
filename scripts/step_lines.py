"""How many lines of hymoe one decode step reads: the distinct source lines executed, per file.

Loads the demo model on the CPU with the torch experts (so every line is Python, none is hidden in
a kernel), generates a few tokens, and traces one decode step of the engine loop (the third
forward pass). The engine's share (engine/, serve/, kv/) is what a newcomer reads to change
decoding; the model's share (layers/, models/, experts/) is the same for every client.

    python scripts/step_lines.py [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import hymoe
from hymoe.engine.llm import LLM, load
from hymoe.engine.sampler import SamplingParams

ROOT = Path(hymoe.__file__).parent
ENGINE = ("engine/", "serve/", "kv/")


def traced_step(llm: LLM) -> dict[str, set[int]]:
    """Lines executed by the forward pass that feeds the second sampled token, and its bookkeeping."""
    from hymoe.engine import runner as runner_mod

    seen: dict[str, set[int]] = defaultdict(set)
    calls = {"n": 0}
    original = runner_mod.Runner.forward

    def tracer(frame, event, arg):
        path = frame.f_code.co_filename
        if not path.startswith(str(ROOT)):
            return None
        if event == "line":
            seen[str(Path(path).relative_to(ROOT))].add(frame.f_lineno)
        return tracer

    def forward(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # prefill, decode 1, decode 2: trace from here to the next forward
            sys.settrace(tracer)
            frame = sys._getframe(1)
            while frame is not None:  # the loop that called us is already running: trace it too
                frame.f_trace = tracer
                frame = frame.f_back
        elif calls["n"] == 4:
            sys.settrace(None)
        return original(self, *a, **kw)

    runner_mod.Runner.forward = forward
    try:
        llm.generate_batch([[1, 2, 3, 4]], SamplingParams(max_new_tokens=6, is_eos_ignored=True))
    finally:
        sys.settrace(None)
        runner_mod.Runner.forward = original
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    llm = load(_demo(), progress=False, experts="torch", placement="cpu")
    seen = traced_step(llm)
    rows = sorted(((f, len(lines)) for f, lines in seen.items()), key=lambda r: (-r[1], r[0]))
    engine = [(f, n) for f, n in rows if f.startswith(ENGINE)]
    out = {"files": len(rows), "lines": sum(n for _, n in rows), "engine_files": len(engine),
           "engine_lines": sum(n for _, n in engine), "per_file": dict(rows)}
    if args.json:
        print(json.dumps(out))
        return
    for f, n in rows:
        print(f"{n:5d}  {f}")
    print(f"{out['lines']} lines over {out['files']} files; engine/serve/kv: {out['engine_lines']} over "
          f"{out['engine_files']}")


def _demo() -> str:
    from hymoe.default_model import ensure_default_model

    return str(ensure_default_model())


if __name__ == "__main__":
    main()
