"""Long-prompt prefill on the GPU side: the torch dequantizers against gguf-py, and hybrid with a
prefill threshold against cpu (without CUDA the GPU side is the CPU standing in, same code)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf.quants import dequantize, quantize

import hymoe
from hymoe.experts.gpu_prefill import GpuPrefillExperts
from hymoe.experts.native import library
from hymoe.layers.moe import MoE
from hymoe.quant.formats import qtype
from hymoe.quant.kquants import QUANTIZERS
from hymoe.quant.torch_dequant import dequantize_torch

PROMPT = list(range(3, 40))


@pytest.mark.parametrize("fmt", ["Q8_0", "Q4_0", "Q4_K"])
def test_torch_dequantizers_equal_gguf_py(fmt):
    w = np.random.default_rng(1).standard_normal((6, 512)).astype(np.float32) * 3
    raw = np.ascontiguousarray(QUANTIZERS[fmt](w) if fmt in QUANTIZERS else quantize(w, qtype(fmt)))
    want = dequantize(raw, qtype(fmt))
    got = dequantize_torch(torch.from_numpy(raw).view(torch.uint8).reshape(-1), fmt, (6, 512), torch.float32)
    assert np.array_equal(got.numpy(), want)


@pytest.mark.skipif(library() is None, reason="the native CPU kernels are not built")
@pytest.mark.parametrize("fmt,bound", [(None, 1e-4), ("Q8_0", 0.05)])
def test_prompts_past_the_threshold_compute_on_the_gpu_side(tiny_model, monkeypatch, fmt, bound):
    hf_dir, _ = tiny_model("deepseek_v3")
    cpu = hymoe.load(hf_dir, dtype="float32", progress=False, placement="cpu", experts_format=fmt)
    llm = hymoe.load(hf_dir, dtype="float32", progress=False, placement="hybrid", experts_format=fmt,
                     gpu_prefill_threshold=16)
    layers = [m.experts for m in llm.model.modules() if isinstance(m, MoE)]
    assert layers and all(isinstance(x, GpuPrefillExperts) for x in layers)
    calls = []
    for x in layers:
        x.chunk = 5  # several chunks of experts per layer (16 experts)
    real = layers[0].wrapped.submit
    monkeypatch.setattr(layers[0].wrapped, "submit", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    want = cpu.logits(PROMPT)
    assert (llm.logits(PROMPT) - want).abs().max().item() <= bound  # 37 tokens: the GPU side
    assert calls == []
    assert (llm.logits(PROMPT[:10]) - want[:10]).abs().max().item() <= bound  # 10 tokens: the CPU engine
    assert calls == [10]
    assert llm.generate(PROMPT, max_new_tokens=10, is_eos_ignored=True) == \
        cpu.generate(PROMPT, max_new_tokens=10, is_eos_ignored=True)


@pytest.mark.gpu
def test_gpu_prefill_on_cuda_agrees_with_cpu(tiny_model):
    hf_dir, _ = tiny_model("qwen2_moe")
    cpu = hymoe.load(hf_dir, dtype="float32", progress=False, placement="cpu", experts_format="Q8_0")
    llm = hymoe.load(hf_dir, dtype="float32", progress=False, placement="hybrid", device="cuda",
                     experts_format="Q8_0", gpu_prefill_threshold=16)
    assert (llm.logits(PROMPT) - cpu.logits(PROMPT)).abs().max().item() <= 0.05
    assert llm.generate(PROMPT, max_new_tokens=10, is_eos_ignored=True) == \
        cpu.generate(PROMPT, max_new_tokens=10, is_eos_ignored=True)


@pytest.mark.skipif(library() is None, reason="the native CPU kernels are not built")
def test_bench_prefill_reports_both_paths(tiny_model):
    import json
    import subprocess
    import sys

    hf_dir, _ = tiny_model("qwen2_moe")
    r = subprocess.run([sys.executable, "-m", "hymoe.cli", "bench", "prefill", str(hf_dir), "--tokens", "8,64",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout.splitlines()[-1])
    assert [x["prompt_tokens"] for x in rows] == [8, 64]
    for x in rows:
        assert x["cpu_experts_tokens_per_s"] > 0 and x["gpu_stream_tokens_per_s"] > 0
        assert x["is_gpu_faster"] == (x["gpu_stream_tokens_per_s"] > x["cpu_experts_tokens_per_s"])
    faster = [x["is_gpu_faster"] for x in rows]
    assert rows[0]["threshold"] == (64 if faster == [False, True] else 8 if all(faster) else None)
