"""Placements compute the same model: cpu (experts in the calling thread) and hybrid (dense part on
its own device slot, routed experts submitted to the CPU pool and overlapped with the shared experts)."""
from __future__ import annotations

import pytest
import torch

import hymoe
from hymoe.errors import HymoeError
from hymoe.experts.native import NativeExperts, library
from hymoe.layers.moe import MoE

pytestmark = pytest.mark.skipif(library() is None, reason="the native CPU kernels are not built")
PROMPT = list(range(3, 40))


@pytest.mark.parametrize("name", ["deepseek_v3", "qwen2_moe", "mixtral"])
def test_layer_split_and_gpu_placements_agree_with_cpu(tiny_model, name):
    """layers:N keeps N whole layers (torch experts) on the GPU side, the rest on the CPU (native)."""
    hf_dir, _ = tiny_model(name)
    cpu = hymoe.load(hf_dir, dtype="float32", progress=False, placement="cpu")
    want = cpu.logits(PROMPT)
    greedy = cpu.generate(PROMPT, max_new_tokens=12, is_eos_ignored=True)
    for placement in ("layers:1", "layers:2", "gpu"):
        llm = hymoe.load(hf_dir, dtype="float32", progress=False, placement=placement)
        n = llm.config.num_layers if placement == "gpu" else int(placement[7:])
        kinds = [type(layer.mlp.experts).__name__ for layer in llm.model.layers if isinstance(layer.mlp, MoE)]
        moe_index = [i for i, layer in enumerate(llm.model.layers) if isinstance(layer.mlp, MoE)]
        assert kinds == ["TorchExperts" if i < n else "NativeExperts" for i in moe_index], placement
        assert all(d == llm.placement.gpu for d in llm.model.layer_devices()[:n])
        assert (llm.logits(PROMPT) - want).abs().max().item() <= 1e-4, placement
        assert llm.generate(PROMPT, max_new_tokens=12, is_eos_ignored=True) == greedy, placement


@pytest.mark.parametrize("name", ["deepseek_v3", "qwen2_moe", "mixtral"])
def test_cpu_and_hybrid_agree(tiny_model, name):
    hf_dir, _ = tiny_model(name)
    cpu = hymoe.load(hf_dir, dtype="float32", progress=False, placement="cpu")
    hybrid = hymoe.load(hf_dir, dtype="float32", progress=False, placement="hybrid")
    engines = {m.experts.engine.is_async for llm in (cpu, hybrid) for m in llm.model.modules()
               if isinstance(m, MoE) and isinstance(m.experts, NativeExperts)}
    assert engines == {False, True}  # hybrid really submits and overlaps; cpu runs in the caller
    assert (cpu.logits(PROMPT) - hybrid.logits(PROMPT)).abs().max().item() <= 1e-4
    assert cpu.generate(PROMPT, max_new_tokens=16, is_eos_ignored=True) == \
        hybrid.generate(PROMPT, max_new_tokens=16, is_eos_ignored=True)


def test_default_and_unknown_placements(tiny_model):
    hf_dir, _ = tiny_model("mixtral")
    llm = hymoe.load(hf_dir, progress=False)
    assert llm.placement.name == ("hybrid" if torch.cuda.is_available() else "cpu")
    with pytest.raises(HymoeError, match="unknown placement 'layers:x'"):
        hymoe.load(hf_dir, progress=False, placement="layers:x")
    with pytest.raises(HymoeError, match="asks for 9 layers; the model has 2"):
        hymoe.load(hf_dir, progress=False, placement="layers:9")
    with pytest.raises(HymoeError, match="contradicts"):
        hymoe.load(hf_dir, progress=False, placement="cpu", device="cuda")


def test_bench_e2e_reports_each_placement(tiny_model):
    import json
    import subprocess
    import sys

    hf_dir, _ = tiny_model("qwen2_moe")
    r = subprocess.run([sys.executable, "-m", "hymoe.cli", "bench", "e2e", str(hf_dir), "--placement", "cpu,hybrid",
                        "--prompt-tokens", "16", "--gen-tokens", "4", "--json"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout.splitlines()[-1])
    assert [x["placement"] for x in rows] == ["cpu", "hybrid"]
    for x in rows:
        assert x["prefill_tokens_per_s"] > 0 and x["decode_tokens_per_s"] > 0 and 0 < x["cpu_busy"] <= 1
        assert 0 < x["experts_busy"] <= 1.05  # the engine's own clock against the decode wall time
        assert x["decode_bound_tokens_per_s"] == pytest.approx(x["bandwidth_gbps"] * 1e9 / x["cpu_bytes_per_token"],
                                                             rel=1e-2)
        assert (x["gpu_busy"] is None) == (x["gpu"] is None or not x["gpu"].startswith("cuda"))
        assert (x["gpu"] is None) == (x["placement"] == "cpu")


def test_bench_variants_parse_and_refuse_typos():
    from hymoe.bench.e2e import parse_variant

    assert parse_variant("hybrid+gpu16+defer2+prefill512+eager", 0, 0) == ("hybrid", dict(
        gpu_experts="16", defer_experts=2, gpu_prefill_threshold=512, cuda_graphs=False))
    assert parse_variant("layers:2", 8, 1) == ("layers:2", dict(
        gpu_experts="0", defer_experts=0, gpu_prefill_threshold=0, cuda_graphs=True))
    assert parse_variant("hybrid+dequant", 0, 0)[1]["gpu_dense_kernel"] == "dequant"
    with pytest.raises(HymoeError, match="unknown placement option 'x'"):
        parse_variant("hybrid+x", 0, 0)


@pytest.mark.gpu
@pytest.mark.parametrize("placement,hot", [("hybrid", 0), ("hybrid", 3), ("layers:2", 0), ("gpu", 0)])
def test_placements_on_cuda_agree_with_cpu(tiny_model, placement, hot):
    """On a real GPU: hidden states, KV cache and RoPE tables cross devices between layers."""
    hf_dir, _ = tiny_model("deepseek_v3")
    want = hymoe.load(hf_dir, dtype="float32", progress=False, placement="cpu").logits(PROMPT)
    llm = hymoe.load(hf_dir, dtype="float32", progress=False, placement=placement, device="cuda", gpu_experts=hot)
    assert llm.placement.gpu.type == "cuda"
    assert (llm.logits(PROMPT) - want).abs().max().item() <= 1e-3


@pytest.mark.gpu
def test_hybrid_on_cuda_decodes_like_cpu_through_pinned_buffers(tiny_model):
    """Prefill then decode (T changes every step): activations cross through page-locked buffers
    with asynchronous copies, and the greedy tokens still equal the CPU's."""
    hf_dir, _ = tiny_model("qwen2_moe")
    cpu = hymoe.load(hf_dir, dtype="float32", progress=False, placement="cpu")
    llm = hymoe.load(hf_dir, dtype="float32", progress=False, placement="hybrid", device="cuda")
    assert llm.generate(PROMPT, max_new_tokens=24, is_eos_ignored=True) == \
        cpu.generate(PROMPT, max_new_tokens=24, is_eos_ignored=True)
    native = [m.experts for m in llm.model.modules() if isinstance(m, MoE)]
    assert native and all(n._staging.bufs[0].is_pinned() for n in native)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["deepseek_v3", "qwen2_moe"])
def test_cuda_graph_decode_gives_cpu_tokens(tiny_model, name):
    """hybrid decode steps replayed as CUDA graph segments (batch 2 with different prompt lengths,
    then batch 1) decode the same greedy tokens as cpu; with hot experts the step stays eager."""
    from hymoe.engine.generate import generate
    from hymoe.engine.sampler import SamplingParams

    hf_dir, _ = tiny_model(name)
    cpu = hymoe.load(hf_dir, dtype="float32", progress=False, placement="cpu")
    llm = hymoe.load(hf_dir, dtype="float32", progress=False, placement="hybrid", device="cuda")
    prompts, params = [PROMPT, PROMPT[:20]], SamplingParams(max_new_tokens=12, is_eos_ignored=True)
    want = [c.token_ids for c in cpu.generate_batch(prompts, params)[0]]
    for batch in (prompts, prompts[:1]):
        runner = llm.runner(len(batch), 64)
        got = [c.token_ids for c in generate(runner, batch, params, ())[0]]
        assert runner.graphs.reason is None and len(batch) in runner.graphs.graphs
        assert got == want[: len(batch)]
    hot = hymoe.load(hf_dir, dtype="float32", progress=False, placement="hybrid", device="cuda", gpu_experts=2)
    runner = hot.runner(1, 64)
    got = [c.token_ids for c in generate(runner, prompts[:1], params, ())[0]]
    assert runner.graphs.reason is not None and not runner.graphs.graphs and got == want[:1]


@pytest.mark.gpu
def test_deferral_and_hot_experts_on_cuda_agree_with_cpu(tiny_model):
    """Deferred jobs cross pinned buffers one layer later; hot experts computed on the GPU."""
    hf_dir, _ = tiny_model("deepseek_v3")
    for kw in (dict(defer_experts=2), dict(defer_experts=1, gpu_experts=4)):
        cpu = hymoe.load(hf_dir, dtype="float32", progress=False, placement="cpu", defer_experts=kw["defer_experts"])
        llm = hymoe.load(hf_dir, dtype="float32", progress=False, placement="hybrid", device="cuda", **kw)
        assert (llm.logits(PROMPT) - cpu.logits(PROMPT)).abs().max().item() <= 1e-3, kw
        assert llm.generate(PROMPT, max_new_tokens=12, is_eos_ignored=True) == \
            cpu.generate(PROMPT, max_new_tokens=12, is_eos_ignored=True), kw


@pytest.mark.parametrize("name", ["deepseek_v3", "qwen2_moe"])
def test_gpu_resident_hot_experts_agree_with_cpu(tiny_model, name):
    """hybrid --gpu-experts N: the CPU job skips the hot experts' pairs, the GPU side computes them."""
    from hymoe.experts.split import SplitExperts

    hf_dir, _ = tiny_model(name)
    cpu = hymoe.load(hf_dir, dtype="float32", progress=False, placement="cpu")
    llm = hymoe.load(hf_dir, dtype="float32", progress=False, placement="hybrid", gpu_experts=3)
    splits = [m.experts for m in llm.model.modules() if isinstance(m, MoE)]
    assert splits and all(isinstance(s, SplitExperts) and s.gpu.gate.shape[0] == 3 for s in splits)
    assert (llm.logits(PROMPT) - cpu.logits(PROMPT)).abs().max().item() <= 1e-4
    assert llm.generate(PROMPT, max_new_tokens=12, is_eos_ignored=True) == \
        cpu.generate(PROMPT, max_new_tokens=12, is_eos_ignored=True)
    with pytest.raises(HymoeError, match="needs --placement hybrid"):
        hymoe.load(hf_dir, progress=False, placement="cpu", gpu_experts=2)


STACK_RULES = r"""
rules:
  - {match: 'layers\.1\.mlp\.experts', device: gpu}
  - {match: 'layers\.\d+\.mlp\.experts', device: cpu}
  - {match: '.*', device: gpu}
"""


def test_wrappers_nest_in_their_order_around_each_cpu_side_layer(tiny_model, tmp_path):
    """hybrid with every wrapper: deferral around the hot-expert split around GPU prefill around the
    native engine, as placement.experts.WRAPPERS orders them. 8 of 16 experts hot puts layer 1's last expert
    on the GPU side, where no pair that deferral marked -1 may reach it. A layer whose experts a rule
    puts on the GPU (layer 1 here, by index) stays unwrapped, and the CPU-side layer after it, the
    only and last one, defers nothing."""
    from hymoe.experts.base import cpu_part
    from hymoe.experts.deferral import DeferredExperts
    from hymoe.experts.gpu_prefill import GpuPrefillExperts
    from hymoe.experts.split import SplitExperts
    from hymoe.experts.torch_backend import TorchExperts

    hf_dir, _ = tiny_model("deepseek_v3")  # MoE layers 1 and 2
    kw = dict(dtype="float32", progress=False, defer_experts=1)
    want = hymoe.load(hf_dir, placement="cpu", **kw).logits(PROMPT)
    llm = hymoe.load(hf_dir, placement="hybrid", gpu_experts=8, gpu_prefill_threshold=16, **kw)
    stacks = [m.experts for m in llm.model.modules() if isinstance(m, MoE)]
    nesting = [DeferredExperts, SplitExperts, GpuPrefillExperts, NativeExperts]
    assert [[type(s), type(s.wrapped), type(s.wrapped.wrapped), type(cpu_part(s))] for s in stacks] == [nesting] * 2
    assert [(s.is_first, s.is_last) for s in stacks] == [(True, False), (False, True)]
    assert int(stacks[0].wrapped.local[15]) >= 0  # layer 1's last expert is hot
    assert (llm.logits(PROMPT) - want).abs().max().item() <= 1e-4  # 37 tokens: streamed to the GPU side
    assert (llm.logits(PROMPT[:10]) - want[:10]).abs().max().item() <= 1e-4  # 10: on the CPU engine
    rules = tmp_path / "rules.yaml"
    rules.write_text(STACK_RULES)
    llm = hymoe.load(hf_dir, placement=str(rules), gpu_experts=8, **kw)
    kept, placed = (m.experts for m in llm.model.modules() if isinstance(m, MoE))
    assert type(kept) is TorchExperts
    assert [type(placed), type(placed.wrapped), placed.is_first, placed.is_last] == [DeferredExperts, SplitExperts,
                                                                                     True, True]
    plain = hymoe.load(hf_dir, dtype="float32", progress=False, placement="cpu").logits(PROMPT)
    assert (llm.logits(PROMPT) - plain).abs().max().item() <= 1e-4
