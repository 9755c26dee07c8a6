"""The weights the CPU's native kernels stream, copied at load into memory on 2 MiB pages.

A GGUF file's tensors are views of its read-only mapping, and those pages come from the page
cache in whatever folios it holds: a file just written or downloaded sits there in 4 KiB ones,
so each page of a decode step's weight stream costs a TLB miss and stops the hardware
prefetcher (a file read back from disk comes in 2 MiB folios instead). Copies in `host_bytes`
memory get 2 MiB pages either way. 2-core Zen 4, two loads alternating in one process: a decode
step 17.0 -> 16.0 ms on a Qwen3-shaped Q4_K file (2.9 GB) just written; on files whose folios were
large, 1.006-1.018 of the mapping's (docs/dense.md). llama.cpp computes such a file from anonymous
memory too: it repacks Q4_K into its own buffers at load.

Where the kernels in use stream a format faster in a layout of their own (Q4_K regrouped for the
AVX512 kernels on Zen 4: csrc/regroup.cpp), `for_kernels` writes the copy in that layout, with or without
large pages; the file's blocks stay what every other reader sees.

`--mmap` keeps the mapping (no copy: the page cache's pages, shared with other processes). A copy
that would leave less than HEADROOM of the machine's available memory is not made, and that is
said once.
"""
from __future__ import annotations

import torch

from hymoe.errors import say_once
from hymoe.experts import regroup
from hymoe.quant.formats import GROUP_BYTES
from hymoe.host_memory import LARGE_PAGE, PAGE, copy_into, host_bytes, host_copy, large_pages_offered
from hymoe.kv.sizing import free_bytes

HEADROOM = 0.2  # of the available memory at load: the KV pool and the step's buffers come later
# Copies up to this size share arenas of ARENA bytes, each on large pages of its own: every copy in
# its own mapping would round up to a whole 2 MiB page (a DeepSeek-V3 layer has ~10 dense weights).
SHARED_UP_TO, ARENA = 8 * LARGE_PAGE, 32 * LARGE_PAGE


class LargePageCopies:
    """copies(t) -> t's bytes in large-page memory, or t itself: with is_on False, where the OS
    offers no large pages, or once the copies would eat into the headroom."""

    def __init__(self, is_on: bool = True):
        self.is_on, self.is_offered = is_on, large_pages_offered()
        self.left = int(free_bytes(torch.device("cpu")) * (1 - HEADROOM)) if is_on and self.is_offered else 0
        self.copied = self.kept = 0
        self.arena, self.used = None, 0  # the arena small copies go to, and its bytes taken

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if not self.is_on or t.device.type != "cpu":
            return t
        if not self.is_offered:
            say_once("the OS offers no 2 MiB pages (transparent_hugepage is off): the CPU streams weights "
                     "from the file's pages")
            return t
        nbytes = t.numel() * t.element_size()
        if nbytes > self.left:
            self.kept += nbytes
            say_once(f"weights the CPU streams stay on the file's pages past {self.copied / 2**30:.1f} GiB of "
                     f"copies: more would leave less than {HEADROOM:.0%} of the available memory "
                     "(decode can be ~6% slower on 4 KiB pages; --mmap keeps them all on the file)")
            return t
        self.left -= nbytes
        self.copied += nbytes
        return host_copy(t) if nbytes > SHARED_UP_TO else self._shared_copy(t)

    def for_kernels(self, t: torch.Tensor, fmt: str, matrices: int = 1, is_mapped: bool = False) \
            -> tuple[torch.Tensor, str]:
        """(bytes, format) the native kernels stream for weight t of `matrices` matrices in fmt: a copy
        regrouped into their layout where the kernels in use have one (regroup.regroups), each matrix
        is whole groups and t is_mapped (a view of a file's mapping, whose blocks the caller then keeps
        for every other reader at no memory cost: weights encoded at load would be held twice), else
        self(t) in fmt."""
        nbytes = t.numel() * t.element_size()
        if not self.is_on or not is_mapped or t.device.type != "cpu" or not regroup.regroups(fmt) or \
                nbytes % (matrices * GROUP_BYTES) or nbytes > self.left:
            return self(t), fmt
        self.left -= nbytes
        self.copied += nbytes
        # copied first, then regrouped in place: torch's copy faults the new pages in on every thread
        # (one thread regrouping from the file: a load of 8.6 s against 3.5; in place, +0.13 s for 2.9 GB)
        out = self._space(nbytes, GROUP_BYTES)
        copy_into(out, t)
        return out.view(t.shape), regroup.regroup(out, fmt, out)

    def _space(self, nbytes: int, align: int = PAGE) -> torch.Tensor:
        """nbytes of host_bytes memory at a multiple of align: their own mapping when large, else in the
        current arena (a new one when they do not fit), from a page boundary."""
        if nbytes > SHARED_UP_TO:
            whole = host_bytes(nbytes + align)
            at = -whole.data_ptr() % align
            return whole[at:at + nbytes]
        at = -(-self.used // PAGE) * PAGE
        if self.arena is not None:
            at += -(self.arena.data_ptr() + at) % align
        if self.arena is None or at + nbytes > ARENA:
            self.arena = host_bytes(ARENA)
            at = -self.arena.data_ptr() % align
        self.used = at + nbytes
        return self.arena[at:self.used]

    def _shared_copy(self, t: torch.Tensor) -> torch.Tensor:
        return copy_into(self._space(t.numel() * t.element_size()), t)


class NoCopies:
    """copies(t) -> t, and for_kernels(t, fmt) -> (t, fmt): the kernels stream the given bytes."""

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def for_kernels(self, t: torch.Tensor, fmt: str, matrices: int = 1, is_mapped: bool = False) \
            -> tuple[torch.Tensor, str]:
        return t, fmt


no_copies = NoCopies()
