"""Which KV blocks each row (a sequence being computed) holds, and the full blocks kept for reuse.

A full block is keyed by a digest of every token up to its end (its parent's key and its own
tokens), as vLLM and SGLang do, so two prompts that begin alike find the same blocks: a second
request with the same system prompt, or the next turn of a chat, computes only what is new.
Blocks nobody references stay cached until the pool needs them, least recently used first.
A registered block is full and never written again; rows write only blocks they alone hold.
Rows under a retention policy (kv/policy.py) are private: their slots stop matching their tokens'
positions once the policy evicts, so they neither take cached blocks nor register their own.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque

from hymoe.errors import HymoeError


def block_key(parent: bytes, tokens: list[int]) -> bytes:
    return hashlib.sha256(parent + array("q", tokens).tobytes()).digest()


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise HymoeError(f"a KV pool needs at least one block of one position, got {num_blocks} of {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.refs = [0] * num_blocks  # rows holding each block
        self.keys: list[bytes | None] = [None] * num_blocks  # the key of a registered block
        self.by_key: dict[bytes, int] = {}
        self.free: deque[int] = deque(range(num_blocks))  # unreferenced and unregistered
        self.idle: OrderedDict[int, None] = OrderedDict()  # unreferenced, registered: least recently used first
        self.tables: dict[int, list[int]] = {}  # row -> its blocks, in position order
        self.tokens: dict[int, list[int]] = {}  # row -> the tokens whose entries it holds
        self.chains: dict[int, list[bytes]] = {}  # row -> the keys of its full blocks
        self.private: set[int] = set()  # rows that neither share nor register blocks (a retention policy)

    @property
    def available(self) -> int:
        """Blocks a row may still take: free ones, then cached ones nobody references."""
        return len(self.free) + len(self.idle)

    def blocks_for(self, positions: int) -> int:
        return -(-positions // self.block_size)

    def share(self, row: int, tokens: list[int]) -> int:
        """Start row over with the cached blocks of tokens' longest prefix; returns the positions
        they hold. The last token is left to compute (its logits are wanted), so a prompt that is
        all cached still computes its last block."""
        self.release(row)
        table, chain, parent = self.tables.setdefault(row, []), self.chains.setdefault(row, []), b""
        for j in range(0 if row in self.private else (len(tokens) - 1) // self.block_size):
            key = block_key(parent, tokens[j * self.block_size:(j + 1) * self.block_size])
            if (block := self.by_key.get(key)) is None:
                break
            self._ref(block)
            table.append(block)
            chain.append(parent := key)
        self.tokens[row] = tokens[: len(table) * self.block_size]
        return len(table) * self.block_size

    def reserve(self, row: int, end: int) -> bool:
        """Blocks for row's positions up to end; False (and nothing taken) if the pool has too few."""
        table = self.tables.setdefault(row, [])
        need = self.blocks_for(end) - len(table)
        if need > self.available:
            return False
        table += [self._take() for _ in range(need)]
        return True

    def prepare(self, row: int, start: int, end: int) -> list[tuple[int, int]]:
        """Make row writable from start to end: positions from start on are rewritten, so a shared
        or registered block they fall in is copied first. Returns the (source, copy) block pairs
        to copy. Raises if the pool cannot hold them."""
        self.tables.setdefault(row, []), self.chains.setdefault(row, [])
        tokens = self.tokens.setdefault(row, [])
        if start > len(tokens):
            raise HymoeError(f"row {row} holds {len(tokens)} positions; it cannot be written from {start}")
        copies = self._cut(row, start) if start < len(tokens) else []
        if not self.reserve(row, end):
            raise HymoeError(f"the KV pool's {self.num_blocks} blocks of {self.block_size} positions are all in use")
        return copies

    def commit(self, row: int, start: int, tokens: list[int]) -> None:
        """tokens' entries are now in row from start on: register the blocks they fill."""
        held = self.tokens[row]
        held[start:] = tokens
        if row in self.private:
            return
        chain, table, bs = self.chains[row], self.tables[row], self.block_size
        for j in range(len(chain), len(held) // bs):
            chain.append(block_key(chain[-1] if chain else b"", held[j * bs:(j + 1) * bs]))
            if chain[-1] not in self.by_key:  # else another block holds the same: this one stays private
                self.by_key[chain[-1]], self.keys[table[j]] = table[j], chain[-1]

    def release(self, row: int) -> None:
        """Row ends: its blocks lose a reference; registered ones stay cached, tail first to go."""
        for block in reversed(self.tables.pop(row, [])):
            self._unref(block)
        self.tokens.pop(row, None)
        self.chains.pop(row, None)

    def compact(self, row: int, live: list[int]) -> None:
        """A private row's entries at slots `live` (increasing) now sit at slots 0..len(live)-1: it
        keeps the blocks those need, and the rest go back to the pool."""
        assert row in self.private and all(self.refs[b] == 1 and self.keys[b] is None for b in self.tables[row])
        self.tokens[row] = [self.tokens[row][i] for i in live]
        self.trim(row, len(live))

    def trim(self, row: int, slots: int) -> None:
        """Row holds only the blocks its first `slots` slots need (a policy dropped the rest)."""
        table = self.tables.get(row, [])
        for block in reversed(table[self.blocks_for(slots):]):
            self._unref(block)
        del table[self.blocks_for(slots):]
        del self.tokens.setdefault(row, [])[slots:]

    def table(self, row: int) -> list[int]:
        return self.tables.get(row, [])

    def _ref(self, block: int) -> None:
        self.refs[block] += 1
        self.idle.pop(block, None)

    def _take(self) -> int:
        if self.free:
            block = self.free.popleft()
        else:  # evict the least recently used cached block
            block, _ = self.idle.popitem(last=False)
            del self.by_key[self.keys[block]]
            self.keys[block] = None
        self.refs[block] = 1
        return block

    def _cut(self, row: int, start: int) -> list[tuple[int, int]]:
        """Row keeps positions before start; the block start falls in is copied if others may read it."""
        table, bs = self.tables[row], self.block_size
        kept = self.blocks_for(start)
        for block in table[kept:]:
            self._unref(block)
        del table[kept:]
        self.tokens[row] = self.tokens[row][:start]
        del self.chains[row][start // bs:]
        copies = []
        if start % bs and (self.refs[table[-1]] > 1 or self.keys[table[-1]] is not None):
            if not self.available:
                raise HymoeError(f"the KV pool's {self.num_blocks} blocks of {bs} positions are all in use")
            copy = self._take()
            copies.append((table[-1], copy))
            self._unref(table[-1])
            table[-1] = copy
        return copies

    def _unref(self, block: int) -> None:
        self.refs[block] -= 1
        if self.refs[block] == 0 and self.keys[block] is None:
            self.free.append(block)
        elif self.refs[block] == 0:
            self.idle[block] = None  # the most recently used end
