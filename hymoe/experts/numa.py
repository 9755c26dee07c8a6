"""`--numa off|auto|virtual:N`: the native engine over NUMA nodes without duplicating weights.

Each routed expert's matrices are split by rows across the nodes (csrc/numa.h): the pages of node k's
rows are bound to node k, and node k's pool threads (pinned to its CPUs) compute the work units that
start in those rows, helping the other nodes only with what is left at a phase's end. Every row is
computed by the same kernel calls whatever the node count, so results equal `--numa off` exactly.
`auto` takes this machine's nodes (off where it has one); `virtual:N` splits this machine's threads
into N pretend nodes with the same scheduling and no memory binding, so it is tested anywhere.
"""
from __future__ import annotations

import ctypes
import errno
import re

from hymoe.errors import HymoeError, say_once

MAX_NODES = 16  # csrc/pool.h kMaxNodes


def node_first_row(rows: int, node: int, nodes: int) -> int:
    """The first row of node k's share of a matrix (csrc/numa.h's, mirrored for inspect's plan)."""
    return rows if node >= nodes else rows * node // nodes // 16 * 16


def parse_numa(spec: str | None, machine_nodes: int) -> tuple[int, bool]:
    """(nodes, is_real) for a --numa value; machine_nodes: this machine's nodes with usable CPUs."""
    spec = (spec or "off").strip().lower()
    if spec == "off":
        return 1, False
    if spec == "auto":
        if machine_nodes < 2:
            say_once(f"--numa auto: this machine has {max(machine_nodes, 1)} NUMA node; as --numa off")
            return 1, False
        return min(machine_nodes, MAX_NODES), True
    m = re.fullmatch(r"virtual:(\d+)", spec)
    if m and 1 <= int(m[1]) <= MAX_NODES:
        return int(m[1]), False
    raise HymoeError(f"--numa {spec!r}: use off, auto or virtual:N (N from 1 to {MAX_NODES})")


def bind_rows(lib, tensors, row_counts, row_bytes, nodes: int) -> None:
    """Each stacked expert tensor's rows (uint8 [E, rows * row_bytes]) bound to their nodes' memory."""
    for t, rows, rb in zip(tensors, row_counts, row_bytes):
        rc = lib.hymoe_numa_bind_rows(ctypes.c_void_p(t.data_ptr()), t.shape[0], ctypes.c_int64(t[0].numel()),
                                      rows, ctypes.c_int64(rb), nodes)
        if rc:
            say_once(f"--numa: expert pages could not be bound to their nodes ({errno.errorcode.get(rc, rc)}); "
                     "threads still take their nodes' rows first")
            return
