"""Where each part of a loaded model computes: a transform applied to a plain model.

Rules (rules.py, presets/) say which device each unit goes to; this resolves them and moves each
layer's dense part and the ends there. experts.py puts the routed experts on their backends and
wraps them; kernels.py gives each dense part its kernel; options.py carries the user's choices.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hymoe.errors import HymoeError
from hymoe.experts.dequant_backend import DequantExperts
from hymoe.layers.moe import MoE
from hymoe.placement.rules import load_rules, plan

@dataclass(frozen=True)
class Placement:
    """Where each unit of the model computes (rules.py). `gpu` is the CUDA device, or on a CPU-only
    machine the CPU standing in for it, so the same orchestration runs (and is tested) everywhere."""

    name: str
    device: torch.device  # the ends (embedding, final norm, head): token ids go in and logits come out here
    gpu: torch.device
    targets: dict = field(compare=False)  # unit -> rules.Target

    def device_of(self, unit: str) -> torch.device:
        return self.gpu if self.targets[unit].device == "gpu" else torch.device("cpu")

    @property
    def is_async(self) -> bool:
        """Some MoE layer's dense part is on the GPU side and its experts on the CPU: the CPU expert
        job is submitted and overlapped with the dense side's work."""
        return any(u.endswith(".experts") and t.device == "cpu" and self.targets[u[:-8]].device == "gpu"
                   for u, t in self.targets.items())


def resolve_placement(name: str | None, cfg, device: str | None = None) -> Placement:
    """cpu: everything on the CPU, experts in the calling thread with the pool's help.
    hybrid: dense part on the GPU, routed experts on the CPU pool at the same time (each MoE layer
    submits its expert job, computes the shared experts meanwhile, then waits only for the result).
    layers:N: the first N whole layers on the GPU, the rest entirely on the CPU (llama.cpp's -ngl).
    gpu: everything on the GPU. Or a YAML rules file (rules.py)."""
    gpu = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if gpu.type == "cuda" and gpu.index is None and torch.cuda.is_available():  # tensors report cuda:N
        gpu = torch.device("cuda", torch.cuda.current_device())
    name, rules = load_rules(name or ("hybrid" if torch.cuda.is_available() else "cpu"))
    if name.startswith("layers:") and int(name[7:]) > cfg.num_layers:
        raise HymoeError(f"placement {name} asks for {name[7:]} layers; the model has {cfg.num_layers}")
    targets = plan(cfg, rules, name)
    if all(t.device == "cpu" for t in targets.values()) and device not in (None, "cpu"):
        raise HymoeError(f"placement {name} puts everything on the CPU; --device {device} contradicts it")
    ends = gpu if targets["embed_tokens"].device == "gpu" else torch.device("cpu")
    return Placement(name, ends, gpu, targets)


def default_dtype(files, placement: Placement) -> torch.dtype:
    """The compute dtype without --dtype: the checkpoint's, except that a GGUF file computes in
    float32 where its dense part runs on the CPU, as llama.cpp does: the block kernels take float32
    activations, and torch's small bfloat16 operations cost more than float32 ones on a CPU."""
    dense_on_cpu = all(placement.device_of(u).type == "cpu" for u in placement.targets if not u.endswith(".experts"))
    return torch.float32 if files.gguf is not None and dense_on_cpu else files.dtype


def default_kv_dtype(files, placement: Placement, dtype: torch.dtype) -> torch.dtype:
    """The KV cache's dtype without --kv-dtype: float16 for a GGUF file computed in float32 on the
    CPU, llama.cpp's default cache type (a decode step reads half the cache bytes), otherwise the
    compute dtype."""
    dense_on_cpu = all(placement.device_of(u).type == "cpu" for u in placement.targets if not u.endswith(".experts"))
    is_gguf_cpu = files.gguf is not None and dense_on_cpu and dtype == torch.float32
    return torch.float16 if is_gguf_cpu else dtype


def place_layers(model, placement: Placement, dtype: torch.dtype) -> set[int]:
    """Move each layer's dense part and the ends to their devices, and routed experts placed on
    the GPU there as torch weights; returns the indices of those MoE layers."""
    kept = set()
    for i, layer in enumerate(model.layers):
        layer.to(placement.device_of(f"layers.{i}.self_attn"))
        if isinstance(layer.mlp, MoE) and placement.targets[f"layers.{i}.mlp.experts"].device == "gpu":
            ex = layer.mlp.experts
            ex = ex.to_torch(dtype) if isinstance(ex, DequantExperts) else ex
            layer.mlp.experts = ex.to(placement.gpu)
            kept.add(i)
    for end in (model.embed_tokens, model.norm, model.lm_head):
        end.to(placement.device)
    return kept
