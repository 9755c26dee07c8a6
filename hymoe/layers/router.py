"""Top-k expert routing: softmax or sigmoid scores, optional group limits and score-correction bias."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hymoe.config import ModelConfig


class Router(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))
        if cfg.topk_method == "noaux_tc":
            self.e_score_correction_bias = nn.Parameter(torch.zeros(cfg.num_experts))
        self.cfg = cfg
        self.kernel = None  # set by placement: the same routing in one native call (experts/native_linear.py)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, H] -> topk_ids [T, K] int64, topk_weights [T, K] float32."""
        if self.kernel is not None:
            return self.kernel(x)
        cfg = self.cfg
        logits = F.linear(x.float(), self.weight.float())  # [T, E]; routing is always float32
        scores = logits.sigmoid() if cfg.scoring == "sigmoid" else logits.softmax(dim=-1)
        choice = scores
        if cfg.topk_method == "noaux_tc":
            choice = scores + self.e_score_correction_bias.float()
        if cfg.topk_method in ("noaux_tc", "group_limited_greedy") and cfg.num_groups > 1:
            grouped = choice.view(-1, cfg.num_groups, cfg.num_experts // cfg.num_groups)  # [T, Gr, E/Gr]
            if cfg.group_score == "top2-sum":  # V3, and every deepseek2 GGUF: the sum of the best two
                group_scores = grouped.topk(2, dim=-1).values.sum(-1)
            else:  # HF's V2 group_limited_greedy: the best one
                group_scores = grouped.max(dim=-1).values
            keep = group_scores.topk(cfg.topk_groups, dim=-1).indices  # [T, topk_groups]
            group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
            choice = grouped.masked_fill(~group_mask[..., None], float("-inf")).view_as(choice)
        ids = choice.topk(cfg.num_experts_per_tok, dim=-1).indices  # [T, K]
        weights = scores.gather(1, ids)  # the bias picks experts but never weighs them
        if cfg.is_norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return ids, weights * cfg.routed_scaling_factor
