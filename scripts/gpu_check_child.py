"""The child processes of scripts/gpu_check.py: one set of random weights and many timed runs (e2e),
or inspect's plan (plan), each result a JSON line appended to a file the parent reads as it goes."""
from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path


def _gpu_memory(torch) -> tuple[int, int] | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()


def child_e2e(spec: dict, results: Path) -> None:
    """Each run of spec["variants"] in order, one JSON line per event appended to results."""
    import torch

    from hymoe.bench.e2e import bench_e2e
    from hymoe.bench.prefill import bench_prefill
    from hymoe.bench.synthetic import random_model

    def emit(**kw):
        with open(results, "a") as f:
            f.write(json.dumps(kw) + "\n")

    import logging

    from hymoe import errors

    notes = []  # what hymoe said during a run (say_once): e.g. why CUDA graphs were off

    class Notes(logging.Handler):
        def emit(self, record):
            notes.append(record.getMessage())

    logging.getLogger("hymoe").addHandler(Notes())
    t0 = time.perf_counter()
    model = random_model(spec["shape"], spec["layers"], spec["experts_type"], spec["dense_type"])
    for variant in spec["variants"]:
        if spec["deadline"] - time.time() < spec["run_min_s"]:
            emit(event="skipped", variant=variant, reason="time budget")
            continue
        emit(event="start", variant=variant, time=time.time())
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        before = _gpu_memory(torch)
        errors._said.clear()  # each run says its own notices
        notes.clear()
        t = time.perf_counter()
        try:
            _fault(variant)
            if variant == "prefill":
                rows = bench_prefill(model, [spec["prefill_tokens"]])
            else:
                rows = bench_e2e(model, [variant], spec["prompt_tokens"], spec["gen_tokens"])
        except Exception as e:  # recorded; the next run goes on
            emit(event="failed", variant=variant, error=f"{type(e).__name__}: {e}"[:2000], seconds=time.perf_counter() - t)
            continue
        after = _gpu_memory(torch)
        memory = None if after is None else {"gpu_base_bytes": before[0], "gpu_peak_bytes": after[1] - before[0]}
        # the first run also paid for generating the random weights (shared by the runs after it)
        emit(event="done", variant=variant, rows=rows, memory=memory, seconds=round(time.perf_counter() - t, 1),
             since_child_start=round(time.perf_counter() - t0, 1), notes=notes[:20])


def _fault(variant: str) -> None:
    """Tests only: HYMOE_GPU_CHECK_FAULT="hybrid=crash;cpu=hang;layers:2=raise" makes those runs
    crash the child, hang or raise, to check that the other runs survive them."""
    for pair in filter(None, os.environ.get("HYMOE_GPU_CHECK_FAULT", "").split(";")):
        name, _, kind = pair.rpartition("=")
        if name == variant:
            if kind == "crash":
                os._exit(3)
            if kind == "hang":
                time.sleep(3600)
            raise RuntimeError(f"fault injected into {variant}")


def child_plan(spec: dict, results: Path) -> None:
    """inspect's devices for each placement of the e2e step, on a header-only file of the same model."""
    import tempfile

    from hymoe.bench.random_gguf import write_sparse_gguf
    from hymoe.inspect import inspect_model

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_sparse_gguf(Path(tmp) / "plan.gguf", spec["shape"], spec["layers"], spec["experts_type"],
                                 spec["dense_type"])
        context = spec["prompt_tokens"] + spec["gen_tokens"] + 1  # bench e2e's max_context
        for placement in ("cpu", "hybrid", f"layers:{spec['gpu_layers']}"):
            try:
                d = inspect_model(path, placement, "bfloat16", context)
                out[placement] = {"devices": d["devices"], "kv_bytes": d["kv_bytes"]}
            except Exception as e:
                out[placement] = {"error": f"{type(e).__name__}: {e}"[:1000]}
        d = inspect_model(path, "cpu", "bfloat16", context)
        # inspect has no --gpu-experts: hot experts add G bf16 experts per MoE layer to hybrid's plan
        per_expert = 3 * d["hidden_size"] * _moe_inter(spec["shape"]) * 2
        out["hot_experts_bytes"] = spec["gpu_experts"] * per_expert * d["moe_layers"]
        out["moe_layers"] = d["moe_layers"]
    with open(results, "a") as f:
        f.write(json.dumps(out) + "\n")


def _moe_inter(shape: str) -> int:
    from hymoe.bench.synthetic import CONFIGS

    return CONFIGS[shape]["moe_intermediate_size"]
