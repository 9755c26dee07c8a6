"""ExpertBackend: where one layer's routed experts are computed. Nothing above this seam knows which."""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import torch


class ExpertBackend(ABC):
    """submit() may return before the work is done; sync() waits and returns [T, H].

    Wrappers (GPU-resident split, deferral, GPU prefill, counting) hold the backend they wrap as
    `.cpu` and report its label."""

    label = "?"  # what computes the experts, as `LLM.experts_backend` and the benchmarks report it

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


class ExpertWrapper(ExpertBackend):
    """A backend around another (`self.cpu`): what it computes and holds is the wrapped one's."""

    cpu: ExpertBackend

    @property
    def label(self) -> str:
        return self.cpu.label

    def nbytes(self) -> int:
        return self.cpu.nbytes()


def cpu_part(experts: ExpertBackend) -> ExpertBackend:
    """The backend under any wrappers: the one that computes on the CPU."""
    while hasattr(experts, "cpu"):
        experts = experts.cpu
    return experts
