"""Zero-copy reader for a Hugging Face safetensors directory (single file or sharded with an index).

Each file is mapped copy-on-write, so tensors are views of the page cache: a second copy
of the weights exists only where a dtype conversion or an expert stack needs one.
"""
from __future__ import annotations

import json
import math
import mmap
import struct
from pathlib import Path

import torch

from hymoe.errors import HymoeError

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,  # FP8 weights: loader/fp8.py reads their scales
}


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _entry(path, name: str, e, data_bytes: int) -> tuple[torch.dtype, list[int], int, int]:
    """One header entry, checked: (dtype, shape, begin, end) with its bytes inside the data section."""
    if not isinstance(e, dict):
        raise HymoeError(f"{path}: tensor {name} has a header entry that is not an object")
    dtype = _DTYPES.get(e.get("dtype")) if isinstance(e.get("dtype"), str) else None
    if dtype is None:
        raise HymoeError(f"{path}: tensor {name} has unsupported dtype {e.get('dtype')!r}")
    shape, offsets = e.get("shape"), e.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
        raise HymoeError(f"{path}: tensor {name} has no valid shape (got {shape!r})")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise HymoeError(f"{path}: tensor {name} has no valid data_offsets (got {offsets!r})")
    begin, end = offsets
    if end - begin != math.prod(shape) * dtype.itemsize or begin > end:
        raise HymoeError(f"{path}: tensor {name} has a size that disagrees with its shape")
    if end > data_bytes:
        raise HymoeError(f"{path}: truncated file: tensor {name} lies past the end of the file")
    return dtype, shape, begin, end


def _check_disjoint(path, entries: dict) -> None:
    """Tensors whose bytes overlap are a corrupt header (a write through one would change another)."""
    spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items() if end > begin)
    for (_, end, name), (begin, _, other) in zip(spans, spans[1:]):
        if begin < end:
            raise HymoeError(f"{path}: tensors {name} and {other} overlap in the file")


class SafetensorsFile:
    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise HymoeError(f"{path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100 << 20:
                raise HymoeError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes)")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise HymoeError(f"{path}: corrupt safetensors header") from None
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        if not isinstance(header, dict):
            raise HymoeError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
        header.pop("__metadata__", None)
        self._base = 8 + n
        self.entries: dict[str, tuple[torch.dtype, list[int], int, int]] = {}
        for name, e in header.items():
            self.entries[name] = _entry(path, name, e, size - self._base)
        _check_disjoint(path, self.entries)

    def get(self, name: str) -> torch.Tensor:
        dtype, shape, begin, end = self.entries[name]
        if begin == end:
            return torch.empty(shape, dtype=dtype)
        t = torch.frombuffer(self._map, dtype=dtype, count=(end - begin) // dtype.itemsize,
                             offset=self._base + begin)
        return t.view(shape)


def _read_index(index: Path) -> dict[str, str]:
    """model.safetensors.index.json's weight_map: tensor name -> shard file, in this directory."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        weight_map = None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str) and v and "/" not in v
                                                   for k, v in weight_map.items()):
        raise HymoeError(f"{index}: not a valid safetensors index (weight_map must map names to shard files)")
    return weight_map


class SafetensorsDir:
    """All tensors of a model directory, looked up by their on-disk name."""

    def __init__(self, model_dir: Path):
        model_dir = Path(model_dir)
        index = model_dir / "model.safetensors.index.json"
        weight_map = _read_index(index) if index.is_file() else None
        if weight_map is not None:
            names = sorted(set(weight_map.values()))
        else:
            names = sorted(p.name for p in model_dir.glob("*.safetensors"))
        if not names:
            raise HymoeError(f"{model_dir}: no *.safetensors weights found")
        self._where: dict[str, SafetensorsFile] = {}
        for fname in names:
            path = model_dir / fname
            if not path.is_file():
                raise HymoeError(f"{path}: shard named in the index is missing")
            shard = SafetensorsFile(path)
            for name in shard.entries:
                if weight_map is not None and weight_map.get(name) != fname:
                    raise HymoeError(f"{index}: tensor {name} of {fname} is not in the index (or under another shard)")
                self._where[name] = shard
        if weight_map is not None and (missing := sorted(set(weight_map) - set(self._where))):
            raise HymoeError(f"{index}: names {missing[0]} in {weight_map[missing[0]]}, which does not hold it")

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def keys(self):
        return self._where.keys()

    def describe(self, name: str) -> tuple[torch.dtype, list[int]]:
        dtype, shape, _, _ = self._where[name].entries[name]
        return dtype, shape

    def get(self, name: str) -> torch.Tensor:
        shard = self._where.get(name)
        if shard is None:
            raise HymoeError(f"missing tensor {name} in the checkpoint")
        return shard.get(name)
