"""Loading Hugging Face directories: sharded, tied, zero-copy, and every bad input named in one line."""
import ctypes
import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import save_file

import hymoe
from hymoe.errors import HymoeError
from hymoe.loader.safetensors_dir import SafetensorsDir


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_sharded_checkpoint_with_index_loads_identically(tiny_model, tmp_path):
    model_dir, hf = tiny_model("qwen2_moe")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ids = list(range(3, 30))
    a = hymoe.load(model_dir, dtype="float32", progress=False).logits(ids)
    b = hymoe.load(tmp_path / "sharded", dtype="float32", progress=False).logits(ids)
    assert torch.equal(a, b)


def test_float32_dense_weights_are_views_of_the_file(tiny_model):
    from hymoe.config import load_hf_config
    from hymoe.models import build_model
    from hymoe.models.assemble import load_weights

    model_dir, _ = tiny_model("mixtral")
    source = SafetensorsDir(model_dir)
    with torch.device("meta"):
        model = build_model(load_hf_config(model_dir))
    load_weights(model, source, torch.float32, progress=False)
    mm = source._where["model.embed_tokens.weight"]._map
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    for w in (model.embed_tokens.weight, model.layers[1].self_attn.q_proj.weight):
        assert base <= w.data_ptr() < base + len(mm)  # no copy: the parameter is the mapped file


def test_tied_embeddings_share_the_embedding(tiny_model):
    model_dir, _ = tiny_model("qwen3_moe_yarn_sparse_step")
    llm = hymoe.load(model_dir, dtype="float32", progress=False)
    assert llm.model.lm_head.weight is llm.model.embed_tokens.weight


def test_missing_directory():
    with pytest.raises(HymoeError, match="no such file"):
        hymoe.load("/nonexistent/model")


def test_unsupported_architecture_names_the_supported(tiny_model, tmp_path):
    d = _copy(tiny_model("mixtral")[0], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "llama4"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HymoeError, match="unsupported architecture 'llama4'.*deepseek_v3.*qwen3_moe.*mixtral"):
        hymoe.load(d)


def test_wrong_shape_names_the_tensor(tiny_model, tmp_path):
    d = _copy(tiny_model("mixtral")[0], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HymoeError, match=r"tensor model\.layers\.0\.block_sparse_moe\.experts\.0\.w1\.weight has shape"):
        hymoe.load(d, progress=False)


def test_missing_tensor_is_named(tiny_model, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    src = tiny_model("qwen3_moe")[0]
    shutil.copy(src / "config.json", d)
    tensors = dict(SafetensorsDir(src)._where)
    kept = {n: SafetensorsDir(src).get(n).clone() for n in tensors if "layers.2.self_attn.k_norm" not in n}
    save_file(kept, d / "model.safetensors")
    with pytest.raises(HymoeError, match=r"missing tensor model\.layers\.2\.self_attn\.k_norm\.weight"):
        hymoe.load(d, progress=False)


def test_truncated_safetensors(tiny_model, tmp_path):
    d = _copy(tiny_model("mixtral")[0], tmp_path / "m")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(HymoeError, match="truncated"):
        hymoe.load(d, progress=False)
    f.write_bytes(data[:5])
    with pytest.raises(HymoeError, match="truncated"):
        hymoe.load(d, progress=False)


def test_corrupt_safetensors_header(tiny_model, tmp_path):
    d = _copy(tiny_model("mixtral")[0], tmp_path / "m")
    f = d / "model.safetensors"
    f.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 64)
    with pytest.raises(HymoeError, match="corrupt safetensors header"):
        hymoe.load(d, progress=False)


def test_prompt_longer_than_context(tiny_model):
    llm = hymoe.load(tiny_model("mixtral")[0], dtype="float32", max_context=16, progress=False)
    with pytest.raises(HymoeError, match="the prompt has 20 tokens; the context holds 16"):
        llm.generate(list(range(20)), max_new_tokens=4)


def test_generation_stops_at_the_context(tiny_model):
    llm = hymoe.load(tiny_model("mixtral")[0], dtype="float32", max_context=16, progress=False)
    assert len(llm.generate(list(range(10)), max_new_tokens=50, is_eos_ignored=True)) == 7


@pytest.mark.parametrize("edit, match", [
    (lambda c: [c], "holds a list, not an object"),
    (lambda c: {**c, "num_hidden_layers": -1}, "num_layers must be a positive integer"),
    (lambda c: {**c, "hidden_size": "64"}, "hidden_size must be a positive integer"),
    (lambda c: {**c, "num_experts_per_tok": 0}, "experts per token"),
    (lambda c: {**c, "num_experts_per_tok": 99}, "experts per token"),
    (lambda c: {**c, "rms_norm_eps": -1}, "rms_norm_eps must be a positive finite number"),
    (lambda c: {**c, "eos_token_id": "end"}, "wrong type"),
    (lambda c: {**c, "n_group": 3, "topk_group": 1}, "groups must divide the experts"),
    (lambda c: {**c, "n_group": 4, "topk_group": 5}, "groups must divide the experts"),
])
def test_a_config_no_model_can_have_is_one_line(tiny_model, tmp_path, edit, match):
    """Validated in one place (config.py), for HF directories and GGUF metadata alike."""
    import json

    d = _copy(tiny_model("deepseek_v3")[0], tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(edit(config)))
    with pytest.raises(HymoeError, match=match):
        hymoe.load(d, progress=False)
