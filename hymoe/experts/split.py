"""GPU-resident hot experts: a layer's N most-used experts on the GPU, the rest on the CPU, concurrently.

The CPU job is submitted first with the hot experts' pairs marked -1 (skipped by the engine), the
GPU computes the hot pairs meanwhile, and the two partial sums are added.
"""
from __future__ import annotations

import torch

from hymoe.experts.base import ExpertBackend, ExpertWrapper
from hymoe.experts.torch_backend import TorchExperts


def uniform_hot(num_experts: int, n: int, layer: int) -> list[int]:
    """Without routing statistics: n experts spread evenly, shifted per layer."""
    step = num_experts / n
    return sorted({(int(i * step) + layer) % num_experts for i in range(n)})


class SplitExperts(ExpertWrapper):
    capture_refusal = "hot experts on the GPU"

    def __init__(self, wrapped: ExpertBackend, gpu: TorchExperts, hot: list[int], num_experts: int):
        self.wrapped, self.gpu = wrapped, gpu  # wrapped holds every expert; gpu the hot ones, in `hot` order
        # expert id -> row of `gpu`, or -1; one more entry, -1, which an id of -1 indexes
        self.local = torch.full((num_experts + 1,), -1, dtype=torch.long)
        self.local[torch.tensor(hot)] = torch.arange(len(hot))
        self._gpu_out: torch.Tensor | None = None

    @property
    def label(self) -> str:
        return self.wrapped.label + "+gpu-hot"

    def nbytes(self) -> int:
        return self.wrapped.nbytes() + self.gpu.nbytes()

    def submit(self, hidden, topk_ids, topk_weights) -> None:
        local = self.local.to(topk_ids.device)[topk_ids]  # [T, K] row on the GPU side, or -1
        self.wrapped.submit(hidden, topk_ids.masked_fill(local >= 0, -1), topk_weights)
        self._gpu_out = self.gpu.compute(hidden, local, topk_weights)

    def sync(self) -> torch.Tensor:
        gpu_out, self._gpu_out = self._gpu_out, None
        return self.wrapped.sync().to(gpu_out.device) + gpu_out
