import torch
import torch.nn.functional as F
from torch import nn

from hymoe.layers.linear import project


class MLP(nn.Module):
    """SwiGLU feed-forward: dense layers and shared experts."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def input_groups(self) -> list[tuple[nn.Module, ...]]:
        """Linears that read the same input, which placement may compute in one call."""
        return [(self.gate_proj, self.up_proj)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project(x, self.gate_proj, self.up_proj)
        return self.down_proj(F.silu(gate) * up)
