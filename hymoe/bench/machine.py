"""What the machine can do, measured in the same run as what it bounds."""
from __future__ import annotations

import time

import torch


def read_gbps(engine, size_gb: float = 1.0) -> float:
    """Streaming read of a buffer far larger than the last-level cache, on the engine's threads."""
    buf = torch.ones(int(size_gb * (1 << 30)), dtype=torch.uint8)
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
