"""`hymoe bench e2e`: prefill and decode tokens/s of one model under each placement, side by side.

Beside the rates, over the decode phase: how busy the CPU experts were (the native engine's time
inside MoE jobs over wall time), the process's CPU use (CPU time over wall x cores), the GPU's busy
fraction where CUDA runs (NVML utilization, sampled), and the decode rate this machine's measured
read bandwidth allows: bandwidth / bytes the CPU must read per decode step (weights resident in CPU
memory, routed experts k of E per MoE layer in their stored formats).
"""
from __future__ import annotations

import contextlib
import os
import random
import statistics
import threading
import time

import torch

from hymoe.engine.llm import LLM, load
from hymoe.errors import HymoeError
from hymoe.engine.sampler import SamplingParams
from hymoe.experts import native
from hymoe.experts.base import cpu_part
from hymoe.layers.linear import QuantLinear
from hymoe.layers.moe import MoE


def _engine(llm: LLM):
    """The native engine computing this model's CPU experts, or None."""
    for m in llm.model.modules():
        if isinstance(m, MoE) and isinstance(cpu_part(m.experts), native.NativeExperts):
            return cpu_part(m.experts).engine
    return None


def cpu_bytes_per_token(llm: LLM) -> int:
    """Bytes one decode step reads from CPU memory: CPU-resident weights (one embedding row aside),
    float or in block formats, and k of E routed experts for each MoE layer computed on the CPU."""
    cfg, total = llm.config, 0
    for name, p in llm.model.named_parameters():
        is_embedding = "embed_tokens" in name or (name == "lm_head.weight" and cfg.is_tied_embeddings)
        if p.device.type == "cpu" and not is_embedding:
            total += p.numel() * p.element_size()
    for m in llm.model.modules():
        if isinstance(m, QuantLinear) and m.qweight.device.type == "cpu":
            total += m.nbytes()
        elif getattr(m, "up_kernels", None) is not None:  # MLA's per-head rows on the native engine
            total += sum(k.weight.numel() for k in m.up_kernels)
    for m in llm.model.modules():
        if isinstance(m, MoE):
            ex = cpu_part(m.experts)
            on_cpu = getattr(ex, "gate", None) is not None and ex.gate.device.type == "cpu"
            if on_cpu:
                total += ex.nbytes() * cfg.num_experts_per_tok // cfg.num_experts
    return total


class _GpuSampler:
    """NVML's utilization of the GPU (share of time a kernel ran), sampled in a thread."""

    def __init__(self, device: torch.device):
        self.device, self.samples, self._stop = device, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:  # a sample at once and one at the end: short runs still get a figure
            self.samples.append(torch.cuda.utilization(self.device))
            if self._stop.wait(0.02):
                self.samples.append(torch.cuda.utilization(self.device))
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def busy(self) -> float | None:
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None


def _gpu_sampler(device: torch.device):
    if device.type != "cuda":
        return None
    try:
        torch.cuda.utilization(device)
    except Exception:  # no NVML bindings: the fraction is reported as None
        return None
    return _GpuSampler(device)


def parse_variant(variant: str, gpu_experts, defer_experts: int) -> tuple[str, dict]:
    """'hybrid+gpu16+defer2+prefill512+eager+dequant' -> ('hybrid', LLM options): one run's placement,
    hot experts, deferral, GPU prefill threshold, CUDA graphs (on unless +eager) and the GPU's Q4_K
    dense kernel (+dequant or +int4pack; default auto). Without suffixes,
    hybrid takes --gpu-experts, and cpu and hybrid take --defer-experts."""
    placement, *opts = variant.split("+")
    kw = dict(gpu_experts=str(gpu_experts) if placement == "hybrid" else "0",
              defer_experts=defer_experts if placement in ("cpu", "hybrid") else 0, gpu_prefill_threshold=0,
              cuda_graphs=True)
    for opt in opts:
        if opt.startswith("gpu"):
            kw["gpu_experts"] = opt[3:]
        elif opt.startswith("defer") and opt[5:].isdigit():
            kw["defer_experts"] = int(opt[5:])
        elif opt.startswith("prefill") and opt[7:].isdigit():
            kw["gpu_prefill_threshold"] = int(opt[7:])
        elif opt == "eager":
            kw["cuda_graphs"] = False
        elif opt in ("dequant", "int4pack"):
            kw["gpu_dense_kernel"] = opt
        else:
            raise HymoeError(f"unknown placement option {opt!r} in {variant!r} "
                             "(use +gpuN, +gpuSIZE, +deferK, +prefillT, +eager, +dequant or +int4pack)")
    return placement, kw


def bench_e2e(path, placements: list[str], prompt_tokens: int, gen_tokens: int, threads: int | None = None,
              dtype: str | None = None, gpu_experts: int = 0, defer_experts: int = 0, dense_format: str | None = None,
              peer: str | None = None, rounds: int = 1, numa: str | None = None) -> list[dict]:
    """One row per placement, and one for the peer (llama.cpp on the same GGUF file and threads).
    Each placement is timed `rounds` times, each time between two bandwidth probes and followed at
    once by the peer: rows report medians over the rounds, ratios to the peer medians of each round's."""
    from hymoe.bench.machine import read_gbps

    if peer not in (None, "llama.cpp"):
        raise HymoeError(f"unknown peer {peer!r} (use llama.cpp)")
    if rounds < 1:
        raise HymoeError("--rounds must be at least 1")
    probe = native.NativeEngine(threads, is_async=False) if native.library() is not None else None
    runs = [(v, *parse_variant(v, gpu_experts, defer_experts)) for v in placements]  # refuse typos up front
    theirs = None
    if peer:
        from hymoe.bench.llama_e2e import LlamaCppPeer

        theirs = LlamaCppPeer(str(path), prompt_tokens + gen_tokens, threads or (probe.threads if probe else 1))
    rows, peer_runs = [], []
    for variant, placement, kw in runs:  # one model in memory at a time
        llm = load(path, dtype=dtype, placement=placement, threads=threads, progress=False,
                  max_context=prompt_tokens + gen_tokens + 1, dense_format=dense_format, numa=numa or "off", **kw)
        ids = _prompt(llm.config.vocab_size, prompt_tokens)
        measured, paired, per_token = [], [], cpu_bytes_per_token(llm)
        for _ in range(rounds):
            before = read_gbps(probe) if probe is not None else None
            run = _measure(llm, ids, gen_tokens)
            # a shared machine's bandwidth changes within seconds: the probes on either side of the run
            gbps = (before + read_gbps(probe)) / 2 if probe is not None else None
            measured.append(run | _bandwidth(run, per_token, gbps))
            if theirs is not None:
                paired.append(theirs.run(ids, gen_tokens))
        rows.append(_summary(variant, llm, kw, per_token, measured, paired) | {"prompt_tokens": prompt_tokens,
                                                                               "gen_tokens": gen_tokens})
        peer_runs += paired
        del llm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if theirs is not None:
        rows.append(theirs.summary(peer_runs))
    return rows


def _bandwidth(run: dict, per_token: int, gbps: float | None) -> dict:
    """Every weight byte a decode step reads from CPU memory over the time it took, as a fraction of
    the read bandwidth gbps."""
    rate = run["decode_tokens_per_s"]
    return {"bandwidth_gbps": gbps,
            "decode_bandwidth_fraction": per_token * rate / (gbps * 1e9) if gbps and per_token else None}


def _measure(llm: LLM, ids: list[int], gen_tokens: int) -> dict:
    """One timed generate: rates, how busy the CPU experts, the process and the GPU were over decode."""
    params = SamplingParams(max_new_tokens=gen_tokens, is_eos_ignored=True)
    llm.generate_batch([ids], SamplingParams(max_new_tokens=2, is_eos_ignored=True))  # warm-up, same shapes
    engine = _engine(llm)
    uses_gpu = any(t.device == "gpu" for t in llm.placement.targets.values())
    gpu = llm.placement.gpu if uses_gpu else None
    mark = {}

    def at_first_token(row, tok):  # the decode phase starts here
        if not mark:
            mark.update(cpu=time.process_time(), busy=engine.busy_seconds if engine else 0.0)

    sampler = _gpu_sampler(gpu) if gpu is not None else None
    with sampler or contextlib.nullcontext():
        _, timings = llm.generate_batch([ids], params, on_token=at_first_token)
    decode_s = timings.decode_s
    return {
        "prefill_tokens_per_s": timings.prefill_tokens_per_s, "decode_tokens_per_s": timings.decode_tokens_per_s,
        "experts_busy": (engine.busy_seconds - mark["busy"]) / decode_s if engine else None,
        # capped at 1, which timer granularity can overshoot on short runs
        "cpu_busy": min(1.0, (time.process_time() - mark["cpu"]) / (decode_s * (os.cpu_count() or 1))),
        "gpu_busy": sampler.busy if sampler else None,
    }


def _median(values: list):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def _summary(variant: str, llm: LLM, kw: dict, per_token: int, runs: list[dict], peer_runs: list[dict]) -> dict:
    engine = _engine(llm)
    uses_gpu = any(t.device == "gpu" for t in llm.placement.targets.values())
    row = {"placement": variant, "device": str(llm.device), "gpu": str(llm.placement.gpu) if uses_gpu else None,
           "experts": llm.experts_backend, "rounds": len(runs),
           "threads": engine.threads if engine else None, "cuda_graphs": kw["cuda_graphs"] and llm.device.type == "cuda",
           "dense_kernels": llm.dense_kernels, "cpu_bytes_per_token": per_token}
    for key in runs[0]:
        row[key] = _median([r[key] for r in runs])
    gbps = row["bandwidth_gbps"]
    row["decode_bound_tokens_per_s"] = round(gbps * 1e9 / per_token, 1) if gbps and per_token else None
    for phase in ("prefill", "decode") if peer_runs else ():
        key = f"{phase}_tokens_per_s"
        row[f"{phase}_vs_peer"] = _median([r[key] / p[key] for r, p in zip(runs, peer_runs) if p[key]])
    return row


def _prompt(vocab_size: int, n: int) -> list[int]:
    rng = random.Random(0)  # the same prompt for every placement and the peer
    return [rng.randrange(vocab_size) for _ in range(n)]
