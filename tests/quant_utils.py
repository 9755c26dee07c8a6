"""Random GGUF-format weights for kernel tests, decoded independently by gguf-py."""
import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from hymoe.quant.formats import FLOAT_DTYPES, sane_scales



def pack_k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K: eight 6-bit scales and mins [nblocks, 8] -> the 12 packed bytes [nblocks, 12]."""
    s = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    for j in range(4):
        s[:, j] = (sc[:, j] & 63) | ((sc[:, j + 4] >> 4) << 6)
        s[:, j + 4] = (m[:, j] & 63) | ((m[:, j + 4] >> 4) << 6)
        s[:, j + 8] = (sc[:, j + 4] & 0xF) | ((m[:, j + 4] & 0xF) << 4)
    return s


def random_weights(fmt: str, rows: int, n: int, seed: int = 0, experts: int | None = None,
                   is_centered: bool = False) -> torch.Tensor:
    """uint8 [(experts,) rows, row_bytes]: random blocks with sane scales.

    is_centered: mins (Q4_K, Q5_K, Q4_1, Q5_1) chosen to cancel the mean of q, as a quantizer would
    for zero-mean weights (random mins give biased weights whose products cancel badly).
    """
    rng = np.random.default_rng(seed)
    lead = (experts, rows) if experts else (rows,)
    if fmt in ("F32", "F16", "BF16"):
        w = torch.from_numpy(rng.standard_normal((*lead, n), dtype=np.float32) * 0.05)
        w = w.to(FLOAT_DTYPES[fmt])
        return w.contiguous().view(torch.uint8).reshape(*lead, -1)
    block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[fmt]]
    nblocks = int(np.prod(lead)) * n // block
    raw = rng.integers(0, 256, size=(nblocks, nbytes), dtype=np.uint8)
    sane_scales(raw, fmt, lambda count: rng.uniform(0.2, 1.0, count) * 0.01)
    if is_centered and fmt in ("Q4_1", "Q5_1"):  # m = -d x the mean code
        d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)
        raw[:, 2:4] = (-d * (7.5 if fmt == "Q4_1" else 15.5)).astype(np.float16).view(np.uint8)
    if is_centered and fmt in ("Q4_K", "Q5_K"):
        raw[:, 2:4] = raw[:, 0:2]  # dmin = d
        sc = rng.integers(1, 4, size=(nblocks, 8)).astype(np.uint8)
        mean_q = 7.5 if fmt == "Q4_K" else 15.5
        raw[:, 4:16] = pack_k_scales(sc, np.round(sc * mean_q).astype(np.uint8))
    return torch.from_numpy(raw.reshape(*lead, -1))


def dequant(fmt: str, w: torch.Tensor, n: int) -> torch.Tensor:
    """float32 [..., rows, n] from gguf-py's own decoder."""
    if fmt in ("F32", "F16", "BF16"):
        dt = FLOAT_DTYPES[fmt]
        return w.contiguous().view(dt).float().reshape(*w.shape[:-1], n)
    out = dequantize(w.numpy(), GGMLQuantizationType[fmt])
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).reshape(*w.shape[:-1], n)


def regroup_q4_k(raw: torch.Tensor) -> torch.Tensor:
    """Q4_K blocks (uint8, a multiple of 4 blocks in all) in hymoe's Q4_K_G4 layout, written from its
    description (csrc/common.h), not from the C code: per 4 blocks their 16-byte heads, then each
    block's 128 code bytes with the 16-byte pieces 0, 2, 4, 6 first and 1, 3, 5, 7 after."""
    blocks = raw.reshape(-1, 4, 144).numpy()
    heads = blocks[:, :, :16].reshape(-1, 64)
    pieces = blocks[:, :, 16:].reshape(-1, 4, 8, 16)
    codes = np.concatenate([pieces[:, :, 0::2], pieces[:, :, 1::2]], axis=2).reshape(-1, 512)
    return torch.from_numpy(np.ascontiguousarray(np.concatenate([heads, codes], axis=1))).reshape(raw.shape)


def aligned_bytes(nbytes: int, align: int = 576) -> torch.Tensor:
    """A zeroed uint8 [nbytes] tensor at an address that is a multiple of align."""
    whole = torch.zeros(nbytes + align, dtype=torch.uint8)
    at = -whole.data_ptr() % align
    return whole[at:at + nbytes]
