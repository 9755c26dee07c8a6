"""A pass-through backend that counts how often each expert is routed to (for `hymoe calibrate`)."""
from __future__ import annotations

import torch

from hymoe.experts.base import ExpertBackend, ExpertWrapper


class CountingExperts(ExpertWrapper):
    capture_refusal = "routing counts"

    def __init__(self, wrapped: ExpertBackend, num_experts: int):
        self.wrapped, self.counts = wrapped, torch.zeros(num_experts, dtype=torch.long)  # [E] tokens routed

    def submit(self, hidden, topk_ids, topk_weights) -> None:
        ids = topk_ids.reshape(-1)
        self.counts += torch.bincount(ids[ids >= 0].cpu(), minlength=self.counts.numel())
        self.wrapped.submit(hidden, topk_ids, topk_weights)

    def sync(self) -> torch.Tensor:
        return self.wrapped.sync()
