"""The correct slower path for GGUF expert formats the native kernels do not compute.

Weights stay in their GGUF blocks; each call dequantizes only the experts its tokens use, one
expert at a time (gguf-py's decoder), and computes them with torch. hymoe says once that it took it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hymoe.errors import say_once
from hymoe.experts.base import ExpertBackend, StoredWeights
from hymoe.experts.torch_backend import TorchExperts
from hymoe.quant.formats import dequantize


def _tile(raw: torch.Tensor, fmt: str, rows: int, n: int) -> torch.Tensor:
    """One expert's uint8 blocks -> float32 [rows, n]."""
    return dequantize(raw, fmt, (rows, n))


class DequantExperts(ExpertBackend):
    label = "dequant"
    is_mapped = False  # views of a file's mapping (models/assemble.py): placement may keep them at no cost

    def __init__(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, formats: tuple[str, str, str],
                 hidden: int, inter: int):
        self.gate, self.up, self.down = gate, up, down  # uint8 [E, rows * row_bytes]
        self.formats, self.hidden, self.inter = formats, hidden, inter
        self._out: torch.Tensor | None = None

    def to_torch(self, dtype: torch.dtype) -> TorchExperts:
        """All experts dequantized: the portable torch backend (needs the float weights' memory)."""
        e, h, i = self.gate.shape[0], self.hidden, self.inter
        stacks = [torch.stack([_tile(t[j], f, r, n) for j in range(e)]).to(dtype)
                  for t, f, (r, n) in zip((self.gate, self.up, self.down), self.formats, ((i, h), (i, h), (h, i)))]
        return TorchExperts(*stacks)

    def subset(self, ids: list[int]) -> "DequantExperts":
        """Only experts `ids` (in that order), so dequantizing a few costs only their bytes."""
        idx = torch.tensor(ids)
        return type(self)(self.gate[idx], self.up[idx], self.down[idx], self.formats, self.hidden, self.inter)

    def nbytes(self) -> int:
        return sum(t.numel() for t in (self.gate, self.up, self.down))

    def stored_weights(self) -> StoredWeights:
        return StoredWeights(self.gate, self.up, self.down, self.formats, self.hidden, self.inter)

    def submit(self, hidden, topk_ids, topk_weights) -> None:
        for f in self.formats:  # said once, when the slow path first runs
            say_once(f"no native kernel for {f} experts; dequantizing one expert at a time (slow)")
        x = hidden.float().cpu()
        ids, w = topk_ids.cpu(), topk_weights.float().cpu()
        out = torch.zeros_like(x)
        h, i = self.hidden, self.inter
        for e in torch.unique(ids[ids >= 0]).tolist():  # the experts in use (-1: a pair computed elsewhere)
            rows, slots = (ids == e).nonzero(as_tuple=True)
            xs = x[rows]  # [n_e, H]
            g = xs @ _tile(self.gate[e], self.formats[0], i, h).T
            u = xs @ _tile(self.up[e], self.formats[1], i, h).T
            y = (F.silu(g) * u) @ _tile(self.down[e], self.formats[2], h, i).T
            out.index_add_(0, rows, y * w[rows, slots, None])
        self._out = out.to(hidden.device)

    def sync(self) -> torch.Tensor:
        out, self._out = self._out, None
        return out
