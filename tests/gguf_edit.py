"""Rewrite a GGUF file with changes (metadata keys, tensors), for tests of odd and bad files."""
from __future__ import annotations

import gguf
import numpy as np

from hymoe.loader.gguf_file import GGUFFile


def _vtype(v):
    if isinstance(v, bool):
        return gguf.GGUFValueType.BOOL
    if isinstance(v, int):
        return gguf.GGUFValueType.INT64 if v < 0 else gguf.GGUFValueType.UINT32 if v < 1 << 32 else gguf.GGUFValueType.UINT64
    if isinstance(v, float):
        return gguf.GGUFValueType.FLOAT32
    if isinstance(v, str):
        return gguf.GGUFValueType.STRING
    return gguf.GGUFValueType.ARRAY


def rewrite(src, dst, drop_keys=(), set_keys=None, tensors=None, **writer_kw):
    """Copy src to dst; set_keys overrides or adds metadata; tensors(name, info) -> [(name, array, type)]
    in its place ([] drops it), or None to keep it."""
    g = GGUFFile(src)
    w = gguf.GGUFWriter(dst, g.metadata["general.architecture"], **writer_kw)
    meta = {**g.metadata, **(set_keys or {})}
    for k, v in meta.items():
        if k in drop_keys or k in ("general.architecture", "general.alignment") or k.startswith("split."):
            continue
        sub = _vtype(v[0]) if isinstance(v, list) and v else None
        if k == "tokenizer.ggml.token_type":
            sub = gguf.GGUFValueType.INT32  # llama.cpp reads token types as int32
        w.add_key_value(k, v, _vtype(v), sub_type=sub)
    for name, info in g.tensors.items():
        row = info.data.numpy().reshape(*info.shape[:-1], -1)
        out = tensors(name, info) if tensors else None  # None keeps the tensor, [] drops it
        for new_name, arr, qt in [(name, row, info.type)] if out is None else out:
            w.add_tensor(new_name, np.ascontiguousarray(arr), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class Typed:
    """A metadata value written with the given GGUF value type (and array element type), whatever it is."""

    def __init__(self, vtype: int, value, sub: int | None = None):
        self.vtype, self.value, self.sub = vtype, value, sub


def _infer(v) -> Typed:
    if isinstance(v, Typed):
        return v
    if isinstance(v, list):
        first = _infer(v[0]) if v else Typed(4, 0)
        return Typed(9, v, 5 if first.vtype in (4, 11) and any(x < 0 for x in v) else first.vtype)
    t = _vtype(v)
    return Typed(5 if t == gguf.GGUFValueType.INT64 and v >= -1 << 31 else int(t), v)


def _pack(vtype: int, v, sub: int | None = None) -> bytes:
    import struct

    codes = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    if vtype in codes:
        return struct.pack("<" + codes[vtype], v)
    if vtype == 8:
        raw = v.encode()
        return struct.pack("<Q", len(raw)) + raw
    return struct.pack("<IQ", sub, len(v)) + b"".join(_pack(sub, x) for x in v)


def write_raw(dst, metadata: dict, tensors: list, alignment: int = 32) -> None:
    """A GGUF v3 file written byte by byte, so that it can hold what gguf-py's writer refuses: empty
    arrays, lists where scalars belong, odd alignments, any tensor type. tensors: [(name, ne, type, bytes)]."""
    import struct

    def string(s: str) -> bytes:
        return _pack(8, s)

    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for k, v in metadata.items():
        t = _infer(v)
        head += string(k) + struct.pack("<I", t.vtype) + _pack(t.vtype, t.value, t.sub)
    body, offsets = b"", []
    for _, _, _, data in tensors:
        body += b"\0" * (-len(body) % alignment)
        offsets.append(len(body))
        body += data
    for (name, ne, typ, _), offset in zip(tensors, offsets):
        head += string(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, typ, offset)
    with open(dst, "wb") as f:
        f.write(head + b"\0" * (-len(head) % alignment) + body)


def edit_raw(src, dst, values=None, tensors=None, alignment=None) -> None:
    """Copy src to dst byte by byte: values {key: value, Typed or None (drop)}; tensors(name, ne, type, bytes)
    -> [(name, ne, type, bytes)] or None (unchanged); alignment sets general.alignment and pads to it."""
    g = GGUFFile(src)
    meta = {k: v for k, v in {**g.metadata, **(values or {})}.items() if v is not None}
    if alignment is not None:
        meta["general.alignment"] = Typed(4, alignment)
    out = []
    for name, info in g.tensors.items():
        entry = (name, list(reversed(info.shape)), int(info.type), info.data.numpy().tobytes())
        out += (tensors(*entry) if tensors else None) or [entry]
    write_raw(dst, meta, out, alignment or 32)
