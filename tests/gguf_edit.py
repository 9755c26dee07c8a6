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
