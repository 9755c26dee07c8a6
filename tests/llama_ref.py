"""llama.cpp itself (through llama-cpp-python) as the reference for GGUF files."""
from __future__ import annotations

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (a test dependency) is not installed")


def _params_without_extra_buffers():
    # llama.cpp's AMX matmul crashes on these tiny shapes on AMX CPUs (a llama.cpp bug, seen with
    # its own quantizer's files too); its standard CPU kernels compute the same model.
    p = _default_params()
    p.use_extra_bufts = False
    return p


_default_params = llama_cpp.llama_cpp.llama_model_default_params


def load(path, n_ctx: int = 512):
    llama_cpp.llama_cpp.llama_model_default_params = _params_without_extra_buffers
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2)
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = _default_params


def logits(model, ids: list[int]) -> np.ndarray:
    """Teacher-forced logits [T, V] of one sequence."""
    model.reset()
    model.eval(ids)
    return np.array(model.scores[: len(ids)])


def logits_tensor(model, ids: list[int]):
    """The same as logits(), as a float32 torch tensor (for hymoe.eval.ppl scorers)."""
    import torch

    return torch.from_numpy(logits(model, ids).astype(np.float32))


def scorer(model):
    """llama.cpp's logits as a hymoe.eval.ppl scorer (windows -> logits, the same windows as hymoe)."""
    return lambda wins: [logits_tensor(model, w) for w in wins]
