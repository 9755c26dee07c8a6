"""GGUF block formats by name: block size and bytes per block, as gguf-py defines them."""
from __future__ import annotations

import functools

import numpy as np

import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from hymoe.errors import HymoeError

# formats the native expert kernels compute in place; any other GGUF type is dequantized per expert
# the float formats and their torch dtypes
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
NATIVE_FORMATS = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "IQ1_S", "TQ2_0", "TQ1_0",
                  # llama.cpp's low-bit mixes and older files (csrc/lowbit.h)
                  "Q2_K", "Q3_K", "IQ4_XS", "IQ4_NL", "Q4_1", "Q5_0", "Q5_1", "IQ2_XXS", "IQ2_XS", "IQ2_S",
                  "IQ3_XXS", "IQ3_S", "IQ1_M")


# hymoe's own layouts of a GGUF format, never in a file: the native kernels' ids for them (csrc/common.h)
# and the format whose blocks they hold. Q4_K_G4: Q4_K regrouped at load for the AVX512 kernels
# (placement/large_pages.py, csrc/regroup.cpp)
LAYOUTS = {"Q4_K_G4": (36, "Q4_K")}
GROUP_BYTES = 576  # Q4_K_G4's groups: 4 blocks, at addresses that are multiples of it


def native_id(name: str) -> int:
    """The native kernels' number for a format or layout (csrc/common.h Fmt)."""
    return LAYOUTS[name][0] if name in LAYOUTS else int(qtype(name))


def check_groups(weight: torch.Tensor, fmt: str, matrices: int = 1) -> None:
    """A regrouped weight's matrices must be whole groups at multiples of 576 bytes (csrc/common.h)."""
    each = weight.numel() * weight.element_size() // max(matrices, 1)
    if fmt in LAYOUTS and (weight.data_ptr() % GROUP_BYTES or each % GROUP_BYTES):
        raise HymoeError(f"a {fmt} weight's matrices must be whole groups of {GROUP_BYTES} bytes at multiples of "
                         f"{GROUP_BYTES}; got {each} bytes a matrix at address {weight.data_ptr():#x}")


def qtype(name: str) -> GGMLQuantizationType:
    try:
        return GGMLQuantizationType[name.upper()]
    except KeyError:
        raise HymoeError(f"unknown weight format {name!r}") from None


def dequantize(raw: torch.Tensor, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """uint8 GGUF blocks -> float32 `shape` (float formats are viewed; the rest decoded by gguf-py)."""
    if name in FLOAT_DTYPES:
        return raw.contiguous().view(FLOAT_DTYPES[name]).reshape(shape).float()
    from gguf.quants import dequantize as gguf_dequantize

    values = gguf_dequantize(raw.contiguous().numpy(), qtype(name))
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape)


@functools.cache
def is_decodable(name: str) -> bool:
    """Whether dequantize() reads this format: gguf-py decodes no integer tensor (I32) and not every block
    format (F64, Q8_K), so a weight stored so is refused at load rather than failing mid-decode."""
    if name in FLOAT_DTYPES:
        return True
    from gguf.quants import dequantize as gguf_dequantize

    try:
        gguf_dequantize(np.zeros(GGML_QUANT_SIZES[qtype(name)][1], dtype=np.uint8), qtype(name))
    except NotImplementedError:
        return False
    return True


def row_bytes(name: str, n: int) -> int:
    block, nbytes = GGML_QUANT_SIZES[qtype(LAYOUTS[name][1] if name in LAYOUTS else name)]
    if n % block:
        raise HymoeError(f"a row of {n} values does not split into {name} blocks of {block}")
    return n // block * nbytes

# byte offsets of the fp16 scale fields in one block; every other byte of a block is valid data
# in any value, which is how benchmarks and tests make random weights
FP16_SCALE_OFFSETS = {"Q8_0": (0,), "Q4_0": (0,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
                      "IQ1_S": (0,), "TQ2_0": (64,), "TQ1_0": (52,),
                      "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "IQ4_NL": (0,), "Q2_K": (80, 82),
                      "Q3_K": (108,), "IQ4_XS": (0,), "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ2_S": (0,),
                      "IQ3_XXS": (0,), "IQ3_S": (0,), "IQ1_M": ()}


def sane_scales(blocks: np.ndarray, fmt: str, draw) -> None:
    """Give random blocks [nblocks, bytes] of fmt sane fp16 scales, in place: draw(nblocks) floats
    for each field at FP16_SCALE_OFFSETS, or for IQ1_M once, into the top 4 bits of each of its 4
    uint16 sub-block scale words (its only fp16 value is packed there; the other bits stay random)."""
    if fmt == "IQ1_M":
        bits = draw(len(blocks)).astype(np.float16).view(np.uint16)
        words = blocks[:, 48:56].copy().view(np.uint16)  # [nblocks, 4]
        for i in range(4):
            words[:, i] = (words[:, i] & 0x0FFF) | (((bits >> (4 * i)) & 0xF) << 12)
        blocks[:, 48:56] = words.view(np.uint8)
        return
    for off in FP16_SCALE_OFFSETS[fmt]:
        blocks[:, off:off + 2] = draw(len(blocks)).astype(np.float16).view(np.uint8).reshape(-1, 2)
