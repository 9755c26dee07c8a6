"""The house rules that keep the tree readable: no Python file in hymoe/ over 400 lines, no
function over 60, and the engine step short enough to read top to bottom."""
import ast
from pathlib import Path

import hymoe

ROOT = Path(hymoe.__file__).parent
MAX_FILE, MAX_FUNCTION, MAX_STEP = 400, 60, 40


def _sources():
    return sorted(ROOT.rglob("*.py"))


def function_lengths() -> dict[str, int]:
    out = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = node.end_lineno - node.lineno + 1
    return out


def test_no_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _sources() if (n := len(p.read_text().splitlines())) > MAX_FILE}
    assert not long


def test_no_function_over_60_lines():
    assert not {name: n for name, n in function_lengths().items() if n > MAX_FUNCTION}


def test_the_engine_step_reads_in_under_40_lines():
    """Scheduler.step and the methods it calls, as written in engine/scheduler.py."""
    tree = ast.parse((ROOT / "engine" / "scheduler.py").read_text())
    methods = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    called = {"step"} | {c.func.attr for c in ast.walk(methods["step"]) if isinstance(c, ast.Call)
                         and isinstance(c.func, ast.Attribute) and c.func.attr in methods}
    lines = sum(methods[m].end_lineno - methods[m].lineno + 1 for m in called)
    assert lines < MAX_STEP, sorted(called)
