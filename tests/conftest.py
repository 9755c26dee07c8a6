import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
