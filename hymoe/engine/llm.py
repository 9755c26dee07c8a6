"""LLM: a loaded model with its tokenizer; the Python entry point (`hymoe.load`)."""
from __future__ import annotations

import functools
import sys
import threading
import time
from pathlib import Path

import torch

from hymoe.config import ModelConfig
from hymoe.engine.generate import generate
from hymoe.engine.grammar import Grammars
from hymoe.engine.runner import Runner
from hymoe.engine.sampler import SamplingParams
from hymoe.engine.scheduler import PREFILL_CHUNK, Timings
from hymoe.engine.sequence import Sequence
from hymoe.errors import HymoeError
from hymoe.engine.model_card import model_card
from hymoe.experts.native_layer import place_native_layers
from hymoe.hub import resolve
from hymoe.loader.fp8 import choose_experts_format
from hymoe.loader.open import ModelFiles, open_model
from hymoe.models.assemble import load_weights
from hymoe.models import build_model
from hymoe.kv.sizing import pool_blocks
from hymoe.layers.moe import MoE
from hymoe.placement import default_dtype, default_kv_dtype, place_layers, resolve_placement
from hymoe.placement.experts import EngineSlot, hot_experts_on_gpu, parse_gpu_experts, place_experts
from hymoe.placement.options import PlacementOptions
from hymoe.placement.kernels import check_dense_format, place_dense, place_small_ops, quantize_dense
from hymoe.placement.large_pages import LargePageCopies

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
    def __init__(self, path: str | Path | ModelFiles, options: PlacementOptions | None = None,
                 max_context: int | None = None, progress: bool = True):
        t0 = time.perf_counter()
        o = self.options = options or PlacementOptions()
        path = path if isinstance(path, ModelFiles) else resolve(path)
        files = path if isinstance(path, ModelFiles) else open_model(path)
        self.card = model_card(None if isinstance(path, ModelFiles) else path, files)
        self.config: ModelConfig = files.config
        self.placement = resolve_placement(o.placement, self.config, o.device)
        self.dtype = parse_dtype(o.dtype) or default_dtype(files, self.placement)
        self.kv_dtype = parse_dtype(o.kv_dtype) or default_kv_dtype(files, self.placement, self.dtype)
        self.device = self.placement.device
        choose_experts_format(files.source, o.experts_format, o.experts, self.dtype, self.placement.targets)
        with torch.device("meta"):
            model = build_model(self.config)
        self.model = load_weights(model, files.source, self.dtype, self.device, progress)
        on_gpu = place_layers(self.model, self.placement, self.dtype)
        engine = EngineSlot(o.threads, self.placement.is_async, o.numa, LargePageCopies(not o.mmap))
        quantize_dense(self.model, self.placement.targets, check_dense_format(o.dense_format))
        # {"native": 96, ...}
        self.dense_kernels = place_dense(self.model, self.dtype, engine, o.gpu_dense_kernel, engine.copies)
        place_small_ops(self.model, self.dtype, engine, engine.copies)
        count, budget = parse_gpu_experts(o.gpu_experts)
        hot = hot_experts_on_gpu(self.model, self.placement, count, self.dtype, budget, o.expert_stats)
        place_experts(self.model, o.experts, o.experts_format, o.threads, placement=self.placement, keep=on_gpu,
                      hot=hot, defer=o.defer_experts, gpu_prefill_threshold=o.gpu_prefill_threshold, engine=engine)
        # a CPU placement whose pool computes the dense layers too: it shares the cores with torch per step
        is_cpu_pool = engine.engine is not None and not engine.is_async and bool(self.dense_kernels.get("native"))
        # decode steps of such layers in one native call each (experts/native_layer.py)
        self.native_layers = place_native_layers(self.model) if is_cpu_pool else 0
        is_all_native = all(getattr(layer.self_attn, "kernel", None) is not None for layer in self.model.layers)
        self._step_scope = functools.partial(engine.engine.step_scope, is_all_native=is_all_native) \
            if is_cpu_pool else None
        # what computes the routed experts, e.g. "native", or "native+torch" for a layer split
        kinds = {m.experts.label for m in self.model.modules() if isinstance(m, MoE)}
        self.experts_backend = "+".join(sorted(kinds)) + (f", {o.defer_experts} deferred" if o.defer_experts else "")
        self.tokenizer = files.tokenizer
        self.generation_defaults = files.generation_defaults
        self.max_context = min(max_context or DEFAULT_MAX_CONTEXT, self.config.max_position_embeddings)
        # prompt tokens per forward pass, for every client; a pass streams experts to the GPU only
        # from --gpu-prefill-threshold tokens, so chunks are at least that long
        self.prefill_chunk = max(PREFILL_CHUNK, o.gpu_prefill_threshold)
        self._lock = threading.Lock()  # one forward pass at a time, from any thread (Runner.forward)
        self.load_seconds = time.perf_counter() - t0

    @property
    def eos_ids(self) -> tuple[int, ...]:
        eos = self.generation_defaults.get("eos_token_id")
        ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        ids |= set(self.config.eos_token_ids)
        if self.tokenizer is not None:
            ids |= set(self.tokenizer.eos_ids)
        return tuple(sorted(ids))

    @functools.cached_property
    def grammars(self) -> Grammars:
        """Compiles constrained-decoding grammars for this model's tokenizer (built on first use)."""
        if self.tokenizer is None:
            raise HymoeError("constrained decoding needs a tokenizer, and this model has none")
        return Grammars(self.tokenizer.hf, self.config.vocab_size, self.eos_ids)

    def check_prompt(self, ids: list[int]) -> None:
        if not ids:
            raise HymoeError("the prompt is empty")
        if len(ids) >= self.max_context:
            raise HymoeError(f"the prompt has {len(ids)} tokens; the context holds {self.max_context}")
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise HymoeError(f"token id {bad[0]} is outside the vocabulary of {self.config.vocab_size}")

    def runner(self, num_slots: int, max_len: int, num_blocks: int | None = None, is_graphed: bool = True,
               kv_policy=None) -> Runner:
        """num_slots rows of up to max_len positions; KV blocks for all of them unless num_blocks;
        each row keeping what kv_policy says (default: the load's --kv-policy)."""
        return Runner(self.model, num_slots, max_len, self.dtype, self.device,
                      is_graphed=is_graphed and self.options.cuda_graphs,
                      step_scope=self._step_scope, kv_dtype=self.kv_dtype, lock=self._lock,
                      block_size=self.options.kv_block_size, num_blocks=num_blocks,
                      kv_policy=kv_policy or self.options.kv_policy)

    def pool_runner(self, num_slots: int) -> Runner:
        """The runner of a long-lived scheduler (server, chat): rows of the whole context, over a
        pool of the size --kv-memory gives (default: every row's whole context)."""
        num_blocks = None
        if self.options.kv_memory is not None:
            num_blocks = pool_blocks(self.options.kv_memory, self.model.cache_entries(), self.model.layer_devices(),
                                     self.kv_dtype, self.options.kv_block_size)
        return self.runner(num_slots, self.max_context, num_blocks)

    def sequence(self, prompt: list[int], params: SamplingParams, on_event=None) -> Sequence:
        """A sequence for a scheduler whose slots hold the model's whole context (EngineThread)."""
        return Sequence(prompt, params, self.eos_ids, self.max_context, self.tokenizer, on_event)

    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """One prefill, in chunks: float32 CPU logits [T, V] for every position."""
        self.check_prompt(list(token_ids))
        return self.runner(1, len(token_ids)).all_logits([0], [list(token_ids)], self.prefill_chunk)[0]

    def prompt_logprobs(self, token_ids: list[int], k: int) -> list[tuple[int, float | None, list]]:
        """Each prompt token's (token, logprob, k most likely (token, logprob)) given the tokens
        before it, the first's logprob None: the model's raw log-softmax, as the sampler reports.
        [T, V] logits are held a chunk at a time (`_passes`)."""
        ids = list(token_ids)
        self.check_prompt(ids)
        out: list[tuple[int, float | None, list]] = [(ids[0], None, [])]
        for c, logits in self._passes(ids[:-1]):  # the last token predicts nothing here
            lp = logits.float().log_softmax(-1)  # [T, V]: position c + j predicts ids[c + j + 1]
            targets = torch.tensor(ids[c + 1:c + 1 + len(lp)])
            chosen = lp[torch.arange(len(targets)), targets].tolist()
            top = lp.topk(k) if k > 0 else None
            for j, t in enumerate(targets.tolist()):
                alternatives = [] if top is None else list(zip(top.indices[j].tolist(), top.values[j].tolist()))
                out.append((t, chosen[j], alternatives))
        return out

    def embed(self, token_ids: list[int]) -> torch.Tensor:
        """float32 CPU [H]: the mean over positions of the final hidden states (after the last norm),
        L2-normalized."""
        ids = list(token_ids)
        self.check_prompt(ids)
        total = torch.zeros(self.config.hidden_size, dtype=torch.float64)
        for _, hidden in self._passes(ids, is_hidden=True):  # [T, H]
            total += hidden.double().sum(0)
        mean = total / len(ids)
        return (mean / mean.norm().clamp_min(1e-12)).float()

    def _passes(self, ids: list[int], is_hidden: bool = False):
        """(start, [T, V] logits or, with is_hidden, [T, H] final hidden states) of ids, prefill_chunk
        positions per pass on a one-row runner of their own, each pass under the model's lock: a
        running scheduler only waits between its steps, and its KV pool is untouched. Every position
        counts whatever --kv-policy says, and nothing is decoded, so no CUDA graphs are captured."""
        if not ids:
            return
        runner = self.runner(1, len(ids), is_graphed=False, kv_policy="full")
        for c in range(0, len(ids), self.prefill_chunk):
            yield c, runner.forward([0], [ids[c:c + self.prefill_chunk]], [c], is_all_logits=True,
                                    is_hidden=is_hidden)[0]

    def generate_batch(self, prompts: list[list[int]], params: SamplingParams,
                       on_token=None) -> tuple[list[Sequence], Timings]:
        for p in prompts:
            self.check_prompt(p)
        max_len = min(self.max_context, max(len(p) for p in prompts) + params.max_new_tokens)
        return generate(self.runner(len(prompts), max_len), prompts, params, self.eos_ids, self.tokenizer,
                        on_token=on_token, prefill_chunk=self.prefill_chunk)

    def generate(self, token_ids: list[int], max_new_tokens: int = 64, temperature: float = 0.0,
                 **sampling) -> list[int]:
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, **sampling)
        return self.generate_batch([list(token_ids)], params)[0][0].token_ids


def load(path: str | Path, max_context: int | None = None, progress: bool = True, **options) -> LLM:
    """hymoe.load(path, dtype="bfloat16", placement="hybrid", ...): keywords are PlacementOptions' fields."""
    return LLM(path, PlacementOptions(**options), max_context, progress)


def load_from_args(args) -> LLM:
    """The model a command line names (the bundled demo model if none), placed as its options say."""
    from hymoe.default_model import ensure_default_model

    path = args.model or ensure_default_model()
    return LLM(path, PlacementOptions.from_args(args), args.max_context, progress=sys.stderr.isatty())
