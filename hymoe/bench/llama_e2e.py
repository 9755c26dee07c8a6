"""llama.cpp on the same GGUF file, for `hymoe bench e2e --peer llama.cpp`: prefill of the same
prompt in one batch, then greedy decode one token at a time, timed as hymoe's generate loop is
(decode = the forward passes after the first sampled token)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hymoe.errors import HymoeError


def has_amx() -> bool:
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _load(path: str, n_ctx: int, threads: int, batch: int):
    try:
        import llama_cpp
    except ImportError as e:
        raise HymoeError("--peer llama.cpp needs llama-cpp-python (pip install 'hymoe[test]')") from e
    default = llama_cpp.llama_cpp.llama_model_default_params

    def params():  # llama-cpp-python 0.3.36's ggml crashes in its AMX matmul: its standard CPU kernels
        p = default()
        p.use_extra_bufts = False
        return p

    if has_amx():
        llama_cpp.llama_cpp.llama_model_default_params = params
    try:
        # n_batch = n_ctx: llama-cpp-python keeps the last logits in a row per batch position
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=batch, n_threads=threads,
                               n_threads_batch=threads, verbose=False)
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = default


class LlamaCppPeer:
    """llama.cpp (llama-cpp-python) holding the GGUF file `path`, timed as hymoe's generate loop is."""

    def __init__(self, path: str, max_tokens: int, threads: int):
        if not str(path).endswith(".gguf"):
            raise HymoeError("--peer llama.cpp needs a GGUF file as the model")
        self.threads = threads
        self.llm = _load(path, max_tokens + 8, threads, max(32, max_tokens))

    def run(self, ids: list[int], gen_tokens: int) -> dict:
        llm = self.llm
        for _ in range(2):  # warm-up with the same shapes
            llm.reset()
            llm.eval(ids[:8])
            llm.eval([ids[0]])
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        prefill_s = time.perf_counter() - t0
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t0 = time.perf_counter()
        for _ in range(gen_tokens - 1):
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        decode_s = time.perf_counter() - t0
        return {"prefill_tokens_per_s": len(ids) / prefill_s, "decode_tokens_per_s": (gen_tokens - 1) / decode_s}

    def summary(self, runs: list[dict]) -> dict:
        import statistics

        import llama_cpp

        return {"placement": "llama.cpp", "engine": f"llama-cpp-python {llama_cpp.__version__}",
                "threads": self.threads, "rounds": len(runs), "amx_disabled": has_amx(),
                **{k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}}
