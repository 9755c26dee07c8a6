"""KV retention policies (--kv-policy): which of a row's cached positions it keeps between passes.

A policy sees a row's live positions (in slot order, which is position order) and their
accumulated attention weight, and says which to keep; kv/retention.py applies the answer to the
row's blocks. One block table serves every layer, so a decision holds for all layers and heads.

- full: keep everything (the default, and exactly the engine without a policy).
- sink-window:S,W: StreamingLLM: the first S positions (the attention sinks) and the last W.
- h2o:B: H2O: B positions, the last B//2 (the recent window) and the B - B//2 older ones with the
  most attention weight, summed over every layer, head and query since they were written.
- topk-blocks:K: Quest: nothing is evicted; each query, in each layer, attends only the K blocks
  whose keys could score highest by their per-channel bounds, its own block always among them.
"""
from __future__ import annotations

import torch

from hymoe.errors import HymoeError

USAGE = ("use full, sink-window:S,W (S >= 0 first positions, W >= 1 last ones), h2o:B (B >= 2 positions) or "
         "topk-blocks:K (K >= 1 blocks per query)")


class Policy:
    """full: every position stays."""

    name = "full"
    is_full = True
    needs_mass = False  # whether the passes must sum each key's attention weight for it
    select_blocks = 0  # blocks each query attends (0: all of them)

    def keep(self, positions: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
        """positions [L] int64 (increasing), mass [L] float64 -> [L] bool, True = keep."""
        return torch.ones_like(positions, dtype=torch.bool)

    def __str__(self) -> str:
        return self.name


class SinkWindow(Policy):
    is_full = False

    def __init__(self, sink: int, window: int):
        self.sink, self.window = sink, window
        self.name = f"sink-window:{sink},{window}"

    def keep(self, positions: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
        last = int(positions.max()) if len(positions) else 0
        return (positions < self.sink) | (positions > last - self.window)


class HeavyHitters(Policy):
    is_full = False
    needs_mass = True

    def __init__(self, budget: int):
        self.budget, self.recent = budget, budget // 2
        self.name = f"h2o:{budget}"

    def keep(self, positions: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
        n = len(positions)
        kept = torch.ones(n, dtype=torch.bool)
        if n <= self.budget:
            return kept
        older = n - self.recent  # slots before the recent window compete by their weight
        kept[:older] = False
        kept[mass[:older].topk(self.budget - self.recent).indices] = True
        return kept


class TopKBlocks(Policy):
    is_full = False

    def __init__(self, blocks: int):
        self.select_blocks = blocks
        self.name = f"topk-blocks:{blocks}"


def parse_policy(text: str | Policy | None) -> Policy:
    """'full' | 'sink-window:S,W' | 'h2o:B' | 'topk-blocks:K' -> a Policy; anything else: one line
    saying what is accepted."""
    if isinstance(text, Policy):
        return text
    if text is None or text == "full":
        return Policy()
    name, _, arg = str(text).partition(":")
    try:
        values = [int(v) for v in arg.split(",")] if arg else []
    except ValueError:
        values = None
    if name == "sink-window" and values and len(values) == 2 and values[0] >= 0 and values[1] >= 1:
        return SinkWindow(*values)
    if name == "h2o" and values and len(values) == 1 and values[0] >= 2:
        return HeavyHitters(values[0])
    if name == "topk-blocks" and values and len(values) == 1 and values[0] >= 1:
        return TopKBlocks(values[0])
    raise HymoeError(f"--kv-policy {text!r}: {USAGE}")
