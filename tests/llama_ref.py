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


def quantize(values: np.ndarray, fmt: str) -> np.ndarray:
    """float32 [..., n] -> uint8 [..., row_bytes] blocks of fmt by llama.cpp's own quantizer
    (ggml_quantize_chunk), with a uniform importance matrix: the IQ2, IQ3_XXS and IQ1 formats refuse
    to quantize without one (llama_model_quantize too), and all weights matter alike here."""
    import ctypes

    from gguf.constants import GGMLQuantizationType

    from hymoe.bench.llama_peer import ggml
    from hymoe.quant.formats import row_bytes

    lib = ggml()
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_void_p]
    n = values.shape[-1]
    src = np.ascontiguousarray(values, dtype=np.float32).reshape(-1, n)
    out = np.zeros((src.shape[0], row_bytes(fmt, n)), dtype=np.uint8)
    importance = np.ones(n, dtype=np.float32)
    written = fn(int(GGMLQuantizationType[fmt]), src.ctypes.data, out.ctypes.data, 0, src.shape[0], n,
                 importance.ctypes.data)
    assert written == out.nbytes, f"ggml_quantize_chunk wrote {written} bytes of {out.nbytes}"
    return out.reshape(*values.shape[:-1], -1)


def quantize_file(src, dst, ftype: int) -> None:
    """llama.cpp's llama_model_quantize: src (a GGUF) -> dst with llama.cpp's own mix for ftype."""
    import ctypes

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = ftype, 2
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0


def with_quantized_experts(src, f16, dst, fmt: str):
    """src (a GGUF) rewritten to dst with its routed experts quantized to fmt by quantize() from the
    same model's F16 file: for the formats llama_model_quantize makes only with an importance matrix."""
    from gguf.constants import GGMLQuantizationType
    from gguf_edit import rewrite

    from hymoe.loader.gguf_file import GGUFFile

    source = GGUFFile(f16).tensors

    def experts(name, info):
        if "_exps" not in name:
            return None
        values = source[name].data.numpy().view(np.float16).astype(np.float32)
        return [(name, quantize(values.reshape(*info.shape), fmt), GGMLQuantizationType[fmt])]

    rewrite(src, dst, tensors=experts)
    return dst
