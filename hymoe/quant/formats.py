"""GGUF block formats by name: block size and bytes per block, as gguf-py defines them."""
from __future__ import annotations

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from hymoe.errors import HymoeError

# formats the native expert kernels compute in place; any other GGUF type is dequantized per expert
NATIVE_FORMATS = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "IQ1_S", "TQ2_0", "TQ1_0")


def qtype(name: str) -> GGMLQuantizationType:
    try:
        return GGMLQuantizationType[name.upper()]
    except KeyError:
        raise HymoeError(f"unknown weight format {name!r}") from None


def row_bytes(name: str, n: int) -> int:
    block, nbytes = GGML_QUANT_SIZES[qtype(name)]
    if n % block:
        raise HymoeError(f"a row of {n} values does not split into {name} blocks of {block}")
    return n // block * nbytes
