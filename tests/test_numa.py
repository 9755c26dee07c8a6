"""--numa (experts/numa.py, csrc/numa.h): the engine's threads split into nodes, each taking the work
units in its own share of every expert's rows first. Every row is computed by the same kernel calls
whatever the split, so a layer's output must equal --numa off's bit for bit, for every format and
batch; virtual nodes run that scheduling on this one-node machine."""
from __future__ import annotations

import ctypes
import errno
import subprocess
import sys

import pytest
import torch

from hymoe.errors import HymoeError
from hymoe.experts import native
from hymoe.experts.numa import parse_numa
from test_native_moe import BOUND, layer, routing, run

pytestmark = pytest.mark.skipif(native.library() is None, reason="native kernels not built")
H = 512


@pytest.fixture(scope="module")
def engines():
    # the unit grid depends on the thread count, so each split is compared at the same count
    return {(t, n): native.NativeEngine(t, is_async=False, numa=f"virtual:{n}" if n > 1 else "off")
            for t, n in ((2, 1), (2, 2), (3, 1), (3, 3), (4, 1), (4, 2))}


@pytest.mark.parametrize("fmt", list(BOUND))
def test_virtual_nodes_equal_numa_off_bit_for_bit(engines, fmt):
    raw, _ = layer((fmt, fmt, fmt))
    for tokens, k in ((1, 8), (17, 4), (150, 8)):  # decode, per-row kernels with a few tokens, tiles
        x = torch.randn(tokens, H, generator=torch.Generator().manual_seed(tokens))
        ids, w = routing(tokens, k, tokens + k)
        for threads, nodes in ((2, 2), (3, 3), (4, 2)):
            off = run(native.NativeExperts(engines[threads, 1], *raw, (fmt,) * 3, H, 256), x, ids, w)
            split = native.NativeExperts(engines[threads, nodes], *raw, (fmt,) * 3, H, 256)
            assert engines[threads, nodes].nodes == nodes
            assert torch.equal(run(split, x, ids, w), off), (fmt, tokens, k, threads, nodes)


def test_a_long_batch_per_expert_takes_the_blocked_path_alike(engines):
    raw, _ = layer(("Q4_K",) * 3)
    x = torch.randn(600, H, generator=torch.Generator().manual_seed(1))
    ids, w = routing(600, 8, 3)  # ~530 tokens per expert: blocks of 64 tokens, small units
    off = run(native.NativeExperts(engines[4, 1], *raw, ("Q4_K",) * 3, H, 256), x, ids, w)
    assert torch.equal(run(native.NativeExperts(engines[4, 2], *raw, ("Q4_K",) * 3, H, 256), x, ids, w), off)


def test_numa_values_and_their_errors():
    assert parse_numa(None, 1) == (1, False) and parse_numa("off", 4) == (1, False)
    assert parse_numa("auto", 2) == (2, True) and parse_numa("auto", 1) == (1, False)
    assert parse_numa("virtual:3", 1) == (3, False)
    for bad in ("virtual:0", "virtual:17", "virtual:x", "2", "on"):
        with pytest.raises(HymoeError, match="--numa"):
            parse_numa(bad, 1)
    with pytest.raises(HymoeError, match="at least as many threads"):
        native.NativeEngine(2, is_async=False, numa="virtual:3")


def test_binding_rows_to_this_machines_node_and_refusing_missing_ones():
    lib = native.library()
    t = torch.zeros(4, 1 << 16, dtype=torch.uint8)  # 4 experts of 64 rows of 1 KiB
    args = (ctypes.c_void_p(t.data_ptr()), 4, ctypes.c_int64(1 << 16), 64, ctypes.c_int64(1024))
    assert lib.hymoe_numa_bind_rows(*args, 1) == 0  # node 0 exists everywhere
    assert lib.hymoe_numa_bind_rows(*args, lib.hymoe_numa_nodes() + 1) == errno.EINVAL


def test_cli_refuses_a_bad_numa_value_in_one_line():
    r = subprocess.run([sys.executable, "-m", "hymoe.cli", "bench", "experts", "--numa", "virtual:99"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "--numa 'virtual:99'" in r.stderr.strip().splitlines()[-1]


def test_inspect_splits_host_memory_across_nodes_without_duplicating_it(tmp_path):
    from hymoe.bench.random_gguf import write_sparse_gguf
    from hymoe.inspect import inspect_model

    path = write_sparse_gguf(tmp_path / "ds.gguf", "deepseek-v3", 4, "Q4_K", "Q4_K")  # headers over a hole
    one = inspect_model(path, "cpu", "bfloat16", 4096)
    two = inspect_model(path, "cpu", "bfloat16", 4096, numa="virtual:2")
    assert one["cpu_per_numa_node"] == [one["devices"]["cpu"]]
    nodes = two["cpu_per_numa_node"]
    assert len(nodes) == 2 and sum(nodes) == one["devices"]["cpu"] <= 1.05 * path.stat().st_size
    rest = one["devices"]["cpu"] - one["experts_bytes"]  # dense weights and KV: on the loading node
    assert nodes[0] - rest == pytest.approx(nodes[1], rel=1e-3)  # the experts' rows split evenly
