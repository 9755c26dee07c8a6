"""Placement rules files: the presets are rule files, custom rules place units anywhere, and
rules that cannot mean anything get one clear error."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

import hymoe
from hymoe.errors import HymoeError
from hymoe.experts.native import NativeExperts, library
from hymoe.experts.torch_backend import TorchExperts
from hymoe.layers.moe import MoE
from hymoe.placement.rules import PRESETS

pytestmark = pytest.mark.skipif(library() is None, reason="the native CPU kernels are not built")
PROMPT = list(range(3, 40))
MIXED = r"""
rules:
  - {match: 'layers\.1\.mlp\.experts', device: gpu}
  - {match: 'layers\.0\.mlp\.experts', device: cpu, %s}
  - {match: '.*', device: gpu}
"""


def test_a_custom_rules_file_places_each_layer_and_agrees_with_cpu(tiny_model, tmp_path):
    hf_dir, _ = tiny_model("qwen2_moe")  # two MoE layers: 0 and 1
    cpu = hymoe.load(hf_dir, dtype="float32", progress=False, placement="cpu")
    want = cpu.logits(PROMPT)
    rules = tmp_path / "rules.yaml"
    rules.write_text(MIXED % "backend: torch")
    llm = hymoe.load(hf_dir, dtype="float32", progress=False, placement=str(rules))
    kinds = [type(m.experts) for m in llm.model.modules() if isinstance(m, MoE)]
    assert kinds == [TorchExperts, TorchExperts]  # layer 0 by rule 2 (torch on the CPU), layer 1 by rule 1
    assert llm.placement.is_async  # layer 0's dense part on the GPU side, its experts on the CPU
    assert (llm.logits(PROMPT) - want).abs().max().item() <= 1e-4
    rules.write_text(MIXED % "format: F32")
    llm = hymoe.load(hf_dir, dtype="float32", progress=False, placement=str(rules))
    layer0 = [m.experts for m in llm.model.modules() if isinstance(m, MoE)][0]
    assert isinstance(layer0, NativeExperts) and layer0.formats == ("F32",) * 3
    assert (llm.logits(PROMPT) - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["cpu", "hybrid", "gpu"])
def test_presets_are_rule_files(tiny_model, name):
    hf_dir, _ = tiny_model("mixtral")
    by_name = hymoe.load(hf_dir, progress=False, placement=name).placement
    by_file = hymoe.load(hf_dir, progress=False, placement=str(PRESETS / f"{name}.yaml")).placement
    assert by_name.targets == by_file.targets and by_name.is_async == by_file.is_async == (name == "hybrid")


BAD = {
    "rules:\n  - {match: 'layers\\.\\d+\\.self_attn', device: gpu}\n": "no rule places embed_tokens",
    "rules:\n  - {match: '.*', device: cpu}\n  - {match: 'norm', device: gpu}\n": "rule 2 (match 'norm') places nothing",
    "rules:\n  - {match: 'lm_head', device: gpu}\n  - {match: '.*', device: cpu}\n": "embed_tokens on cpu and lm_head on gpu",
    "rules:\n  - {match: 'layers\\.0\\.mlp', device: gpu}\n  - {match: '.*', device: cpu}\n":
        "layers.0.self_attn on cpu and layers.0.mlp on gpu",
    "rules:\n  - {match: '.*attn', device: cpu, backend: torch}\n  - {match: '.*', device: cpu}\n":
        "only routed experts have, and it matches layers.0.self_attn",
    "rules:\n  - {match: 'norm', device: cpu, format: Q8_0}\n  - {match: '.*', device: cpu}\n":
        "matches norm, which has no weights to quantize",
    "rules:\n  - {match: '.*', device: gpu, format: Q8_0}\n": "for layers.0.mlp.experts on the GPU",
    "rules:\n  - {match: '.*', device: gpu, backend: native}\n": "runs on the CPU, not on device gpu",
    "rules:\n  - {match: '.*', device: tpu}\n": "device must be cpu or gpu",
    "rules:\n  - {match: '.*', device: cpu, where: x}\n": "unknown key 'where'",
    "rules:\n  - {match: '(', device: cpu}\n": "bad regex",
    "rules: [\n": "not valid YAML",
    "placement: cpu\n": "a non-empty list `rules`",
}


@pytest.mark.parametrize("text,error", list(BAD.items()))
def test_bad_rules_get_one_clear_error(tiny_model, tmp_path, text, error):
    hf_dir, _ = tiny_model("mixtral")
    rules = tmp_path / "bad.yaml"
    rules.write_text(text)
    with pytest.raises(HymoeError, match=re.escape(error)):
        hymoe.load(hf_dir, progress=False, placement=str(rules))
    r = subprocess.run([sys.executable, "-m", "hymoe.cli", "inspect", str(hf_dir), "--placement", str(rules)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("hymoe: error:")


def test_inspect_prints_the_plan(tiny_model):
    hf_dir, _ = tiny_model("qwen2_moe")
    r = subprocess.run([sys.executable, "-m", "hymoe.cli", "inspect", str(hf_dir), "--placement", "layers:1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "gpu: layers.0.self_attn, layers.0.mlp, layers.0.mlp.experts" in r.stdout
    assert "cpu: embed_tokens, layers.1.self_attn, layers.1.mlp, layers.1.mlp.experts, norm, lm_head" in r.stdout
