"""Q4_K regrouped at load for the AVX512 kernels on CPUs that split 512-bit instructions (Q4_K_G4:
csrc/regroup.cpp; Tuning::regroup_q4_k in csrc/common.h says where it pays);
placement/large_pages.py writes the copies the kernels stream."""
from __future__ import annotations

import torch

from hymoe.errors import HymoeError
from hymoe.experts.native import library, native_error
from hymoe.quant.formats import GROUP_BYTES, native_id

# formats the native kernels regroup at load, and the layout each becomes
REGROUPED = {"Q4_K": "Q4_K_G4"}


def regroups(fmt: str) -> bool:
    """Whether the kernels in use stream fmt faster regrouped at load (Q4_K on AVX512: csrc/regroup.cpp)."""
    lib = library()
    return lib is not None and fmt in REGROUPED and bool(lib.hymoe_regroups(native_id(fmt)))


def regroup(src: torch.Tensor, fmt: str, out: torch.Tensor) -> str:
    """src's fmt blocks regrouped into out (uint8, as long, its address a multiple of 576; src itself,
    or apart from it); returns the layout's name (Q4_K_G4)."""
    lib = library()
    nbytes = src.numel() * src.element_size()
    a, b = src.data_ptr(), out.data_ptr()
    if fmt not in REGROUPED or src.device.type != "cpu" or not src.is_contiguous() or out.dtype != torch.uint8 \
            or out.numel() != nbytes or out.data_ptr() % GROUP_BYTES or nbytes % GROUP_BYTES \
            or (a != b and a < b + nbytes and b < a + nbytes):
        raise HymoeError(f"regrouping takes {'/'.join(REGROUPED)} CPU bytes in whole groups of {GROUP_BYTES} into "
                         f"as many at a multiple of {GROUP_BYTES} (in place or apart); got {nbytes} {fmt} bytes "
                         f"into {out.numel()}")
    rc = lib.hymoe_regroup(native_id(fmt), src.data_ptr(), nbytes, out.data_ptr(), out.numel())
    if rc != native_id(REGROUPED[fmt]):
        raise native_error(rc, f"the native kernels cannot regroup {fmt}")
    return REGROUPED[fmt]
