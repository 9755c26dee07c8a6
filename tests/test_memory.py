"""Memory that must not grow with the traffic a server meets (issue 24, the soak)."""
import os
import subprocess
import sys

SHAPES = r"""
import os, sys, torch
import hymoe  # noqa: F401  (sets the caches' sizes, unless the environment did)

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))

torch.set_num_threads(2)
w = torch.randn(1024, 512, dtype=torch.bfloat16)
torch.randn(1, 512, dtype=torch.bfloat16) @ w.T
before = rss_mib()
for m in range(2, 1200):  # a new shape each time, as decode attention meets at every length
    torch.randn(m, 512, dtype=torch.bfloat16) @ w.T
print(os.environ["LRU_CACHE_CAPACITY"], os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"], rss_mib() - before)
"""


def _run(env_extra: dict) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")}
    r = subprocess.run([sys.executable, "-c", SHAPES], capture_output=True, text=True, env=env | env_extra, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_bf16_matmul_kernels_per_shape_are_bounded():
    """oneDNN keeps a compiled kernel per matmul shape (1,024 of them by default in each of two caches,
    up to 0.7 MB apiece): 1,200 shapes grew this process by ~720 MB on a Zen 4 before hymoe capped
    both caches at 256 entries (~200 MB)."""
    lru, prim, grown = _run({})
    assert (lru, prim) == ("256", "256")
    assert int(grown) < 400


def test_a_users_cache_sizes_win():
    assert _run({"LRU_CACHE_CAPACITY": "64", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "32"})[:2] == ["64", "32"]
