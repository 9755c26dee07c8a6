"""LLM: a loaded model with its tokenizer; the Python entry point (`hymoe.load`)."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from hymoe.config import ModelConfig
from hymoe.engine.generate import Completion, Timings, generate
from hymoe.engine.runner import Runner
from hymoe.engine.sampler import SamplingParams
from hymoe.errors import HymoeError
from hymoe.loader.open import ModelFiles, open_model
from hymoe.models.assemble import load_weights
from hymoe.models import build_model
from hymoe.layers.moe import MoE
from hymoe.placement import (EngineSlot, default_dtype, default_kv_dtype, hot_experts_on_gpu, parse_gpu_experts,
                             place_experts, place_layers, resolve_placement)
from hymoe.placement.kernels import check_dense_format, place_dense, place_small_ops, quantize_dense

DEFAULT_MAX_CONTEXT = 4096
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise HymoeError(f"unknown dtype {name!r} (use one of {', '.join(_DTYPES)})")
    return _DTYPES[name]


class LLM:
    def __init__(self, path: str | Path | ModelFiles, dtype: str | torch.dtype | None = None, device: str | None = None,
                 max_context: int | None = None, progress: bool = True, experts: str = "auto",
                 experts_format: str | None = None, threads: int | None = None, placement: str | None = None,
                 gpu_experts: int | str = 0, expert_stats: str | Path | None = None, defer_experts: int = 0,
                 gpu_prefill_threshold: int = 0, cuda_graphs: bool = True, dense_format: str | None = None,
                 kv_dtype: str | torch.dtype | None = None):
        files = path if isinstance(path, ModelFiles) else open_model(path)
        self.config: ModelConfig = files.config
        self.placement = resolve_placement(placement, self.config, device)
        self.dtype = parse_dtype(dtype) or default_dtype(files, self.placement)
        self.kv_dtype = parse_dtype(kv_dtype) or default_kv_dtype(files, self.placement, self.dtype)
        self.device = self.placement.device
        with torch.device("meta"):
            model = build_model(self.config)
        self.model = load_weights(model, files.source, self.dtype, self.device, progress)
        on_gpu = place_layers(self.model, self.placement, self.dtype)
        engine = EngineSlot(threads, self.placement.is_async)
        quantize_dense(self.model, self.placement.targets, check_dense_format(dense_format))
        self.dense_kernels = place_dense(self.model, self.dtype, engine)  # {"native": 96, ...}
        place_small_ops(self.model, self.dtype, engine)
        count, budget = parse_gpu_experts(gpu_experts)
        hot = hot_experts_on_gpu(self.model, self.placement, count, self.dtype, budget, expert_stats)
        place_experts(self.model, experts, experts_format, threads, placement=self.placement, keep=on_gpu,
                      hot=hot, defer=defer_experts, gpu_prefill_threshold=gpu_prefill_threshold, engine=engine)
        # a CPU placement whose pool computes the dense layers too: it shares the cores with torch per step
        is_cpu_pool = engine.engine is not None and not engine.is_async and bool(self.dense_kernels.get("native"))
        is_all_native = all(getattr(layer.self_attn, "kernel", None) is not None for layer in self.model.layers)
        self._step_scope = functools.partial(engine.engine.step_scope, is_all_native=is_all_native) \
            if is_cpu_pool else None
        # what computes the routed experts, e.g. "native", or "native+torch" for a layer split
        kinds = {m.experts.label for m in self.model.modules() if isinstance(m, MoE)}
        self.experts_backend = "+".join(sorted(kinds)) + (f", {defer_experts} deferred" if defer_experts else "")
        self.cuda_graphs = cuda_graphs  # decode steps captured per batch size where CUDA runs the dense part
        self.tokenizer = files.tokenizer
        self.generation_defaults = files.generation_defaults
        self.max_context = min(max_context or DEFAULT_MAX_CONTEXT, self.config.max_position_embeddings)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        eos = self.generation_defaults.get("eos_token_id")
        ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        ids |= set(self.config.eos_token_ids)
        if self.tokenizer is not None:
            ids |= set(self.tokenizer.eos_ids)
        return tuple(sorted(ids))

    def check_prompt(self, ids: list[int]) -> None:
        if not ids:
            raise HymoeError("the prompt is empty")
        if len(ids) >= self.max_context:
            raise HymoeError(f"the prompt has {len(ids)} tokens; the context holds {self.max_context}")
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise HymoeError(f"token id {bad[0]} is outside the vocabulary of {self.config.vocab_size}")

    def runner(self, num_slots: int, max_len: int) -> Runner:
        return Runner(self.model, num_slots, max_len, self.dtype, self.device, is_graphed=self.cuda_graphs,
                      step_scope=self._step_scope, kv_dtype=self.kv_dtype)

    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """One prefill: float32 CPU logits [T, V] for every position."""
        self.check_prompt(list(token_ids))
        return self.runner(1, len(token_ids)).forward([0], [list(token_ids)], [0], is_all_logits=True)[0]

    def generate_batch(self, prompts: list[list[int]], params: SamplingParams,
                       on_token=None) -> tuple[list[Completion], Timings]:
        for p in prompts:
            self.check_prompt(p)
        max_len = min(self.max_context, max(len(p) for p in prompts) + params.max_new_tokens)
        return generate(self.runner(len(prompts), max_len), prompts, params, self.eos_ids, self.tokenizer,
                        on_token=on_token)

    def generate(self, token_ids: list[int], max_new_tokens: int = 64, temperature: float = 0.0,
                 **sampling) -> list[int]:
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, **sampling)
        return self.generate_batch([list(token_ids)], params)[0][0].token_ids


def load(path: str | Path, dtype: str | torch.dtype | None = None, device: str | None = None, **kw) -> LLM:
    return LLM(path, dtype=dtype, device=device, **kw)
