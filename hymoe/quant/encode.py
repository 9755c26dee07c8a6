"""Float weights -> GGUF blocks in any type hymoe writes: gguf-py's quantizers, and hymoe's own
for the K-quants and IQ1_S (kquants.py)."""
from __future__ import annotations

import numpy as np
import torch
from gguf.quants import quantize

from hymoe.quant.formats import qtype
from hymoe.quant.kquants import QUANTIZERS

# types encode() writes from float weights
ENCODE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "TQ2_0", "TQ1_0", "IQ1_S")


def encode(w: torch.Tensor, fmt: str) -> np.ndarray:
    """float [..., n] -> F32/F16 values, or the GGUF bytes [..., row_bytes] of any other type."""
    if w.dim() == 3:  # stacked experts: one expert at a time bounds the float32 temporaries
        return np.stack([encode(x, fmt) for x in w])
    if fmt == "BF16":
        return w.detach().to(torch.bfloat16).contiguous().view(torch.uint8).numpy()
    x = w.detach().float().contiguous().numpy()
    if fmt == "F32":
        return x
    if fmt == "F16":
        return x.astype(np.float16)
    return QUANTIZERS[fmt](x) if fmt in QUANTIZERS else quantize(x, qtype(fmt))


def encode_bytes(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """float [rows, n] -> uint8 [rows, row_bytes] in fmt, as the kernels read it."""
    out = encode(w, fmt)
    return torch.from_numpy(np.ascontiguousarray(out)).view(torch.uint8).reshape(w.shape[0], -1)
