"""The torch path of block-format linears (layers/linear.py), used on the GPU: the weight is
dequantized a bounded number of weights at a time, and that bound is what inspect's plan counts."""
from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from hymoe.layers import linear
from hymoe.layers.linear import DEQUANT_PEAK_BYTES, QuantLinear
from hymoe.quant.torch_dequant import dequantize_torch
from quant_utils import dequant, random_weights

FORMATS = ["Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_chunked_dequantized_matmul_equals_gguf_py(fmt, monkeypatch):
    w = random_weights(fmt, 50, 512, seed=3)
    layer = QuantLinear(512, 50, fmt, w)  # no kernel: the torch path, as on the GPU
    x = torch.randn(3, 512)
    want = x.double() @ dequant(fmt, w, 512).double().T
    whole = layer(x)
    monkeypatch.setattr(linear, "DEQUANT_CHUNK", 7 * 512)  # 7 rows a chunk: 8 chunks, the last short
    calls = []
    real = linear.dequantize_rows
    monkeypatch.setattr(linear, "dequantize_rows", lambda raw, *a: calls.append(raw.shape[0]) or real(raw, *a))
    chunked = layer(x)
    assert calls == [7] * 7 + [1]
    for got in (whole, chunked):
        assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_decoders_peak_within_the_planned_bytes_per_weight(fmt):
    """The running sum of torch.profiler's allocation events over one decode stays within
    DEQUANT_PEAK_BYTES a weight (inspect adds DEQUANT_CHUNK of them to a GPU's plan)."""
    rows, n = 64, 4096
    raw = random_weights(fmt, rows, n, seed=1)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        dequantize_torch(raw, fmt, (rows, n), torch.bfloat16)
    held = peak = 0
    for e in sorted(p.events(), key=lambda e: e.time_range.start):
        held += e.self_cpu_memory_usage
        peak = max(peak, held)
    assert 2 * rows * n <= peak <= DEQUANT_PEAK_BYTES * rows * n
