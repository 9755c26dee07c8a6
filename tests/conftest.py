import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, os.cpu_count() or 1))


def _available_isas() -> list[str]:
    """The native kernels' ISA levels this CPU runs, one name per distinct level ([] unbuilt)."""
    from hymoe.experts import native

    if native.library() is None:
        return []
    have = []
    for isa in ("generic", "avx2", "avx512"):
        native.set_isa(isa)
        name = native.isa_name()
        if name not in [n for _, n in have]:
            have.append((isa, name))
    native.set_isa("avx512")  # the widest the CPU allows
    return [isa for isa, _ in have]


@pytest.fixture(params=_available_isas())
def isa(request):
    """Each kernel path the CPU has, in turn (the widest restored after)."""
    from hymoe.experts import native

    native.set_isa(request.param)
    yield request.param
    native.set_isa("avx512")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def llm():
    """The bundled demo model in float32, loaded once for the server tests (a module may define its own)."""
    import hymoe
    from hymoe.default_model import ensure_default_model

    return hymoe.load(ensure_default_model(), dtype="float32", progress=False, max_context=512)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(name) -> (model_dir, hf_model), built once per session."""
    from tiny_models import make_model

    built = {}

    def get(name: str):
        if name not in built:
            out = tmp_path_factory.mktemp(name)
            built[name] = (out, make_model(name, out))
        return built[name]

    return get


@pytest.fixture(scope="session")
def gguf_model(tmp_path_factory):
    """gguf_model(name, type) -> (hf_dir, gguf path): a briefly trained tiny model and its conversion."""
    from gguf_models import make_gguf_model

    from hymoe.convert import convert

    built = {}

    def get(name: str, typ: str):
        if name not in built:
            d = tmp_path_factory.mktemp(f"gguf-{name}")
            make_gguf_model(name, d / "hf", steps=100)
            built[name] = (d / "hf", {})
        hf_dir, files = built[name]
        if typ not in files:
            files[typ] = convert(hf_dir, hf_dir.parent / f"{typ}.gguf", type=typ, progress=False)
        return hf_dir, files[typ]

    return get
