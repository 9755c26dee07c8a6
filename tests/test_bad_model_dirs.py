"""Broken Hugging Face model directories (issue 24's reproducers): one HymoeError naming the file and
the problem; never a traceback, and nothing that loads when it should not."""
import json
import shutil
import struct
import subprocess
import sys

import pytest
from safetensors.torch import save_file

import hymoe
from hymoe.errors import HymoeError


def read_header(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_header(path, header, body):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def first_tensor(header) -> str:
    return next(k for k in header if k != "__metadata__")


@pytest.fixture
def model_dir(tiny_model, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_model("qwen3_moe")[0], d)
    return d


def _edit_header(edit):
    def apply(d):
        path = d / "model.safetensors"
        header, body = read_header(path)
        write_header(path, edit(header), body)
    return apply


def _entry(change):
    def edit(header):
        change(header[first_tensor(header)])
        return header
    return _edit_header(edit)


def _overlap(header):
    names = [k for k in header if k != "__metadata__" and header[k]["data_offsets"][1] > header[k]["data_offsets"][0]]
    a, b = sorted(names, key=lambda k: header[k]["data_offsets"][0])[:2]
    size = header[b]["data_offsets"][1] - header[b]["data_offsets"][0]
    begin = header[a]["data_offsets"][0]
    if header[a]["data_offsets"][1] - begin >= size:  # b's bytes moved onto a's, sizes kept
        header[b]["data_offsets"] = [begin, begin + size]
    else:
        header[a]["data_offsets"] = [header[b]["data_offsets"][0], header[b]["data_offsets"][0] + header[a]["data_offsets"][1] - begin]
    return header


def _index(weight_map):
    def apply(d):
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map(d)}))
    return apply


def _all_but_one(d):
    header, _ = read_header(d / "model.safetensors")
    names = [k for k in header if k != "__metadata__"]
    return {k: "model.safetensors" for k in names[1:]}


def _write(name, text):
    def apply(d):
        (d / name).write_text(text)
    return apply


def _json(name, edit):
    def apply(d):
        path = d / name
        path.write_text(json.dumps(edit(json.loads(path.read_text()) if path.is_file() else {})))
    return apply


CASES = {
    "header a list": (_edit_header(lambda h: [h]), "not an object"),
    "header a string": (_edit_header(lambda h: "weights"), "not an object"),
    "entry without data_offsets": (_entry(lambda e: e.pop("data_offsets")), "no valid data_offsets"),
    "entry without shape": (_entry(lambda e: e.pop("shape")), "no valid shape"),
    "negative offsets": (_entry(lambda e: e.update(data_offsets=[-8, e["data_offsets"][1] - 8])), "data_offsets"),
    "string offsets": (_entry(lambda e: e.update(data_offsets=[str(o) for o in e["data_offsets"]])), "data_offsets"),
    "entry a number": (_edit_header(lambda h: {**h, first_tensor(h): 7}), "not an object"),
    "overlapping tensors": (_edit_header(_overlap), "overlap"),
    "index weight_map a list": (_index(lambda d: ["model.safetensors"]), "not a valid safetensors index"),
    "index leaving out a tensor": (_index(_all_but_one), "is not in the index"),
    "index naming a tensor no shard holds": (_index(lambda d: {**{k: "model.safetensors" for k in _all_keys(d)},
                                                               "model.extra.weight": "model.safetensors"}),
                                             "does not hold it"),
    "tokenizer.json {}": (_write("tokenizer.json", "{}"), "cannot load the tokenizer"),
    "generation eos a string": (_write("generation_config.json", '{"eos_token_id": "2"}'), "eos_token_id"),
    "generation config a list": (_write("generation_config.json", "[1, 2]"), "not a JSON object"),
    # found by h24-files' seeded mutation of directories
    "integer weights": (_entry(lambda e: e.update(dtype="I32")), "holds int32 values, not floating point"),
    "model_type a list": (_json("config.json", lambda d: {**d, "model_type": []}), r"unsupported architecture \[\]"),
    "expert count infinite": (_json("config.json", lambda d: {**d, "num_experts": float("inf")}),
                              "cannot convert float infinity"),
    "2^40 layers": (_json("config.json", lambda d: {**d, "num_hidden_layers": 2 ** 40}), "num_layers must be"),
    "decoder_sparse_step 0": (_json("config.json", lambda d: {**d, "decoder_sparse_step": 0}),
                              "decoder_sparse_step must be a positive integer"),
    "config eos past the vocabulary": (_json("config.json", lambda d: {**d, "eos_token_id": d["vocab_size"]}),
                                       "eos_token_id .* outside the vocabulary"),
    "config bos past the vocabulary": (_json("config.json", lambda d: {**d, "bos_token_id": d["vocab_size"]}),
                                       "bos_token_id .* outside the vocabulary"),
    "generation temperature a string": (_json("generation_config.json", lambda d: {**d, "temperature": "hot"}),
                                        'generation_config.json: temperature must be a number >= 0, got "hot"'),
    "generation top_p 2": (_json("generation_config.json", lambda d: {**d, "top_p": 2}), "top_p must be a number in"),
    "generation top_k a string": (_json("generation_config.json", lambda d: {**d, "top_k": "x"}),
                                  "top_k must be an integer >= 0"),
    "generation do_sample a string": (_json("generation_config.json", lambda d: {**d, "do_sample": "yes"}),
                                      "do_sample must be true or false"),
    "generation eos past the vocabulary": (_json("generation_config.json", lambda d: {**d, "eos_token_id": [10 ** 6]}),
                                           "generation_config.json.*end-of-sequence token 1000000"),
}


# cases that need a tokenizer: the trained tiny Mixtral of tests/gguf_models.py has one, with a chat template
TOKENIZER_CASES = {
    "model_max_length a string": (_json("tokenizer_config.json", lambda d: {**d, "model_max_length": "64"}),
                                  "cannot load the tokenizer"),
    "tokenizer eos past the vocabulary": (_json("tokenizer_config.json", lambda d: {**d, "eos_token": "<|new end|>"}),
                                          "the tokenizer names end-of-sequence token"),
}


def _all_keys(d):
    header, _ = read_header(d / "model.safetensors")
    return [k for k in header if k != "__metadata__"]


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_directory_is_one_line(model_dir, case):
    corrupt, message = CASES[case]
    corrupt(model_dir)
    with pytest.raises(HymoeError, match=message) as err:
        llm = hymoe.load(model_dir, progress=False)
        llm.generate([1, 2, 3], max_new_tokens=2)  # a load that should have failed fails here at the latest
    assert "\n" not in str(err.value)


@pytest.fixture
def tokenizer_dir(gguf_model, tmp_path):
    d = tmp_path / "t"
    shutil.copytree(gguf_model("mixtral", "Q4_K")[0], d)
    return d


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
def test_a_broken_tokenizer_setting_is_one_line_at_load(tokenizer_dir, case):
    corrupt, message = TOKENIZER_CASES[case]
    corrupt(tokenizer_dir)
    with pytest.raises(HymoeError, match=message) as err:
        hymoe.load(tokenizer_dir, progress=False)  # at load, not at the first prompt
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("case", ["header a list", "index leaving out a tensor", "tokenizer.json {}"])
def test_the_cli_says_it_in_one_line(model_dir, case):
    CASES[case][0](model_dir)
    r = subprocess.run([sys.executable, "-m", "hymoe.cli", "generate", str(model_dir), "--prompt", "hi"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and CASES[case][1] in r.stderr


def test_a_valid_sharded_directory_still_loads(model_dir):
    names = _all_keys(model_dir)
    from safetensors.torch import load_file

    tensors = load_file(model_dir / "model.safetensors")
    half = len(names) // 2
    save_file({k: tensors[k] for k in names[:half]}, model_dir / "a.safetensors")
    save_file({k: tensors[k] for k in names[half:]}, model_dir / "b.safetensors")
    (model_dir / "model.safetensors").unlink()
    weight_map = {k: ("a" if i < half else "b") + ".safetensors" for i, k in enumerate(names)}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert hymoe.load(model_dir, progress=False).generate([1, 2, 3], max_new_tokens=2)


@pytest.mark.parametrize("template", ["{% for %}", "{{ raise_exception('roles must alternate') }}", "{{ x.y.z() }}"])
def test_a_broken_chat_template_fails_in_one_line_when_used(tokenizer_dir, template):
    (tokenizer_dir / "chat_template.jinja").write_text(template)
    llm = hymoe.load(tokenizer_dir, progress=False)  # the template is the model's code: it fails when run
    with pytest.raises(HymoeError, match="this model's chat template failed") as err:
        llm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert "\n" not in str(err.value)


def test_the_server_answers_a_broken_chat_template_with_400(tokenizer_dir):
    import httpx

    from hymoe.serve import timeouts
    from hymoe.serve.app import Server, build_app

    (tokenizer_dir / "chat_template.jinja").write_text("{{ raise_exception('roles must alternate') }}")
    server = Server(hymoe.load(tokenizer_dir, progress=False), "broken-template")
    uv, thread, port = timeouts.start_on_loopback(build_app(server))
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                       json={"model": "broken-template", "messages": [{"role": "user", "content": "hi"}]})
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        server.scheduler.close()
    assert r.status_code == 400 and "chat template failed" in r.json()["error"]["message"], r.text
