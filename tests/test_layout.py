"""DESIGN.md's import arrows, read from the source with ast (lazy imports inside functions count too).

cli/serve -> engine -> models -> layers -> experts -> quant, and models -> loader: an arrow may
skip a level, never point back up. The surface (cli, serve) knows no kernel and no model class;
kernels know no scheduler and no model; the loader knows no model.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hymoe"
SURFACE = {"cli", "serve"}
ABOVE_MODELS = {"placement", "engine"} | SURFACE
MODEL_SIDE = {"models", "layers", "kv"}
KERNELS = {"experts", "_kernels"}  # experts/ holds the only bindings of the native library

# unit (a top-level module or package of hymoe) -> the units it must not import
MUST_NOT_IMPORT = {
    "config": {"loader", "quant", *KERNELS, *MODEL_SIDE, *ABOVE_MODELS},
    "tokenizer": {"loader", "quant", *KERNELS, *MODEL_SIDE, *ABOVE_MODELS},
    "host_memory": {"loader", "quant", *KERNELS, *MODEL_SIDE, *ABOVE_MODELS},  # the weights' and the KV's pages
    "quant": {"loader", "experts", *MODEL_SIDE, *ABOVE_MODELS},
    "experts": {"loader", *MODEL_SIDE, *ABOVE_MODELS},
    "kv": {"loader", "experts", "models", "layers", *ABOVE_MODELS},
    "loader": {"experts", *MODEL_SIDE, *ABOVE_MODELS},
    "layers": {"loader", "models", *ABOVE_MODELS},
    "models": ABOVE_MODELS,
    "placement": {"engine", *SURFACE},
    "engine": SURFACE,
    "serve": {"cli", "quant", "loader", *KERNELS, *MODEL_SIDE, "placement"},
    "cli": {"quant", "loader", *KERNELS, *MODEL_SIDE, "placement"},
}


def _unit(module: str) -> str | None:
    """hymoe.loader.open -> loader; hymoe.cli -> cli; anything outside hymoe -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "hymoe" and len(parts) > 1 else None


def _imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute name) for every import in the file under root (hymoe/), relative ones resolved."""
    package = ["hymoe", *path.relative_to(root).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            # each imported name, so that `from hymoe import serve` counts as importing hymoe.serve
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return found


def _files(unit: str) -> list[Path]:
    return sorted((PACKAGE / unit).rglob("*.py")) if (PACKAGE / unit).is_dir() else [PACKAGE / f"{unit}.py"]


def _breaks(path: Path, forbidden: set[str], root: Path = PACKAGE) -> list[str]:
    return [f"{path.relative_to(root.parent)}:{line} imports {module}"
            for line, module in _imports(path, root) if _unit(module) in forbidden]


@pytest.mark.parametrize("unit", sorted(MUST_NOT_IMPORT))
def test_imports_point_down(unit):
    files = _files(unit)
    assert files and all(f.is_file() for f in files), f"hymoe/{unit} is gone: update MUST_NOT_IMPORT"
    breaks = [b for f in files for b in _breaks(f, MUST_NOT_IMPORT[unit])]
    assert not breaks, "\n".join(breaks)


def test_the_checker_sees_a_bad_arrow(tmp_path):
    bad = tmp_path / "hymoe" / "loader" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from .open import open_model\nfrom hymoe import quant\n\n\n"
                   "def f():\n    from ..models import build_model\n    import hymoe.experts.native\n")
    assert _breaks(bad, MUST_NOT_IMPORT["loader"], tmp_path / "hymoe") == [
        "hymoe/loader/bad.py:6 imports hymoe.models.build_model",
        "hymoe/loader/bad.py:7 imports hymoe.experts.native",
    ]


def _module_graph() -> dict[str, set[str]]:
    """hymoe module -> the hymoe modules it imports (a name imported from a module counts as the module)."""
    files = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}

    def owner(name: str) -> str:
        while name not in files:
            name = name.rpartition(".")[0]
        return name

    # the package root is left out: every import runs hymoe/__init__.py, which loads the engine
    return {m: {owner(n) for _, n in _imports(p) if n.startswith("hymoe.")} - {m, "hymoe"} for m, p in files.items()}


def test_no_import_cycles():
    """No module reaches itself through its imports (e.g. serve's routes read protocol.py; only app.py
    includes the routers)."""
    graph = _module_graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for m in graph[todo.pop()] - seen:
                seen.add(m)
                todo.append(m)
        return seen

    reachable = {m: reach(m) for m in graph}
    cycles = {frozenset({m} | {n for n in reachable[m] if m in reachable[n]}) for m in graph if m in reachable[m]}
    assert not cycles, sorted(map(sorted, cycles))
