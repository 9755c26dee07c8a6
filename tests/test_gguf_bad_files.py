"""Broken GGUF files: one clear HymoeError naming the problem; never a crash, a hang or a huge allocation."""
from __future__ import annotations

import math
import random
import struct

import pytest

import hymoe
from hymoe.errors import HymoeError

from gguf_edit import Typed


@pytest.fixture(scope="module")
def good(gguf_model, tmp_path_factory):
    """A small valid file (2 layers, tokenizer, Q4_K and F32 tensors) as bytes, and a place to write."""
    _, path = gguf_model("mixtral", "Q4_K")
    return path.read_bytes(), tmp_path_factory.mktemp("bad")


def _load(path):
    return hymoe.load(path, progress=False)


def _write(d, data: bytes, name="m.gguf"):
    p = d / name
    p.write_bytes(data)
    return p


def _tensor_info_at(data: bytes, name: str) -> int:
    """Byte offset just past a tensor's name in the tensor-info table."""
    key = struct.pack("<Q", len(name)) + name.encode()
    return data.index(key) + len(key)


@pytest.mark.parametrize("cut", [0, 3, 10, 23, 200, 5000, 60000, -1000, -1])
def test_truncated_file(good, cut):
    data, d = good
    with pytest.raises(HymoeError, match="truncated|not a GGUF|past the end"):
        _load(_write(d, data[:cut]))


def test_wrong_magic(good):
    data, d = good
    with pytest.raises(HymoeError, match="not a GGUF file"):
        _load(_write(d, b"GGML" + data[4:]))


def test_unsupported_version(good):
    data, d = good
    with pytest.raises(HymoeError, match="version 1 is not supported"):
        _load(_write(d, data[:4] + struct.pack("<I", 1) + data[8:]))


def test_tensor_data_past_the_end(good):
    data, d = good
    at = _tensor_info_at(data, "output.weight")
    n_dims = struct.unpack_from("<I", data, at)[0]
    offset_at = at + 4 + 8 * n_dims + 4
    bad = data[:offset_at] + struct.pack("<Q", len(data)) + data[offset_at + 8:]
    with pytest.raises(HymoeError, match="output.weight.*past the end"):
        _load(_write(d, bad))


def test_unknown_tensor_type(good):
    data, d = good
    at = _tensor_info_at(data, "output_norm.weight")
    type_at = at + 4 + 8 * struct.unpack_from("<I", data, at)[0]
    bad = data[:type_at] + struct.pack("<I", 250) + data[type_at + 4:]
    with pytest.raises(HymoeError, match="output_norm.weight has unknown type 250"):
        _load(_write(d, bad))


def test_huge_counts_are_refused_before_allocating(good):
    data, d = good
    with pytest.raises(HymoeError, match="claims"):
        _load(_write(d, data[:8] + struct.pack("<QQ", 1 << 62, 1 << 62) + data[24:]))


def test_missing_metadata_key(good):
    from gguf_edit import rewrite

    data, d = good
    rewrite(_write(d, data), d / "missing.gguf", drop_keys=("llama.embedding_length",))
    with pytest.raises(HymoeError, match="no key 'llama.embedding_length'"):
        _load(d / "missing.gguf")


@pytest.mark.parametrize("key,value,match", [
    ("llama.embedding_length", 128, "token_embd.weight has shape"),
    ("llama.block_count", 3, "3 layers"),
    ("llama.expert_count", 6, r"ffn_gate_inp.weight in .* has shape \[4, 256\], the model's config says \[6, 256\]"),
    ("llama.attention.head_count", 0, "not a valid size"),
    ("llama.attention.head_count_kv", 3, "do not split"),
    ("llama.expert_used_count", 9, "per token"),
    ("general.architecture", "gpt2", "unsupported GGUF architecture"),
    ("llama.attention.layer_norm_rms_epsilon", -1.0, "rms_norm_eps must be a positive finite number"),
    ("llama.rope.freq_base", 0.0, "rope theta must be a positive finite number"),
])
def test_metadata_that_disagrees_with_the_tensors(good, key, value, match):
    from gguf_edit import rewrite

    data, d = good
    path = d / "edited.gguf"
    rewrite(_write(d, data), path, set_keys={key: value})
    if key == "general.architecture":  # the writer sets the architecture itself: patch the bytes
        raw = path.read_bytes()
        path.write_bytes(raw.replace(b"\x05\x00\x00\x00\x00\x00\x00\x00llama", b"\x05\x00\x00\x00\x00\x00\x00\x00gpt2\x00", 1))
        value = None
    with pytest.raises(HymoeError, match=match):
        _load(path)


def test_random_mutations_load_cleanly_or_fail_cleanly(good):
    """A few hundred mutated files: each one loads, or raises HymoeError; nothing else."""
    data, d = good
    header_end = _tensor_info_at(data, list_last_tensor(data)) + 64
    rng = random.Random(0)
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(300):
        b = bytearray(data)
        kind = case % 4
        if kind == 0:  # flip a few header bytes
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(4, header_end)] = rng.randrange(256)
        elif kind == 1:  # a huge or zero 64-bit value somewhere in the header
            at = rng.randrange(8, header_end - 8)
            b[at:at + 8] = struct.pack("<Q", rng.choice([0, 1, 1 << 31, 1 << 40, (1 << 64) - 1]))
        elif kind == 2:  # delete or insert a few header bytes: every later field shifts
            at = rng.randrange(8, header_end)
            b[at:at + rng.randint(1, 16)] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 16)))
        else:  # anywhere, including tensor data
            for _ in range(rng.randint(1, 64)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        path = _write(d, bytes(b), f"fuzz{case % 8}.gguf")
        try:
            llm = _load(path)
            llm.logits([1, 2, 3])
            outcomes["loaded"] += 1
        except HymoeError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 50 and outcomes["loaded"] > 10, outcomes


def list_last_tensor(data: bytes) -> str:
    from hymoe.loader.gguf_file import GGUFFile
    import tempfile, os

    with tempfile.NamedTemporaryFile(suffix=".gguf", delete=False) as f:
        f.write(data)
    try:
        return list(GGUFFile(f.name).tensors)[-1]
    finally:
        os.unlink(f.name)


def _retyped(target: str, typ: int, itemsize: float):
    """tensors() for edit_raw: `target` stored as GGML type `typ` (zeros), its shape kept."""
    def edit(name, ne, t, data):
        if name == target:
            return [(name, ne, typ, bytes(int(math.prod(ne) * itemsize)))]
    return edit


def _rows(target: str, rows: int):
    def edit(name, ne, t, data):
        if name == target:
            return [(name, [ne[0], rows], t, data[:len(data) // ne[1] * rows])]
    return edit


def _renamed(old: str, new: str):
    def edit(name, ne, t, data):
        if name == old:
            return [(new, ne, t, data)]
    return edit


def _padded(size: int):
    """tensors() for edit_raw: `size` bytes before the embedding; under an alignment of 1, of sizes 2 and 3
    at least one puts the F32 tensors that follow off a 4-byte boundary (main failed to view them)."""
    def edit(name, ne, t, data):
        if name == "token_embd.weight":
            return [("pad", [size], 24, bytes(size)), (name, ne, t, data)]
    return edit


# What h24-files' seeded file mutation found, one case each: (values, tensors, alignment), match
FOUND_BY_FUZZING = {
    "alignment 1, 2 bytes before": (({}, _padded(2), 1), "general.alignment 1 is not a power of two of at least 8"),
    "alignment 1, 3 bytes before": (({}, _padded(3), 1), "general.alignment 1 is not a power of two of at least 8"),
    "alignment 2": (({}, None, 2), "general.alignment 2 is not a power of two of at least 8"),
    "alignment 4": (({"general.pad": "xx"}, None, 4), "general.alignment 4 is not a power of two of at least 8"),
    "split.count a list": (({"split.count": [2]}, None, None), r"split.count \[2\] is not a part count"),
    "architecture a list": (({"general.architecture": [1, 2]}, None, None), r"unsupported GGUF architecture '\[1, 2\]'"),
    "empty per-layer array": (({"llama.expert_count": Typed(9, [], 4)}, None, None), "llama.expert_count is an empty array"),
    "chat template a number": (({"tokenizer.chat_template": 7}, None, None), "tokenizer.chat_template is not a string"),
    "key with a newline": (({"llama.vocab\nsize": 300}, None, None), r"metadata key 'llama.vocab\\nsize' is not printable"),
    "tensor name with a newline": (({}, _renamed("output_norm.weight", "output\nnorm.weight"), None),
                                   r"tensor name 'output\\nnorm.weight' is not printable"),
    "experts stored as I32": (({}, _retyped("blk.0.ffn_up_exps.weight", 26, 4), None),
                              "blk.0.ffn_up_exps.weight is stored as I32, not a weight format"),
    "norm stored as F64": (({}, _retyped("output_norm.weight", 28, 8), None),
                           "output_norm.weight is stored as F64, not a weight format"),
    "weight stored as Q8_K": (({}, _retyped("blk.0.attn_q.weight", 15, 292 / 256), None),
                              "blk.0.attn_q.weight is stored as Q8_K, not a weight format"),
    "q rows not in heads": (({}, _rows("blk.0.attn_q.weight", 34), None),
                            "blk.0.attn_q.weight has 34 rows, which do not split into 4 heads"),
    "an odd name is harmless": (({"general.name": [7]}, None, None), None),
    "a key named like a tensor is harmless": (({"blk.0.attn_q.weight": "x"}, None, None), None),
}


@pytest.mark.parametrize("case", list(FOUND_BY_FUZZING))
def test_what_file_fuzzing_found_is_one_line(good, case):
    from gguf_edit import edit_raw

    data, d = good
    (values, tensors, alignment), match = FOUND_BY_FUZZING[case]
    path = d / "found.gguf"
    edit_raw(_write(d, data), path, values=values, tensors=tensors, alignment=alignment)
    if match is None:
        _load(path).logits([1, 2, 3])
        return
    with pytest.raises(HymoeError, match=match) as e:
        _load(path).logits([1, 2, 3])
    assert "\n" not in str(e.value)
