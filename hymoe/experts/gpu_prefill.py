"""Long prompts on the GPU: at `threshold` tokens or more, one layer's expert weights are streamed
to the GPU in their stored (smaller) format, a chunk of experts at a time, dequantized there and
computed with torch; below it, the CPU backend computes as usual. Copying a layer's experts costs
about the same at any prompt length while CPU time grows with it, so past a measured token count
(`hymoe bench e2e ... --placement hybrid+prefillN`) streaming wins.
"""
from __future__ import annotations

import torch

from hymoe.experts.base import ExpertBackend, ExpertWrapper
from hymoe.experts.torch_backend import TorchExperts
from hymoe.quant.torch_dequant import dequantize_torch

CHUNK_BYTES = 1 << 30  # stored bytes streamed per step: bounds the GPU memory this takes


class GpuPrefillExperts(ExpertWrapper):
    capture_refusal = "GPU prefill"

    def __init__(self, wrapped: ExpertBackend, gpu: torch.device, threshold: int, dtype: torch.dtype):
        self.stored = wrapped.stored_weights()  # the blocks streamed; the wrapped backend computes from them too
        assert self.stored is not None, "GPU prefill streams stored GGUF blocks; this backend keeps none"
        self.wrapped, self.gpu, self.threshold, self.dtype = wrapped, gpu, threshold, dtype
        self.chunk = max(1, CHUNK_BYTES // (self.stored.nbytes() // self.stored.num_experts))
        self._out: torch.Tensor | None = None

    def submit(self, hidden, topk_ids, topk_weights) -> None:
        if hidden.shape[0] < self.threshold:
            self._out = None
            self.wrapped.submit(hidden, topk_ids, topk_weights)
            return
        s, num_experts = self.stored, self.stored.num_experts
        x, ids, w = hidden.to(self.gpu), topk_ids.to(self.gpu), topk_weights.to(self.gpu)
        out = torch.zeros(x.shape, dtype=torch.float32, device=self.gpu)  # [T, H]
        for e0 in range(0, num_experts, self.chunk):
            e1 = min(e0 + self.chunk, num_experts)
            local = torch.where((ids >= e0) & (ids < e1), ids - e0, -1)  # [T, K] row in this chunk, or -1
            weights = [dequantize_torch(raw[e0:e1].to(self.gpu, non_blocking=True), fmt, (e1 - e0, *shape), self.dtype)
                       for raw, fmt, shape in zip((s.gate, s.up, s.down), s.formats, s.shapes)]
            out += TorchExperts(*weights).compute(x, local, w).float()
        self._out = out.to(hidden.device)

    def sync(self) -> torch.Tensor:
        if self._out is None:
            return self.wrapped.sync()
        out, self._out = self._out, None
        return out
