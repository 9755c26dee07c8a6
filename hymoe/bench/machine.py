"""What the machine can do, measured in the same run as what it bounds."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from hymoe.host_memory import host_bytes


def llc_bytes() -> int:
    """Size of the last-level cache (Linux sysfs), or 64 MiB when it cannot be read."""
    best = 0
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
        try:
            best = max(best, int(text.rstrip("KMG")) * scale)
        except ValueError:
            continue
    return best or 64 << 20


def cold_bytes() -> int:
    """A working set that random expert picks rarely find in the cache: sixteen times the last-level
    cache, at least 1 GiB, at most a third of the machine's memory."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(max(1 << 30, 16 * llc_bytes()), ram // 3)


def read_gbps(engine) -> float:
    """Streaming read of a buffer four times the last-level cache (a sequential scan that large
    gets no cache hits), on the engine's threads."""
    buf = host_bytes(max(1 << 30, 4 * llc_bytes())).fill_(1)  # large pages, like the weights it bounds
    engine.read_gbps(buf, 1)  # touch every page first
    return max(engine.read_gbps(buf, 3) for _ in range(3))


def bf16_gemm_gflops(m: int = 128, k: int = 4096, n: int = 4096, seconds: float = 1.0) -> float:
    """torch (oneDNN) bf16 matmul [m, k] x [k, n]: the compute yardstick for batched expert work."""
    a = torch.randn(m, k).bfloat16()
    b = torch.randn(k, n).bfloat16()
    for _ in range(3):
        a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
    return best
