"""The decoder skeleton every family shares: embed -> N x (attention, feed-forward) -> norm -> head.

A family file supplies only how to build one layer's attention and feed-forward, and the table
that renames hymoe's parameter names to the checkpoint's.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from hymoe.config import ModelConfig
from hymoe.kv.cache import KVCache, Step
from hymoe.layers.norm import RMSNorm
from hymoe.layers.rope import Rope


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, self_attn: nn.Module, mlp: nn.Module):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = self_attn
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = mlp
        self.native_step = None  # set by placement: the whole layer in one native call (experts/native_layer.py)

    def forward(self, x, step, cache, cos_sin):
        if self.native_step is not None and (out := self.native_step(x, step, cache, cos_sin)) is not None:
            return out
        x = x + self.self_attn(self.input_layernorm(x), step, cache, cos_sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    # hymoe name fragment -> checkpoint name fragment, applied in order (family files extend it)
    renames: tuple[tuple[str, str], ...] = ()
    # checkpoint names of one expert's (gate, up, down) projections
    expert_names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")

    def __init__(self, cfg: ModelConfig, build_layer: Callable[[ModelConfig, int, Rope], DecoderLayer]):
        super().__init__()
        self.cfg = cfg
        self.rope = Rope(cfg.rope, cfg.head_dim)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(build_layer(cfg, i, self.rope) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # set by placement: the layers and final norm in one native call (experts/native_layer.py)
        self.native_stack = None

    def cache_entries(self) -> list[dict[str, tuple[int, ...]]]:
        return [layer.self_attn.cache_entries() for layer in self.layers]

    def forward(self, token_ids: torch.Tensor, step: Step, cache: KVCache) -> torch.Tensor:
        """token_ids [B, T] -> final hidden states [B, T, H] (after the last norm)."""
        x = self.embed_tokens(token_ids)
        if self.native_stack is not None and (out := self.native_stack(x, step, cache.layers, self.rope)) is not None:
            return out  # the layers and the final norm, rotating by the rope's table
        cos_sin = self.rope.cos_sin(step.positions, x.dtype)
        on = {x.device: (step, cos_sin)}  # what each device's layers read, moved once per forward
        for layer, layer_cache in zip(self.layers, cache.layers):
            dev = layer.input_layernorm.weight.device
            if dev not in on:
                on[dev] = (step.to(dev), tuple(t.to(dev) for t in cos_sin))
            x = layer(x.to(dev), *on[dev][:1], layer_cache, on[dev][1])
        return self.norm(x.to(self.norm.weight.device))

    def decode_logits(self, token_ids: torch.Tensor, step: Step, cache: KVCache) -> tuple[torch.Tensor, list[int]] | None:
        """A decode step (token_ids [B, 1]) to float32 logits [B, V] and each row's greedy pick, the
        embedding and head in the native stack's call (their Python, cold after the weights streamed,
        cost more than the head's weights); None where that call does not take the step (then
        forward, then head)."""
        if not self.decodes_steps:
            return None
        return self.native_stack.logits(token_ids, step, cache.layers, self.rope)

    @property
    def decodes_steps(self) -> bool:
        """Whether decode_logits and decode_steps may take a batch: a native stack with the
        embedding and head."""
        return self.native_stack is not None and self.native_stack.head is not None

    def decode_steps(self, token_ids: torch.Tensor, step: Step, cache: KVCache, steps: int) -> list[list[int]] | None:
        """`steps` greedy decode steps from token_ids [B, 1] in the native stack's one call: each
        row's picks [steps][B]; None where that call does not take them."""
        if not self.decodes_steps:
            return None
        return self.native_stack.decode_steps(token_ids, step, cache.layers, self.rope, steps)

    def layer_devices(self) -> list[torch.device]:
        return [layer.input_layernorm.weight.device for layer in self.layers]

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden)
        return logits if logits.dtype is torch.float32 else logits.float()

    def stacked_expert_names(self, moe_prefix: str) -> list[str]:
        """Checkpoint names of one MoE layer's stacked (gate, up, down) experts, as GGUF stores them."""
        return [self.checkpoint_name(f"{moe_prefix}.experts.{p}.weight") for p in self.expert_names]

    def checkpoint_name(self, name: str) -> str:
        """hymoe parameter name -> the checkpoint's tensor name."""
        for ours, theirs in self.renames:
            name = name.replace(ours, theirs)
        return name if name.startswith("lm_head.") else "model." + name
