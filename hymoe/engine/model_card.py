"""ModelCard: what a server tells clients about its model (Ollama's /api/tags, /api/show, /api/ps):
the weight files and their bytes, the parameter count, the quantization level and a digest.

Computed once at load from the opened files; reading the card costs nothing per request.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hymoe.loader.open import ModelFiles

_FLOAT_NAMES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_DIGEST_HEAD = 1 << 20  # bytes of each weight file the digest reads: the header and the first tensors


@dataclass(slots=True)
class ModelCard:
    format: str  # "gguf" or "safetensors"
    weight_files: list[Path]
    size: int  # bytes of the weight files
    num_params: int
    quantization_level: str  # "Q4_K_M", "BF16", ...
    digest: str  # sha256 hex
    template: str = ""  # the chat template's source, if any
    metadata: dict = field(default_factory=dict)  # GGUF key/values (arrays left out), else {}

    @property
    def parameter_size(self) -> str:
        """As Ollama writes it: "1.2M", "8.0B", "671B"."""
        n, unit = self.num_params, ""
        for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= scale:
                n /= scale
                break
        else:
            unit = ""
        return (f"{n:.1f}" if n < 100 else f"{n:.0f}") + unit


def weight_files(path: Path | None) -> list[Path]:
    """The .gguf file, or a directory's safetensors shards; none for files opened by the caller."""
    if path is None:
        return []
    if path.is_file():
        return [path]
    index = path / "model.safetensors.index.json"
    if index.is_file():  # the shards it names: a directory may also hold a consolidated copy
        return sorted({path / name for name in json.loads(index.read_text())["weight_map"].values()})
    return sorted(path.glob("*.safetensors"))


def _digest(files: list[Path]) -> str:
    """sha256 of each file's size and first MiB: stable across restarts, changes with the weights,
    and cheap for a 400 GB model (hashing every byte would take minutes)."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + f.stat().st_size.to_bytes(8, "little"))
        with open(f, "rb") as fh:
            h.update(fh.read(_DIGEST_HEAD))
    return h.hexdigest()


def _quantization(files: ModelFiles, stored: list[tuple[str, str, int, int]]) -> str:
    """GGUF's general.file_type (as llama.cpp names it), else the format holding the most parameters."""
    if files.gguf is not None and "general.file_type" in files.gguf.metadata:
        import gguf

        try:
            return gguf.LlamaFileType(int(files.gguf.metadata["general.file_type"])).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    by_format = Counter()
    for _, fmt, numel, _ in stored:
        by_format[_FLOAT_NAMES.get(fmt, fmt)] += numel
    return by_format.most_common(1)[0][0] if by_format else ""


def model_card(path: Path | None, files: ModelFiles) -> ModelCard:
    paths = weight_files(path)
    stored = files.stored_tensors()
    hf = getattr(files.tokenizer, "hf", None)
    template = getattr(hf, "chat_template", None)
    meta = {}
    if files.gguf is not None:  # the scalars: token lists would be megabytes of JSON
        meta = {k: v for k, v in files.gguf.metadata.items() if isinstance(v, (str, int, float, bool))}
    return ModelCard("gguf" if files.gguf is not None else "safetensors", paths, sum(p.stat().st_size for p in paths),
                     sum(numel for _, _, numel, _ in stored), _quantization(files, stored), _digest(paths),
                     template if isinstance(template, str) else "", meta)
