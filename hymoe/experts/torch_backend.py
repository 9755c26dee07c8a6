"""Portable reference backend: stacked [E, ...] weights, tokens grouped by expert with one sort.

The Python loop runs over experts that received tokens (at most E per layer call), never over tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hymoe.experts.base import ExpertBackend


class TorchExperts(ExpertBackend):
    label = "torch"

    def __init__(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor):
        # gate, up [E, I, H]; down [E, H, I]
        self.gate, self.up, self.down = gate, up, down
        self._out: torch.Tensor | None = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.gate, self.up, self.down))

    def to(self, device: torch.device | str) -> "TorchExperts":
        return TorchExperts(self.gate.to(device), self.up.to(device), self.down.to(device))

    def submit(self, hidden, topk_ids, topk_weights) -> None:
        self._out = self.compute(hidden, topk_ids, topk_weights)

    def sync(self) -> torch.Tensor:
        out, self._out = self._out, None
        return out

    def compute(self, hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        num_tokens, k = topk_ids.shape
        device = self.gate.device  # the weights' device computes; the caller's gets the result
        x = hidden.to(device, self.gate.dtype)
        topk_ids, topk_weights = topk_ids.to(device), topk_weights.to(device)
        flat = topk_ids.reshape(-1)  # [T*K]; id -1 = a pair computed elsewhere
        pair = torch.arange(flat.numel(), device=device)[flat >= 0]  # [P] kept pairs
        order = pair[flat[pair].argsort(stable=True)]  # kept pairs grouped by expert
        counts = torch.bincount(flat[pair], minlength=self.gate.shape[0]).tolist()
        token_of = order // k  # [P] token row of each grouped pair
        xs = x[token_of]  # [P, H]
        ys = torch.empty_like(xs)
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue
            seg = xs[start:start + count]  # [c, H]
            h = F.silu(seg @ self.gate[e].T) * (seg @ self.up[e].T)  # [c, I]
            ys[start:start + count] = h @ self.down[e].T
            start += count
        ys = ys.float() * topk_weights.reshape(-1)[order, None].float()
        out = torch.zeros(num_tokens, x.shape[1], dtype=torch.float32, device=x.device)
        return out.index_add_(0, token_of, ys).to(hidden.device)  # [T, H]
