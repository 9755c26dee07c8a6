"""The model used when no MODEL is given: hymoe's bundled demo model.

A small DeepSeek-V3-architecture MoE (MLA, 1 shared + 16 routed experts, group-limited top-4)
trained on the King James Bible by scripts/train_demo_model.py and shipped inside the package as
a standard Hugging Face directory (hymoe/demo_model). Its held-out text is demo_model/heldout.txt.
"""
from __future__ import annotations

from pathlib import Path

from hymoe.errors import HymoeError

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"


def ensure_default_model() -> Path:
    if not (DEMO_MODEL_DIR / "model.safetensors").is_file():
        raise HymoeError(f"{DEMO_MODEL_DIR}: the bundled demo model is missing; "
                         "re-create it with scripts/train_demo_model.py")
    return DEMO_MODEL_DIR
