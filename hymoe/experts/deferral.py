"""Expert deferral (KTransformers' idea): each token's K lowest-weighted routed experts of a layer
are computed while the next layer's attention runs on the GPU, and their output joins the residual
stream at the next MoE layer's output instead of this one's. It trades a small accuracy cost for
overlap; off unless asked for (--defer-experts K). The last MoE layer defers nothing.
"""
from __future__ import annotations

import torch

from hymoe.experts.base import ExpertBackend, ExpertWrapper


class DeferralChain:
    """What one model's consecutive CPU-side MoE layers hand each other: the job still running."""

    def __init__(self):
        self.pending: ExpertBackend | None = None

    def take(self) -> torch.Tensor | None:
        job, self.pending = self.pending, None
        return None if job is None else job.sync()


class DeferredExperts(ExpertWrapper):
    capture_refusal = "expert deferral"

    def __init__(self, wrapped: ExpertBackend, chain: DeferralChain, num_deferred: int, is_first: bool, is_last: bool):
        self.wrapped, self.later = wrapped, wrapped.twin()  # two jobs of this layer may be in flight
        self.chain, self.num_deferred, self.is_first, self.is_last = chain, num_deferred, is_first, is_last
        self._deferred = None

    def twin(self) -> "DeferredExperts":
        return DeferredExperts(self.wrapped.twin(), self.chain, self.num_deferred, self.is_first, self.is_last)

    def submit(self, hidden, topk_ids, topk_weights) -> None:
        if self.is_first:
            self.chain.take()  # a forward that failed midway may have left a job behind
        if self.is_last or self.num_deferred <= 0:
            self.wrapped.submit(hidden, topk_ids, topk_weights)
            self._deferred = None
            return
        lowest = topk_weights.argsort(dim=-1)[:, : self.num_deferred]  # [T, K] the K lowest-weighted
        is_later = torch.zeros_like(topk_ids, dtype=torch.bool).scatter_(1, lowest, True)
        self.wrapped.submit(hidden, topk_ids.masked_fill(is_later, -1), topk_weights)
        self._deferred = (hidden, topk_ids.masked_fill(~is_later, -1), topk_weights)

    def sync(self) -> torch.Tensor:
        out = self.wrapped.sync()
        earlier = self.chain.take()  # the previous MoE layer's deferred experts
        if earlier is not None:
            out = out + earlier.to(out.device)
        if self._deferred is not None:
            self.later.submit(*self._deferred)  # runs on while the next layer's attention does
            self.chain.pending, self._deferred = self.later, None
        return out
