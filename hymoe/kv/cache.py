"""Paged KV cache: one pool of fixed-size blocks per layer and entry; each sequence reaches its
positions through a block table (kv/blocks.py decides which blocks it holds).

Each attention layer declares what it stores (`cache_entries`): GQA keeps k and v, MLA keeps only
its compressed latent, which is what makes DeepSeek's cache small.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from hymoe.errors import HymoeError
from hymoe.host_memory import host_bytes


@dataclass(slots=True)
class Step:
    """Where one forward pass reads and writes: the same for every layer."""

    positions: torch.Tensor  # [B, T] absolute position of each new token
    table: torch.Tensor  # [B, M] int64 block holding each row's positions j*bs..(j+1)*bs-1
    slots: torch.Tensor  # [B, T] int64 where each token's entries go: block * bs + offset
    kv_len: int  # S: positions 0..S-1 are attended (S <= M * bs)
    # [B, 1, T, S] bool, True = may attend; None until a layer asks (attn_mask): the native layers
    # never do, and building it was ~30 us of a decode step's Python
    mask: torch.Tensor | None = None
    window_mask: torch.Tensor | None = None  # the same, limited to a sliding window (layers that use one)
    # under a retention policy (kv/retention.py): slot s of a row holds position kept[b, s] (-1: none),
    # no longer position s, so the mask is built from kept; native kernels that assume slot = position
    # step aside when it is set
    kept: torch.Tensor | None = None  # [B, S] int64
    is_query: torch.Tensor | None = None  # [B, T] bool: real tokens (not padding), whose attention counts
    mass: torch.Tensor | None = None  # [B, S] float32: attention weight per slot, summed by the layers (h2o)
    select: torch.Tensor | None = None  # [B] int64: blocks of select_size slots each query attends (0: all)
    select_size: int = 0
    window: int | None = None  # the sliding window attn_mask builds window_mask for

    @staticmethod
    def build(positions: torch.Tensor, kv_len: int, table: torch.Tensor, slots: torch.Tensor,
              window: int | None = None) -> "Step":
        """A step over absolute positions: its masks causal (and within `window`), built on first use."""
        return Step(positions, table, slots, kv_len, window=window)

    def attn_mask(self, is_sliding: bool = False) -> torch.Tensor:
        """[B, 1, T, S] bool, True = may attend: the causal mask, or the sliding window's."""
        if self.mask is None:
            keys = torch.arange(self.kv_len, device=self.positions.device)
            mask = keys <= self.positions[..., None]  # [B, T, S] causal over absolute positions
            if self.window:
                window_mask = mask & (keys > self.positions[..., None] - self.window)
                window_mask |= (self.positions >= self.kv_len)[..., None]  # padding rows: anything, so no row is empty
                self.window_mask = window_mask[:, None]
            self.mask = mask[:, None]
        return self.window_mask if is_sliding else self.mask

    @staticmethod
    def build_kept(positions: torch.Tensor, kept: torch.Tensor, table: torch.Tensor, slots: torch.Tensor,
                   is_query: torch.Tensor, window: int | None = None, is_mass: bool = False,
                   select: torch.Tensor | None = None, select_size: int = 0) -> "Step":
        """A step whose rows hold the positions `kept` [B, S] (-1: an empty slot) at their slots."""
        held = kept[:, None, :]  # [B, 1, S]
        mask = (held >= 0) & (held <= positions[..., None])  # [B, T, S] causal over the held positions
        window_mask = None
        if window:
            window_mask = (mask & ((held > positions[..., None] - window) | ~is_query[..., None]))[:, None]
        mass = torch.zeros(kept.shape, dtype=torch.float32, device=kept.device) if is_mass else None
        return Step(positions, table, slots, kept.shape[1], mask[:, None], window_mask, kept, is_query, mass, select,
                    select_size, window)

    def to(self, device: torch.device) -> "Step":
        """The same step for layers on another device (layer-split placements); the mass they sum
        stays one tensor."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Step(move(self.positions), move(self.table), move(self.slots), self.kv_len, move(self.mask),
                    move(self.window_mask), move(self.kept), move(self.is_query), self.mass, move(self.select),
                    self.select_size, self.window)


def slots_of(positions: torch.Tensor, table: torch.Tensor, block_size: int) -> torch.Tensor:
    """positions [B, T] -> [B, T] where their entries go: the block table [B, M] gives, per row,
    the block of each block_size positions; the slot is block * block_size + offset."""
    return table.gather(1, positions // block_size) * block_size + positions % block_size


def _host_pool(layers: list[dict[str, tuple[int, ...]]], dtype: torch.dtype):
    """The CPU layers' buffers, in their order, as views of one zeroed allocation on 2 MiB pages
    (host_bytes): a decode step's attention reads rows spread over the whole pool, which on 4 KiB
    pages takes far more TLB entries than a core has (Qwen3 shape, 2,048 positions, Zen 4: attention
    5.65 -> 5.32 ms a step). The pages are zero until first written, so a large pool costs no time
    to clear and no memory until used (6 GiB: 1 ms, where torch.zeros took 7.4 s)."""
    page = 4096  # each buffer starts on a page: aligned for any vector load
    sizes = [-(-torch.Size(shape).numel() * dtype.itemsize // page) * page for entries in layers
             for shape in entries.values()]
    try:
        pool, at = host_bytes(sum(sizes)), 0
    except OSError as e:  # the OS refuses the mapping (overcommit off, a ulimit): one line, not a traceback
        raise HymoeError(f"the KV pool's {sum(sizes) / 2**30:.2f} GiB cannot be mapped: {e.strerror or e} "
                         "(a smaller --kv-memory or --max-context needs less)") from None
    for shape, size in zip((shape for entries in layers for shape in entries.values()), sizes):
        yield pool[at:at + torch.Size(shape).numel() * dtype.itemsize].view(dtype).view(shape)
        at += size


class KVCache:
    """Per layer: name -> [num_blocks + 1, block_size, *entry]. The last block is scratch: padding
    tokens write there and table entries past a row's length point there; masks hide it."""

    def __init__(self, layer_entries: list[dict[str, tuple[int, ...]]], num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device | str | list = "cpu"):
        self.num_blocks, self.block_size = num_blocks, block_size
        devices = device if isinstance(device, list) else [device] * len(layer_entries)  # one per layer
        shapes = [{name: (num_blocks + 1, block_size, *shape) for name, shape in entries.items()}
                  for entries in layer_entries]
        host = _host_pool([s for s, dev in zip(shapes, devices) if torch.device(dev).type == "cpu"], dtype)
        self.layers = [
            {name: next(host) if torch.device(dev).type == "cpu" else torch.zeros(shape, dtype=dtype, device=dev)
             for name, shape in entries.items()}
            for entries, dev in zip(shapes, devices)
        ]

    @property
    def scratch(self) -> int:
        return self.num_blocks

    @staticmethod
    def position_bytes(layer_entries: list[dict[str, tuple[int, ...]]], dtype: torch.dtype) -> int:
        """Bytes one position takes across every layer."""
        return sum(int(torch.Size(s).numel()) for layer in layer_entries for s in layer.values()) * dtype.itemsize

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.values())

    def copy_block(self, src: int, dst: int) -> None:
        for layer in self.layers:
            for buf in layer.values():
                buf[dst] = buf[src]

    def move_slots(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Entries at flat slots src [N] go to dst [N] in every layer (all read before any is written)."""
        for layer in self.layers:
            for buf in layer.values():
                flat = buf.view(-1, *buf.shape[2:])  # [(num_blocks + 1) * bs, ...]
                flat[dst.to(flat.device)] = flat[src.to(flat.device)]

    @staticmethod
    def write(buf: torch.Tensor, new: torch.Tensor, step: Step) -> None:
        """Store new [B, T, ...] at the step's slots."""
        flat = buf.view(-1, *buf.shape[2:])  # [(num_blocks + 1) * bs, ...]
        flat[step.slots.flatten()] = new.flatten(0, 1).to(buf.dtype)

    @staticmethod
    def write_read(buf: torch.Tensor, new: torch.Tensor, step: Step) -> torch.Tensor:
        """Store new [B, T, ...] at the step's slots; return each row's positions [B, S, ...]."""
        KVCache.write(buf, new, step)
        num = -(-step.kv_len // buf.shape[1])  # blocks that hold positions 0..S-1
        return buf[step.table[:, :num]].flatten(1, 2)[:, : step.kv_len]  # [B, num * bs, ...] -> [B, S, ...]
