"""Zero-copy reader for a Hugging Face safetensors directory (single file or sharded with an index).

Each file is mapped copy-on-write, so tensors are views of the page cache: a second copy
of the weights exists only where a dtype conversion or an expert stack needs one.
"""
from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import torch

from hymoe.errors import HymoeError

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


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
        header.pop("__metadata__", None)
        self._base = 8 + n
        self.entries: dict[str, tuple[torch.dtype, list[int], int, int]] = {}
        for name, e in header.items():
            dtype = _DTYPES.get(e.get("dtype"))
            if dtype is None:
                raise HymoeError(f"{path}: tensor {name} has unsupported dtype {e.get('dtype')!r}")
            begin, end = e["data_offsets"]
            numel = 1
            for s in e["shape"]:
                numel *= s
            if end - begin != numel * dtype.itemsize or begin > end:
                raise HymoeError(f"{path}: tensor {name} has a size that disagrees with its shape")
            if self._base + end > size:
                raise HymoeError(f"{path}: truncated file: tensor {name} lies past the end of the file")
            self.entries[name] = (dtype, e["shape"], begin, end)

    def get(self, name: str) -> torch.Tensor:
        dtype, shape, begin, end = self.entries[name]
        if begin == end:
            return torch.empty(shape, dtype=dtype)
        t = torch.frombuffer(self._map, dtype=dtype, count=(end - begin) // dtype.itemsize,
                             offset=self._base + begin)
        return t.view(shape)


class SafetensorsDir:
    """All tensors of a model directory, looked up by their on-disk name."""

    def __init__(self, model_dir: Path):
        model_dir = Path(model_dir)
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError):
                raise HymoeError(f"{index}: not a valid safetensors index") from None
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
                self._where[name] = shard

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
