"""Seeded fuzzing of every native entry point (issue 24): each class of calls runs in a subprocess
(tests/fuzz_native_worker.py), and every case must end in a result equal to its reference or a
one-line HymoeError; never a signal, a hang, a traceback or a multi-line error."""
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from hymoe.experts import native

pytestmark = pytest.mark.skipif(native.library() is None, reason="native kernels not built")
WORKER = Path(__file__).parent / "fuzz_native_worker.py"
# cases per class: 1,320 in all (the survey made 136 calls)
CLASSES = {"experts": 300, "rows": 200, "linear": 200, "norm": 120, "attention": 300, "raw_calls": 200}


def outcomes(kind: str, seed: int, count: int) -> Counter:
    out = subprocess.run([sys.executable, str(WORKER), kind, str(seed), str(count)], capture_output=True,
                         text=True, timeout=240)
    lines = out.stdout.splitlines()
    last = next((line for line in reversed(lines) if line.startswith("case ")), "no case")
    where = f"{kind} seed {seed}, {last} (rerun: python {WORKER.name} {kind} {seed} {count})"
    assert out.returncode == 0, f"{where}: exit {out.returncode}\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr, f"{where}\n{out.stderr[-3000:]}"
    results = [line for line in lines if not line.startswith("case ")]
    assert len(results) == count, f"{where}: {len(results)} results for {count} cases"
    return Counter("ok" if r == "ok" else "refused" for r in results)


@pytest.mark.parametrize("kind", list(CLASSES))
def test_native_entry_points_survive_random_calls(kind):
    counts = outcomes(kind, seed=24, count=CLASSES[kind])
    # both outcomes occur: the generator reaches valid calls and bad ones
    assert counts["ok"] > 0 and counts["refused"] > 0, counts
    print(kind, dict(counts))
