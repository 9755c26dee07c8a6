"""Retention: a runner's rows under KV policies (kv/policy.py), over its block pool and cache.

A row under a policy fills its slots in order, whatever the positions: slot s holds position
pos[s], or nothing (-1) once the policy evicted it. Keys are stored after RoPE, so moving an entry
to another slot changes nothing in its attention; the mask works on what each slot holds. When a
block's worth of slots are empty, the kept entries move to the front in order and the blocks past
them go back to the pool, so what a row holds is at most its kept positions, one block of holes
and the unfilled tail of its last block. Rows without a policy (full) keep slot = position and are
not tracked here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hymoe.kv.blocks import BlockPool
from hymoe.kv.cache import KVCache, Step, slots_of
from hymoe.kv.policy import Policy


@dataclass(slots=True)
class RowSlots:
    pos: list[int] = field(default_factory=list)  # the position each slot holds, -1: evicted
    mass: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))  # [slots] h2o's score
    peak_blocks: int = 0  # the most blocks the row held at once (during a pass included)
    kept_blocks: int = 0  # the most it held between passes, after the policy


class Retention:
    def __init__(self, pool: BlockPool, cache: KVCache, policy: Policy, num_rows: int):
        self.pool, self.cache, self.default = pool, cache, policy
        self.policies: dict[int, Policy] = {}
        self.rows: dict[int, RowSlots] = {}
        for row in range(num_rows):
            self.set_policy(row, policy)

    def policy(self, row: int) -> Policy:
        return self.policies.get(row, self.default)

    def set_policy(self, row: int, policy: Policy) -> None:
        """Row follows policy from its next sequence (a private row takes no cached prefix)."""
        self.policies[row] = policy
        (self.pool.private.discard if policy.is_full else self.pool.private.add)(row)

    def is_plain(self, rows: list[int]) -> bool:
        return all(self.policy(r).is_full for r in rows)

    def slots_at(self, row: int, start: int) -> int:
        """The slot where position `start` of row goes: a policy row drops what it held from start on."""
        if self.policy(row).is_full:
            return start
        st = self.rows.setdefault(row, RowSlots())
        if start == 0:  # a new sequence in the row
            self.rows[row] = st = RowSlots()
        cut = next((i + 1 for i in range(len(st.pos) - 1, -1, -1) if 0 <= st.pos[i] < start), 0)
        st.pos, st.mass = st.pos[:cut], st.mass[:cut]
        return cut

    def step(self, rows: list[int], positions: torch.Tensor, table: torch.Tensor, slots: torch.Tensor,
             at: list[int], max_len: int, window: int | None, device: torch.device) -> Step:
        """The step of a pass whose row b writes tokens at positions [B, T] (padding at max_len)
        to its slots from at[b]; table [B, M] and slots [B, T] as the runner built them."""
        lens = (positions < max_len).sum(1).tolist()
        kept = torch.full((len(rows), max(a + n for a, n in zip(at, lens))), -1, dtype=torch.long)  # [B, S]
        for b, (row, a, n) in enumerate(zip(rows, at, lens)):
            if self.policy(row).is_full:
                kept[b, :a + n] = torch.arange(a + n)
            else:
                kept[b, :a] = torch.tensor(self.rows[row].pos, dtype=torch.long)
                kept[b, a:a + n] = positions[b, :n]
        is_mass = any(self.policy(r).needs_mass for r in rows)
        select = torch.tensor([self.policy(r).select_blocks for r in rows])  # [B]
        return Step.build_kept(positions.to(device), kept.to(device), table.to(device), slots.to(device),
                               (positions < max_len).to(device), window, is_mass,
                               select.to(device) if select.any() else None, self.pool.block_size)

    def after(self, rows: list[int], at: list[int], lens: list[int], positions: torch.Tensor,
              mass: torch.Tensor | None) -> None:
        """A pass wrote lens[b] tokens at positions [B, T] from slots at[b]: the policies choose what stays."""
        for b, (row, a, n) in enumerate(zip(rows, at, lens)):
            if (policy := self.policy(row)).is_full:
                continue
            st = self.rows[row]
            st.pos += positions[b, :n].tolist()
            summed = torch.zeros(len(st.pos), dtype=torch.float64)
            summed[:a] = st.mass
            if mass is not None:
                summed += mass[b, :len(st.pos)].double().cpu()
            st.mass = summed
            st.peak_blocks = max(st.peak_blocks, len(self.pool.table(row)))
            self._evict(row, st, policy)
            st.kept_blocks = max(st.kept_blocks, len(self.pool.table(row)))

    def _evict(self, row: int, st: RowSlots, policy: Policy) -> None:
        live = [i for i, p in enumerate(st.pos) if p >= 0]
        keep = policy.keep(torch.tensor([st.pos[i] for i in live], dtype=torch.long), st.mass[live]).tolist()
        for i, is_kept in zip(live, keep):
            if not is_kept:
                st.pos[i], st.mass[i] = -1, 0.0
        if len(st.pos) - sum(keep) >= self.pool.block_size:
            self._compact(row, st)
        self.pool.trim(row, len(st.pos))  # blocks reserved past the last slot go back too

    def _compact(self, row: int, st: RowSlots) -> None:
        """Kept entries to slots 0..K-1 in order (attention over them is unchanged); blocks past them freed."""
        live = [i for i, p in enumerate(st.pos) if p >= 0]
        table = torch.tensor(self.pool.table(row), dtype=torch.long)[None]  # [1, M]
        bs = self.pool.block_size
        src = slots_of(torch.tensor(live, dtype=torch.long)[None], table, bs)[0]  # [K] flat slots
        dst = slots_of(torch.arange(len(live))[None], table, bs)[0]
        moved = src != dst
        self.cache.move_slots(src[moved], dst[moved])
        self.pool.compact(row, live)
        st.pos, st.mass = [st.pos[i] for i in live], st.mass[live]

    def held(self, row: int) -> RowSlots:
        """What a policy row has held (empty for full rows)."""
        return self.rows.get(row, RowSlots())
