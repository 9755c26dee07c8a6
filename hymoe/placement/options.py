"""PlacementOptions: every choice about where and how a model computes, carried as one value from
the command line (or `hymoe.load`'s keywords) to the runtime that applies them."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from hymoe.errors import HymoeError
from hymoe.experts.numa import MAX_NODES, parse_numa
from hymoe.kv.policy import parse_policy

GPU_DENSE_KERNELS = ("auto", "dequant", "int4pack")


@dataclass(frozen=True, slots=True)
class PlacementOptions:
    placement: str | None = None  # cpu | hybrid | layers:N | gpu | a rules file (default: hybrid with a GPU)
    device: str | None = None  # the GPU side's device, e.g. cuda:1 (default: cuda when there is one)
    dtype: str | torch.dtype | None = None  # compute dtype (default: placement.default_dtype)
    kv_dtype: str | torch.dtype | None = None  # KV cache dtype (default: placement.default_kv_dtype)
    kv_memory: str | None = None  # a server's or chat's KV pool: "8GiB", or a fraction of free memory "0.5"
    kv_block_size: int = 64  # positions per KV block (prefixes are shared in whole blocks)
    kv_policy: str = "full"  # what each sequence's cache keeps: full, sink-window:S,W, h2o:B (kv/policy.py)
    dense_format: str | None = None  # quantize the non-expert linears at load (default: as stored)
    gpu_dense_kernel: str = "auto"  # Q4_K dense linears on a GPU: auto | dequant | int4pack (placement/kernels.py)
    experts: str = "auto"  # routed-expert backend: auto, native, torch
    experts_format: str | None = None  # quantize routed experts at load (default: as stored)
    threads: int | None = None  # native engine threads (default: all cores)
    numa: str = "off"  # the native engine over NUMA nodes: off, auto, virtual:N (experts/numa.py)
    gpu_experts: int | str = 0  # hot experts per layer on the GPU, or a memory budget ("4GiB")
    expert_stats: str | None = None  # routing statistics that choose them (`hymoe calibrate`)
    defer_experts: int = 0  # each token's K lowest-weighted CPU experts finish during the next layer
    gpu_prefill_threshold: int = 0  # prompts this long stream expert weights to the GPU (0: off)
    mmap: bool = False  # the CPU's native kernels read the GGUF's mapping, not copies on 2 MiB pages
    cuda_graphs: bool = True  # decode steps replayed as CUDA graphs where CUDA runs the dense part

    def __post_init__(self):
        if self.threads is not None and self.threads < 1:
            raise HymoeError(f"--threads {self.threads}: at least 1")
        if self.kv_block_size < 1:
            raise HymoeError(f"--kv-block-size {self.kv_block_size}: at least 1")
        if self.gpu_dense_kernel not in GPU_DENSE_KERNELS:
            raise HymoeError(f"--gpu-dense-kernel {self.gpu_dense_kernel!r}: use one of {', '.join(GPU_DENSE_KERNELS)}")
        parse_policy(self.kv_policy)  # a bad policy is refused at load, in one line
        parse_numa(self.numa, MAX_NODES)  # likewise a bad --numa (the engine counts the machine's nodes)
        if self.defer_experts < 0 or self.gpu_prefill_threshold < 0:
            raise HymoeError("--defer-experts and --gpu-prefill-threshold must be at least 0")

    @classmethod
    def from_args(cls, args) -> "PlacementOptions":
        """The options an argparse namespace carries (the CLI's model arguments; --eager: no graphs)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
        if getattr(args, "eager", False):
            values["cuda_graphs"] = False
        return cls(**values)
