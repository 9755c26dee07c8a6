"""ExpertBackend: where one layer's routed experts are computed. Nothing above this seam knows which."""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import torch


class ExpertBackend(ABC):
    """submit() may return before the work is done; sync() waits and returns [T, H]."""

    @abstractmethod
    def submit(self, hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> None:
        """hidden [T, H], topk_ids [T, K] int64, topk_weights [T, K] float32."""

    @abstractmethod
    def sync(self) -> torch.Tensor:
        """The weighted sum over each token's experts of down(silu(gate x) * up x): [T, H]."""

    def nbytes(self) -> int:
        return 0

    def twin(self) -> "ExpertBackend":
        """A second handle on the same weights, so two jobs of one layer can be in flight."""
        return copy.copy(self)
