"""ExpertBackend: where one layer's routed experts are computed. Nothing above this seam knows which.

The contract every backend keeps (tests/test_expert_contract.py checks each one against it):
- Inputs: hidden [T, H] (any float dtype, any device), topk_ids [T, K] int64, topk_weights [T, K].
- An id of -1 means "this (token, slot) pair is computed elsewhere" (by a GPU-resident split, a
  deferred job, ...): the backend skips it and adds nothing for it. A row of all -1 gives zeros.
- The result is sum_k w[t, k] * down(silu(gate x_t) * up x_t) over expert ids[t, k]: [T, H]
  float32 on hidden's device. It may be a buffer the backend reuses at its next submit: the caller
  consumes it (adds it, copies it) before submitting to the same backend again.
- submit() may return before the work is done and sync() waits for it; compute() is both at once.
- twin() is a second handle on the same weights, so two jobs of one layer can be in flight.
- A wrapper (ExpertWrapper) holds the backend it wraps as `wrapped`; cpu_part() walks them down.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


class NotCapturable(Exception):
    """A backend whose submit and sync cannot be recorded in a CUDA graph; the message says why."""


@dataclass(frozen=True)
class StoredWeights:
    """One layer's experts in their stored GGUF blocks: gate and up hold I rows of H values per
    expert, down H rows of I, each uint8 [E, rows * row_bytes] in its own format."""

    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    formats: tuple[str, str, str]  # gate, up, down
    hidden: int
    inter: int

    @property
    def num_experts(self) -> int:
        return self.gate.shape[0]

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """(rows, n) of one expert's gate, up and down."""
        h, i = self.hidden, self.inter
        return (i, h), (i, h), (h, i)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.gate, self.up, self.down))


class ExpertBackend(ABC):
    """The contract is in the module docstring; `label` names what computes, as `LLM.experts_backend`
    and the benchmarks report it."""

    label = "?"

    @abstractmethod
    def submit(self, hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> None:
        """hidden [T, H], topk_ids [T, K] int64 (-1: skip the pair), topk_weights [T, K]."""

    @abstractmethod
    def sync(self) -> torch.Tensor:
        """The weighted sum over each token's experts of down(silu(gate x) * up x): [T, H] float32."""

    def compute(self, hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        """submit() and sync() in one call: [T, H] float32 on hidden's device."""
        self.submit(hidden, topk_ids, topk_weights)
        return self.sync()

    def nbytes(self) -> int:
        return 0

    def twin(self) -> "ExpertBackend":
        """A second handle on the same weights, so two jobs of one layer can be in flight."""
        return copy.copy(self)

    def stored_weights(self) -> StoredWeights | None:
        """The GGUF blocks this backend computes from, for code that moves or re-reads them (GPU
        prefill streams them to the GPU); None where it keeps none (torch weights)."""
        return None

    def graph_engine(self):
        """For CUDA graph capture (engine/cuda_graphs.py): the native engine whose host calls the
        graph must make. While the capture sets that engine's `capture`, submit() and sync() record
        their host work with `capture.host(fn)` (run between graph segments at replay) instead of
        doing it. Raises NotCapturable, saying why, where the backend cannot be captured."""
        raise NotCapturable(f"{self.label} experts")


class ExpertWrapper(ExpertBackend):
    """A backend around another (`self.wrapped`): what it computes and holds is the wrapped one's."""

    wrapped: ExpertBackend
    capture_refusal = "a wrapper around the experts"  # why CUDA graphs cannot capture it, said to the user

    @property
    def label(self) -> str:
        return self.wrapped.label

    def nbytes(self) -> int:
        return self.wrapped.nbytes()

    def twin(self) -> "ExpertWrapper":
        """This wrapper around a twin of the wrapped backend: a job of each can be in flight."""
        twin = copy.copy(self)
        twin.wrapped = self.wrapped.twin()
        return twin

    def stored_weights(self) -> StoredWeights | None:
        return self.wrapped.stored_weights()

    def graph_engine(self):
        raise NotCapturable(self.capture_refusal)


def cpu_part(experts: ExpertBackend) -> ExpertBackend:
    """The backend under any wrappers: the one that computes on the CPU."""
    while isinstance(experts, ExpertWrapper):
        experts = experts.wrapped
    return experts
