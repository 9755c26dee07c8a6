"""Preallocated KV cache: one buffer per layer and entry, rows = sequence slots, columns = positions.

Each attention layer declares what it stores (`cache_entries`): GQA keeps k and v, MLA keeps only
its compressed latent, which is what makes DeepSeek's cache small.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class Step:
    """Where one forward pass reads and writes: the same for every layer."""

    positions: torch.Tensor  # [B, T] absolute position of each new token
    rows: torch.Tensor | None  # [B] cache slot of each batch row; None = slots 0..B-1 in order
    kv_len: int  # S: positions 0..S-1 are attended
    mask: torch.Tensor  # [B, 1, T, S] bool, True = may attend
    window_mask: torch.Tensor | None = None  # the same, limited to a sliding window (layers that use one)

    @staticmethod
    def build(positions: torch.Tensor, kv_len: int, rows: torch.Tensor | None = None,
              window: int | None = None) -> "Step":
        keys = torch.arange(kv_len, device=positions.device)
        mask = keys <= positions[..., None]  # [B, T, S] causal over absolute positions
        window_mask = None
        if window:
            window_mask = mask & (keys > positions[..., None] - window)
            window_mask |= (positions >= kv_len)[..., None]  # padding rows: anything, so no row is empty
            window_mask = window_mask[:, None]
        return Step(positions, rows, kv_len, mask[:, None], window_mask)

    def to(self, device: torch.device) -> "Step":
        """The same step for layers on another device (layer-split placements)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Step(move(self.positions), move(self.rows), self.kv_len, move(self.mask), move(self.window_mask))


class KVCache:
    """Buffers have one scratch column past max_len: padding tokens write there and nothing reads it."""

    def __init__(self, layer_entries: list[dict[str, tuple[int, ...]]], num_slots: int, max_len: int,
                 dtype: torch.dtype, device: torch.device | str | list = "cpu"):
        self.num_slots, self.max_len = num_slots, max_len
        devices = device if isinstance(device, list) else [device] * len(layer_entries)  # one per layer
        # per layer: name -> [slots, max_len, *entry_shape], on that layer's device
        self.layers = [
            {name: torch.zeros(num_slots, max_len + 1, *shape, dtype=dtype, device=dev)
             for name, shape in entries.items()}
            for entries, dev in zip(layer_entries, devices)
        ]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.values())

    @staticmethod
    def write_read(buf: torch.Tensor, new: torch.Tensor, step: Step) -> torch.Tensor:
        """Store new [B, T, ...] at the step's positions, return rows' cached [B, S, ...]."""
        if step.rows is None:  # slots 0..B-1: a view, no gather
            batch = torch.arange(new.shape[0], device=buf.device)
            buf[batch[:, None], step.positions] = new.to(buf.dtype)
            return buf[: new.shape[0], : step.kv_len]
        buf[step.rows[:, None], step.positions] = new.to(buf.dtype)
        return buf[step.rows, : step.kv_len]
