"""Host memory for expert weights and the CPU's KV pool: backed by 2 MiB pages where the OS offers them.

Decode streams every routed expert's weights from DRAM once per token. On 4 KiB pages each page
costs a TLB miss and restarts the hardware prefetcher; on 2 MiB pages neither happens. Anonymous
memory gets them only when asked (transparent huge pages are commonly set to `madvise`). A GGUF
file's mapping has whatever folios the page cache holds: 2 MiB ones for a file read from disk
through a mapping advised for them, 4 KiB ones for a file just written, so the weights the CPU
streams are copied here at load (placement/large_pages.py). Measured on the 2-core Zen 4 CI
machine, one process, alternating calls: a qwen3-30b-a3b MoE layer at batch 1, Q4_K 0.92 -> 0.85
ms, Q8_0 1.54 -> 1.46 ms.

The kernel backs only the 2 MiB ranges a mapping wholly covers with large pages, so each mapping
starts on a 2 MiB boundary: mmap's own address is merely page-aligned, and the dense weights of a
Qwen3-shaped Q4_K file then lay ~60% on 4 KiB pages. Aligned, on Zen 4 (alternating loads): the
q/k/v and output linears 5.69 -> 5.36 ms a step on a busy bus (step 0.978), q/k/v 2.49-2.73 -> 2.25
ms on a quiet one, the same GB/s as the experts.
"""
from __future__ import annotations

import mmap

import torch

PAGE = 4096
LARGE_PAGE = 2 << 20
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def host_bytes(nbytes: int) -> torch.Tensor:
    """A zeroed uint8 [nbytes] CPU tensor in anonymous memory advised for transparent huge pages
    (plain pages where the OS has none). The tensor keeps the mapping alive."""
    if nbytes <= 0 or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.zeros(max(nbytes, 0), dtype=torch.uint8)
    # whole large pages from the first 2 MiB boundary on, which falls within the first LARGE_PAGE -
    # PAGE bytes (never touched, so they take no memory); the last page's tail is memory lost
    size = -(-nbytes // LARGE_PAGE) * LARGE_PAGE + LARGE_PAGE - PAGE
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m.madvise(mmap.MADV_HUGEPAGE)  # before the first touch: pages fault in as 2 MiB ones
    except OSError:
        pass  # THP disabled or unsupported: 4 KiB pages, same contents
    whole = torch.frombuffer(m, dtype=torch.uint8)
    start = -whole.data_ptr() % LARGE_PAGE
    return whole[start:start + nbytes]


def large_pages_offered() -> bool:
    """Whether anonymous memory can get 2 MiB pages here (Linux's transparent huge pages not off)."""
    try:
        with open(THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def host_copy(t: torch.Tensor) -> torch.Tensor:
    """t's bytes in host_bytes memory, as a tensor of t's dtype and shape."""
    return copy_into(host_bytes(t.numel() * t.element_size()), t)


def copy_into(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """t's bytes written to the uint8 tensor out (exactly their size), viewed as t's dtype and shape."""
    out.copy_(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8))
    return out.view(t.dtype).view(t.shape)


def advise_huge(m: mmap.mmap) -> None:
    """Ask for large pages on a file mapping too (a no-op where the kernel maps them anyway)."""
    try:
        m.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError, ValueError):
        pass
