"""The MoE seam. Routing is known first, so the routed-expert job is submitted to its backend
before the shared expert runs; the backend may compute elsewhere (CPU threads) meanwhile."""
from __future__ import annotations

import torch
from torch import nn

from hymoe.experts.base import ExpertBackend
from hymoe.layers.mlp import MLP
from hymoe.layers.router import Router


class MoE(nn.Module):
    def __init__(self, router: Router, shared: MLP | None = None, shared_gate: nn.Linear | None = None):
        super().__init__()
        self.gate = router
        self.shared_experts = shared
        self.shared_expert_gate = shared_gate
        if shared_gate is not None:
            shared_gate.keeps_float = True  # one row that scales a whole expert: llama.cpp keeps it F32 too
        self.experts: ExpertBackend | None = None  # set by models/assemble.py: weights live outside the module tree

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # [B*T, H]
        topk_ids, topk_weights = self.gate(flat)
        self.experts.submit(flat, topk_ids, topk_weights)
        out = None
        if self.shared_experts is not None:
            out = self.shared_experts(flat)
            if self.shared_expert_gate is not None:
                out = torch.sigmoid(self.shared_expert_gate(flat)) * out
        routed = self.experts.sync().to(flat.dtype)
        out = routed if out is None else out + routed
        return out.view_as(x)
