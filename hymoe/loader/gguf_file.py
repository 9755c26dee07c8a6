"""Zero-copy GGUF reader: metadata as Python values, tensors as views of a read-only mmap.

Written against the GGUF v2/v3 layout (the same one gguf-py's reader parses) because a loader
for user files must validate as it goes: every count and length is checked against the bytes
left before anything is allocated, so a corrupt file gives one clear HymoeError, never a
segfault, a hang or a huge allocation. Multi-part files (`-00001-of-0000N.gguf`) open as one.
"""
from __future__ import annotations

import mmap
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from hymoe.errors import HymoeError
from hymoe.host_memory import advise_huge

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
# GGUF value type id -> (struct code, size); 8 = string, 9 = array
_SCALARS = {0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4), 6: ("f", 4),
            7: ("?", 1), 10: ("Q", 8), 11: ("q", 8), 12: ("d", 8)}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")


@dataclass(slots=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order: outermost first (GGUF stores ne0 innermost)
    type: GGMLQuantizationType
    data: torch.Tensor  # uint8 view of the file: the tensor's raw blocks

    @property
    def format(self) -> str:
        return self.type.name

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


class _Cursor:
    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def fail(self, what: str):
        raise HymoeError(f"{self.path}: corrupt GGUF file ({what} at byte {self.pos})")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            self.fail(f"truncated {what}")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, t: int, what: str):
        code, size = _SCALARS[t]
        return struct.unpack("<" + code, self.take(size, what))[0]

    def string(self, what: str) -> str:
        n = self.scalar(10, what)
        try:
            return bytes(self.take(n, what)).decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not UTF-8")

    def name(self, what: str) -> str:
        """A key or tensor name: printable, as the spec's ASCII names are, so that a message naming it is one line."""
        s = self.string(what)
        if not s.isprintable():
            self.fail(f"{what} {s[:80]!r} is not printable")
        return s

    def value(self, t: int, key: str):
        if t in _SCALARS:
            return self.scalar(t, f"value of {key}")
        if t == 8:
            return self.string(f"value of {key}")
        if t != 9:
            self.fail(f"unknown value type {t} for {key}")
        et, n = self.scalar(4, f"array type of {key}"), self.scalar(10, f"array length of {key}")
        if et in _SCALARS:  # numeric arrays in one read: vocabularies hold 100k+ scores
            raw = self.take(n * _SCALARS[et][1], f"array {key}")
            return np.frombuffer(raw, dtype=_NUMPY[et]).tolist()
        if et == 8:
            if n > (len(self.buf) - self.pos) // 8:  # each string needs at least its length field
                self.fail(f"array {key} claims {n} strings")
            return [self.string(f"array {key}") for _ in range(n)]
        self.fail(f"unsupported array element type {et} in {key}")


class GGUFFile:
    """One .gguf file: `metadata` {key: value}, `tensors` {name: TensorInfo}."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise HymoeError(f"{self.path}: no such file")
        with open(self.path, "rb") as f:
            size = f.seek(0, 2)
            if size < 24:
                raise HymoeError(f"{self.path}: not a GGUF file (only {size} bytes)")
            # read-only: a private writable map is charged to memory up front, so a 405 GiB file failed
            # with ENOMEM on a 24 GiB machine; hymoe never writes to weights
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        advise_huge(self._map)  # experts stream from here: large pages spare TLB misses
        buf = memoryview(self._map)
        if bytes(buf[:4]) != MAGIC:
            raise HymoeError(f"{self.path}: not a GGUF file (magic {bytes(buf[:4])!r})")
        cur = _Cursor(buf, self.path)
        cur.pos = 4
        self.version = cur.scalar(4, "version")
        if self.version not in (2, 3):
            raise HymoeError(f"{self.path}: GGUF version {self.version} is not supported (2 and 3 are)")
        n_tensors, n_kv = cur.scalar(10, "tensor count"), cur.scalar(10, "metadata count")
        if n_kv > size // 12 or n_tensors > size // 24:  # smallest possible entries
            cur.fail(f"truncated header: it claims {n_kv} keys and {n_tensors} tensors in {size} bytes")
        self.metadata: dict[str, object] = {}
        for _ in range(n_kv):
            key = cur.name("metadata key")
            self.metadata[key] = cur.value(cur.scalar(4, f"type of {key}"), key)
        infos = []
        for _ in range(n_tensors):
            name = cur.name("tensor name")
            n_dims = cur.scalar(4, f"dims of {name}")
            if not 1 <= n_dims <= MAX_DIMS:
                cur.fail(f"tensor {name} has {n_dims} dimensions")
            ne = [cur.scalar(10, f"shape of {name}") for _ in range(n_dims)]
            infos.append((name, ne, cur.scalar(4, f"type of {name}"), cur.scalar(10, f"offset of {name}")))
        align = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        # the spec asks for a multiple of 8: tensors of 4- and 8-byte values are views of the file
        if isinstance(align, bool) or not isinstance(align, int) or align < 8 or align & (align - 1):
            cur.fail(f"general.alignment {str(align)[:40]} is not a power of two of at least 8")
        start = -(-cur.pos // align) * align
        self.tensors: dict[str, TensorInfo] = {}
        with warnings.catch_warnings():  # torch warns that the buffer is not writable: it is not, by design
            warnings.simplefilter("ignore", UserWarning)
            data = torch.frombuffer(self._map, dtype=torch.uint8) if size else None
        self.base = data.data_ptr() if data is not None else None  # the mapping's address: maps() below
        for name, ne, t, offset in infos:
            if offset % align:
                raise HymoeError(f"{self.path}: tensor {name} starts at offset {offset}, "
                                 f"not on the file's {align}-byte alignment: the file is corrupt")
            self.tensors[name] = self._tensor(name, ne, t, offset, start, size, data)

    def _tensor(self, name, ne, t, offset, start, size, data) -> TensorInfo:
        try:
            qt = GGMLQuantizationType(t)
        except ValueError:
            raise HymoeError(f"{self.path}: tensor {name} has unknown type {t}") from None
        block, nbytes = GGML_QUANT_SIZES[qt]
        if any(d <= 0 or d > 1 << 40 for d in ne) or ne[0] % block:
            raise HymoeError(f"{self.path}: tensor {name} has an invalid shape {ne} for {qt.name}")
        total = int(np.prod(ne, dtype=np.float64)) // block * nbytes
        begin = start + offset
        if offset > size or total > size - begin:
            raise HymoeError(f"{self.path}: tensor {name} ({total} bytes at offset {offset}) lies past the end "
                             f"of the file ({size} bytes): the file is truncated or corrupt")
        if name in self.tensors:
            raise HymoeError(f"{self.path}: tensor {name} appears twice")
        return TensorInfo(name, tuple(reversed(ne)), qt, data[begin:begin + total])


class GGUFModelFile:
    """A model stored in one GGUF file or split across `-0000i-of-0000N.gguf` parts."""

    def __init__(self, path: str | Path):
        path = Path(path)
        first = GGUFFile(path)
        self.path, self.metadata, self.tensors = path, dict(first.metadata), dict(first.tensors)
        self.parts = [first]
        m = _SPLIT.match(path.name)
        count = first.metadata.get("split.count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 99999:
            raise HymoeError(f"{path}: GGUF split.count {str(count)[:40]} is not a part count")
        if count == 1 and not m:
            return
        if not m or int(m["i"]) != 1 or int(m["n"]) != count:
            raise HymoeError(f"{path}: part of a {count}-part GGUF; open the first part (-00001-of-{count:05d}.gguf)")
        for i in range(2, count + 1):
            part_path = path.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf")
            if not part_path.is_file():
                raise HymoeError(f"{part_path}: missing part {i} of {count} of this GGUF model")
            part = GGUFFile(part_path)
            for name, t in part.tensors.items():
                if name in self.tensors:
                    raise HymoeError(f"{part_path}: tensor {name} appears in two parts")
                self.tensors[name] = t
            self.parts.append(part)
        expected = first.metadata.get("split.tensors.count")
        if expected is not None and expected != len(self.tensors):
            raise HymoeError(f"{path}: the parts hold {len(self.tensors)} tensors, the metadata says {str(expected)[:40]}")

    def maps(self, t: torch.Tensor) -> bool:
        """Whether t views one of the parts' read-only mappings (not a copy made from it)."""
        return t.untyped_storage().data_ptr() in {p.base for p in self.parts}

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    def require(self, key: str):
        if key not in self.metadata:
            raise HymoeError(f"{self.path}: GGUF metadata has no key {key!r}")
        return self.metadata[key]
