"""--kv-memory: how many KV blocks a pool gets, from a size ("8GiB", "512MB") or a fraction of the
memory free on the devices that hold the cache ("0.5")."""
from __future__ import annotations

import os

import torch

from hymoe.errors import HymoeError

_UNITS = {"GIB": 2**30, "MIB": 2**20, "KIB": 2**10, "GB": 10**9, "MB": 10**6, "KB": 10**3}


def parse_kv_memory(value: str | float) -> tuple[int, float]:
    """(bytes, 0.0) for a size, (0, fraction) for a fraction of free memory."""
    text = str(value).strip().upper()
    try:
        for unit, scale in _UNITS.items():
            if text.endswith(unit):
                if (n := int(float(text[: -len(unit)]) * scale)) > 0:
                    return n, 0.0
                break
        else:
            if 0 < (f := float(text)) <= 1:
                return 0, f
    except ValueError:
        pass
    raise HymoeError(f"--kv-memory {value!r}: give a size (8GiB, 512MB) or a fraction of free memory (0.5)")


def free_bytes(device: torch.device) -> int:
    """Memory free for new tensors on a device: the GPU's free memory, the machine's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def pool_blocks(value: str | float, layer_entries: list[dict[str, tuple[int, ...]]], devices: list[torch.device],
                dtype: torch.dtype, block_size: int) -> int:
    """The blocks --kv-memory holds: a size covers every layer's share of each block; a fraction is
    taken of each device's free memory, for the layers that device holds (the scarcest decides)."""
    size, fraction = parse_kv_memory(value)
    per_device: dict[torch.device, int] = {}  # bytes of one block, per device
    for entries, dev in zip(layer_entries, devices):
        per_device[dev] = per_device.get(dev, 0) + block_size * dtype.itemsize * \
            sum(int(torch.Size(s).numel()) for s in entries.values())
    if size:
        blocks = size // max(1, sum(per_device.values()))
    else:
        blocks = min(int(free_bytes(torch.device(d)) * fraction) // b for d, b in per_device.items() if b)
    if blocks < 1:
        raise HymoeError(f"--kv-memory {value!r} holds no KV block of {block_size} positions "
                         f"({sum(per_device.values())} bytes)")
    return blocks
