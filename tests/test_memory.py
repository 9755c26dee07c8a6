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
# Inputs and outputs are views of preallocated buffers, so that what grows is the kernels, not
# malloc's heap (large freed tensors move glibc's mmap threshold and the heap keeps them).
x, out = torch.randn(1200, 512, dtype=torch.bfloat16), torch.empty(1200, 1024, dtype=torch.bfloat16)
torch.mm(x[:1], w.T, out=out[:1])
before = rss_mib()
for m in range(2, 1200):  # a new shape each time, as decode attention meets at every length
    torch.mm(x[:m], w.T, out=out[:m])
    if m == 600:
        half = rss_mib()
print(os.environ["LRU_CACHE_CAPACITY"], os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"], half - before, rss_mib() - half)
"""


def _run(env_extra: dict) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")}
    r = subprocess.run([sys.executable, "-c", SHAPES], capture_output=True, text=True, env=env | env_extra, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_bf16_matmul_kernels_per_shape_are_bounded():
    """oneDNN keeps a compiled kernel per matmul shape (1,024 of them by default in each of two caches,
    up to 0.7 MB apiece): on a Zen 4, shapes 600-1,200 grow the process by ~330 MiB with the default
    caches and by ~20 MiB once hymoe caps both at 256 entries. The kernels' size depends on the CPU
    (AMX ones are larger), so the bound is the plateau: the second 600 shapes add a small fraction of
    what the first 600 did."""
    lru, prim, first, second = _run({})
    assert (lru, prim) == ("256", "256")
    assert int(second) < 0.3 * int(first), (first, second)


def test_a_users_cache_sizes_win():
    assert _run({"LRU_CACHE_CAPACITY": "64", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "32"})[:2] == ["64", "32"]
