"""Mutated model files, loaded one after another; run by tests/test_fuzz_files.py in a subprocess:
`python tests/fuzz_files_worker.py gguf|safetensors SOURCE WORKDIR SEED N`. Before each case it
prints `case I`, then `ok` (it loaded and decoded a token) or `refused: <one line>` (a HymoeError);
anything else (a traceback, a signal, a hang) is the failure the parent reports."""
import functools
import json
import random
import shutil
import struct
import sys
from pathlib import Path

import hymoe

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_cases import run_cases  # noqa: E402
from gguf_edit import Typed, edit_raw  # noqa: E402

INTERESTING = [0, 1, 2, 7, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1]


def mutate_bytes(r: random.Random, data: bytearray, region: int) -> str:
    """One mutation in the first `region` bytes (headers, metadata, tensor tables) or anywhere."""
    kind = r.choice(["flip", "flip", "word", "word", "truncate", "splice", "zero"])
    end = min(len(data), region) if r.random() < 0.85 else len(data)
    at = r.randrange(max(1, end - 8))
    if kind == "flip":
        data[at] ^= 1 << r.randrange(8)
    elif kind == "word":
        size = r.choice([4, 8])
        data[at:at + size] = (r.choice(INTERESTING) % (1 << (8 * size))).to_bytes(size, "little")
    elif kind == "truncate":
        del data[r.randrange(len(data)):]
    elif kind == "splice":
        n = r.randrange(1, 64)
        src = r.randrange(max(1, len(data) - n))
        data[at:at + n] = data[src:src + n]
    else:
        data[at:at + r.randrange(1, 256)] = bytes(r.randrange(1, 256))
    return f"{kind}@{at}"


# values of every GGUF type for a metadata key, including what gguf-py's writer refuses (an empty array)
GGUF_VALUES = [Typed(4, 0), Typed(4, 2**32 - 1), Typed(5, -1), Typed(6, float("nan")), Typed(12, 1e300),
               Typed(7, True), Typed(8, ""), Typed(8, "x\ny"), Typed(9, [], 4), Typed(9, [2, 3], 4),
               Typed(9, ["a"], 8), Typed(10, 2**63)]


def gguf_field_case(r: random.Random, source: Path, out: Path) -> None:
    """One metadata value retyped, or one tensor retyped or renamed: a well-formed file that lies."""
    def tensor(name, ne, t, data):
        if name == target and r.random() < 0.5:
            return [(name, ne, r.choice([24, 26, 28, 15, 1, 0]), data)]  # I8, I32, F64, Q8_K, F16, F32
        if name == target:
            return [(r.choice(["", "a\nb", name + "x", "token_embd.weight"]), ne, t, data)]

    keys = list(_gguf_keys(source))
    if r.random() < 0.6:
        target, values = None, {r.choice(keys): r.choice(GGUF_VALUES)}
    else:
        from hymoe.loader.gguf_file import GGUFFile

        target, values = r.choice(list(GGUFFile(source).tensors)), {}
    edit_raw(source, out, values=values, tensors=tensor, alignment=r.choice([None, None, None, 1, 8, 64]))


@functools.cache
def _gguf_keys(source: Path) -> list[str]:
    from hymoe.loader.gguf_file import GGUFFile

    return [k for k in GGUFFile(source).metadata if not k.startswith("tokenizer.ggml.")]


def gguf_case(r: random.Random, source: Path, work: Path) -> Path:
    if r.random() < 0.25:
        gguf_field_case(r, source, work / "case.gguf")
        return work / "case.gguf"
    data = bytearray(source.read_bytes())
    for _ in range(r.choice([1, 1, 2, 4])):
        mutate_bytes(r, data, 64 << 10)
    out = work / "case.gguf"
    out.write_bytes(bytes(data))
    return out


def _json_mutation(r: random.Random, value):
    """A value of another type or range, where a loader might trust the original's."""
    return r.choice([None, -1, 0, 2**40, 1.5, float("nan"), "x", [], {}, [value], True, -value if
                     isinstance(value, (int, float)) and not isinstance(value, bool) else value])


def safetensors_case(r: random.Random, source: Path, work: Path) -> Path:
    d = work / "case"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(source, d)
    target = r.choice(["weights", "weights", "config", "tokenizer", "generation", "template"])
    if target == "weights":
        path = d / "model.safetensors"
        data = bytearray(path.read_bytes())
        (n,) = struct.unpack("<Q", data[:8])
        if r.random() < 0.5:  # edit the header as JSON
            header = json.loads(data[8:8 + n])
            name = r.choice([k for k in header if k != "__metadata__"])
            field = r.choice(["dtype", "dtype", "shape", "data_offsets", None])
            if field == "dtype" and r.random() < 0.5:  # another dtype of the same width or not
                header[name][field] = r.choice(["I32", "I16", "I8", "U8", "BOOL", "I64", "F64", "F16"])
            elif field is None:
                header[name] = _json_mutation(r, header[name])
            else:
                header[name][field] = _json_mutation(r, header[name][field])
            raw = json.dumps(header).encode()
            data = bytearray(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
        else:
            mutate_bytes(r, data, 8 + n)
        path.write_bytes(bytes(data))
    elif target == "template":  # the template is the model's code: it may fail when run
        (d / "chat_template.jinja").write_text(r.choice(["{% for %}", "{{ raise_exception('no') }}", "{{ x.y() }}",
                                                         "{{ messages[0]['content'] }}", "{{ 1 / 0 }}"]))
    else:
        name = {"config": "config.json", "tokenizer": "tokenizer_config.json",
                "generation": "generation_config.json"}[target]
        path = d / name
        doc = json.loads(path.read_text()) if path.is_file() else {}
        key = r.choice(sorted(doc) or ["eos_token_id"])
        doc[key] = _json_mutation(r, doc.get(key, 1))
        path.write_text(json.dumps(doc))
    return d


def main():
    kind, source, work, seed, count = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    r = random.Random(seed)
    make = gguf_case if kind == "gguf" else safetensors_case

    def case():
        llm = hymoe.load(make(r, source, work), progress=False, max_context=64)
        llm.generate([1, 2, 3], max_new_tokens=2)
        if llm.tokenizer is not None and llm.tokenizer.has_chat_template:
            llm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])

    run_cases(count, case)


if __name__ == "__main__":
    main()
