"""Runner: turns lists of token ids into one batched forward pass over the model and its KV cache.

It makes no policy (what to run next is the caller's); it only packs, runs and picks logits.
"""
from __future__ import annotations

import contextlib
import threading

import torch

from hymoe.kv.blocks import BlockPool
from hymoe.errors import say_once
from hymoe.kv.cache import KVCache, Step
from hymoe.kv.policy import Policy, parse_policy
from hymoe.kv.retention import Retention
from hymoe.models.decoder import Decoder

# positions per KV block: a prompt shares cached blocks whole, and attention reads a block at a time
DEFAULT_BLOCK_SIZE = 64


class Runner:
    """num_slots rows (sequences computed at once), each up to max_len positions, over a pool of
    num_blocks KV blocks of block_size positions (default: enough for every row's max_len)."""

    def __init__(self, model: Decoder, num_slots: int, max_len: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu", is_graphed: bool = False, step_scope=None,
                 kv_dtype: torch.dtype | None = None, lock: threading.Lock | None = None,
                 block_size: int = DEFAULT_BLOCK_SIZE, num_blocks: int | None = None,
                 kv_policy: Policy | str | None = None):
        self.model, self.num_slots, self.max_len, self.device = model, num_slots, max_len, torch.device(device)
        # one pass at a time on the model, whichever thread calls: every runner of one model shares
        # its weights, its native engine and its staging buffers
        self.lock = lock or threading.Lock()
        # how a pass of this many tokens per row shares the CPU (NativeEngine.step_scope), or None
        self.step_scope = step_scope
        self.table_width = -(-max_len // block_size)  # blocks of a row at its longest
        self._table = None  # the last block tables, as lists and as the tensor _inputs reuses while they hold
        self.blocks = BlockPool(num_blocks or num_slots * self.table_width, block_size)
        self.cache = KVCache(model.cache_entries(), self.blocks.num_blocks, block_size, kv_dtype or dtype,
                             model.layer_devices())
        # what each row keeps between passes (--kv-policy; full: everything, as without a policy)
        self.retention = Retention(self.blocks, self.cache, parse_policy(kv_policy), num_slots)
        self.graphs = None
        # each row's greedy pick (its logits' argmax) of the last pass, where the model computed it
        # with the logits (Decoder.decode_logits), else None
        self.picks: list[int] | None = None
        if is_graphed and self.device.type == "cuda":  # decode steps as CUDA graphs, per batch size
            from hymoe.engine.cuda_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(model, self.cache, max_len, self.device)

    def forward(self, rows: list[int], tokens: list[list[int]], starts: list[int],
                is_all_logits: bool = False, is_hidden: bool = False) -> torch.Tensor:
        """Write tokens[b] to row rows[b] from position starts[b] (at most the row's length: what
        follows is replaced).

        Returns float32 CPU logits: [B, V] at each row's last token, or [B, T, V] with is_all_logits;
        with is_hidden, the final hidden states (after the last norm) instead: [B, T, H].
        """
        with self.lock:
            return self._pass(rows, tokens, starts, is_all_logits or is_hidden, is_hidden)

    @torch.inference_mode()
    def _pass(self, rows: list[int], tokens: list[list[int]], starts: list[int], is_all_logits: bool,
              is_hidden: bool = False) -> torch.Tensor:
        lens = [len(t) for t in tokens]
        assert all(s + n <= self.max_len for s, n in zip(starts, lens)), "caller checks the context"
        self.picks = None
        if not self.retention.is_plain(rows):
            return self._policy_pass(rows, tokens, starts, is_all_logits, is_hidden)
        for row, start, n in zip(rows, starts, lens):
            for src, dst in self.blocks.prepare(row, start, start + n):
                self.cache.copy_block(src, dst)
        ids, positions, table, slots = self._inputs(rows, tokens, starts)
        if self.graphs is not None and not is_all_logits and all(n == 1 for n in lens):
            logits = self.graphs.run(ids, positions, table, slots)
            if logits is not None:
                self._commit(rows, tokens, starts)
                return logits
        kv_len = max(s + n for s, n in zip(starts, lens))
        if self.device.type != "cpu":  # where the inputs already are, no copies (a decode step's Python)
            positions, table, slots = (t.to(self.device) for t in (positions, table, slots))
        step = Step.build(positions, kv_len, table, slots, self.model.cfg.sliding_window)
        logits = self._logits(ids, step, lens, is_all_logits, is_hidden)
        self._commit(rows, tokens, starts)
        return logits

    def decodes_steps(self, rows: list[int]) -> bool:
        """Whether decode_steps may take these rows: a CPU model's native stack, no CUDA graphs, and
        no retention policy on them."""
        return self.graphs is None and self.device.type == "cpu" and self.model.decodes_steps and \
            self.retention.is_plain(rows)

    def decode_steps(self, rows: list[int], last: list[int], starts: list[int], steps: int) -> list[list[int]] | None:
        """`steps` greedy decode steps in one native call: row rows[b] fed last[b] at position
        starts[b], then each step's pick one position on (reserve their blocks first). Returns the
        picks [steps][B]; None where the model's native stack does not take them (then step by step)."""
        with self.lock:
            return self._steps_pass(rows, last, starts, steps)

    @torch.inference_mode()
    def _steps_pass(self, rows: list[int], last: list[int], starts: list[int], steps: int) -> list[list[int]] | None:
        assert all(s + steps <= self.max_len for s in starts), "caller checks the context"
        self.picks = None
        if not self.decodes_steps(rows):
            return None
        for row, start in zip(rows, starts):
            for src, dst in self.blocks.prepare(row, start, start + steps):
                self.cache.copy_block(src, dst)
        ids, positions, table, slots = self._inputs(rows, [[t] for t in last], starts)
        step = Step.build(positions, max(starts) + 1, table, slots, self.model.cfg.sliding_window)
        with self.step_scope(1) if self.step_scope else contextlib.nullcontext():
            picks = self.model.decode_steps(ids, step, self.cache, steps)
        if picks is not None:  # the tokens each position now holds: the first fed, then the picks
            self._commit(rows, [[t, *(p[b] for p in picks[:-1])] for b, t in enumerate(last)], starts)
        return picks

    def _logits(self, ids: torch.Tensor, step: Step, lens: list[int], is_all_logits: bool,
                is_hidden: bool = False) -> torch.Tensor:
        with self.step_scope(max(lens)) if self.step_scope else contextlib.nullcontext():
            ids = ids if ids.device == self.device else ids.to(self.device)
            if not (is_all_logits or is_hidden) and max(lens) == 1 and \
                    (done := self.model.decode_logits(ids, step, self.cache)) is not None:
                logits, self.picks = done
                return logits
            hidden = self.model(ids, step, self.cache)  # [B, T, H]
            if not is_all_logits and min(lens) == max(lens):
                hidden = hidden[:, -1]  # [B, H]: each row's last (a view: decode steps are all alike)
            elif not is_all_logits:
                hidden = hidden[torch.arange(len(lens)), torch.tensor(lens) - 1]  # [B, H]: each row's last
            out = hidden.float() if is_hidden else self.model.head(hidden)
            return out if out.is_cpu else out.cpu()

    def _policy_pass(self, rows: list[int], tokens: list[list[int]], starts: list[int],
                     is_all_logits: bool, is_hidden: bool = False) -> torch.Tensor:
        """A pass with rows under a retention policy: they write from the slot after what they kept,
        attend under a mask of what each slot holds, then the policies evict (kv/retention.py)."""
        self._say_policy_limits()
        lens = [len(t) for t in tokens]
        at = [self.retention.slots_at(row, start) for row, start in zip(rows, starts)]  # each row's first slot
        for row, a, n in zip(rows, at, lens):
            for src, dst in self.blocks.prepare(row, a, a + n):
                self.cache.copy_block(src, dst)
        ids, positions, table, slots = self._inputs(rows, tokens, starts, at)
        step = self.retention.step(rows, positions, table, slots, at, self.max_len, self.model.cfg.sliding_window,
                                   self.device)
        logits = self._logits(ids, step, lens, is_all_logits, is_hidden)
        self._commit(rows, tokens, at)
        self.retention.after(rows, at, lens, positions, step.mass)
        return logits

    def _say_policy_limits(self) -> None:
        policy = self.retention.default
        if any(getattr(layer.self_attn, "kernel", None) is not None for layer in self.model.layers):
            say_once(f"--kv-policy {policy}: attention of batches with a policy row is computed in torch "
                     "(the native GQA kernel takes slot s to hold position s)")
        if self.graphs is not None:
            say_once(f"--kv-policy {policy}: decode steps with a policy row run without CUDA graphs")

    def reserve(self, row: int, start: int, n: int, first: int | None = None) -> bool:
        """Blocks for n tokens of row from position start (kv/blocks.py: reserve). A policy row
        needs room only for what it kept and, with `first`, its first pass of at most that many."""
        if self.retention.policy(row).is_full:
            return self.blocks.reserve(row, start + n)
        held = len(self.retention.held(row).pos) if start else 0
        return self.blocks.reserve(row, held + min(n, first or n))

    def _inputs(self, rows: list[int], tokens: list[list[int]], starts: list[int],
                at: list[int] | None = None) -> tuple[torch.Tensor, ...]:
        """ids, positions, slots [B, T] and the rows' block tables [B, M] (CPU, int64); padding
        tokens sit at position max_len (they attend anything) and write to the scratch block. Row b's
        tokens go to its slots from at[b] (default: their positions). Built as Python lists: ids,
        positions and slots one tensor, the tables another, reused while they do not change (each
        torch call costs several microseconds at decode, its memory cold after the weights stream)."""
        width, bs, scratch = max(map(len, tokens)), self.blocks.block_size, self.cache.scratch
        ids, positions, table, slots = [], [], [], []
        for b, (toks, start, row) in enumerate(zip(tokens, starts, rows)):
            n, pad = len(toks), width - len(toks)
            blocks = self.blocks.table(row)
            first = start if at is None else at[b]
            ids.append([*toks] + [0] * pad)
            positions.append([*range(start, start + n)] + [self.max_len] * pad)
            row_table = blocks + [scratch] * (self.table_width - len(blocks))
            table.append(row_table)
            slots.append([row_table[i // bs] * bs + i % bs for i in range(first, first + n)] + [scratch * bs] * pad)
        if self._table is None or self._table[0] != table:
            self._table = (table, torch.tensor(table, dtype=torch.long))
        ids, positions, slots = torch.tensor([ids, positions, slots], dtype=torch.long).unbind()
        return ids, positions, self._table[1], slots

    def _commit(self, rows: list[int], tokens: list[list[int]], starts: list[int]) -> None:
        for row, toks, start in zip(rows, tokens, starts):
            self.blocks.commit(row, start, toks)

    def all_logits(self, rows: list[int], tokens: list[list[int]], chunk: int) -> list[torch.Tensor]:
        """Every position's float32 logits of tokens[b], written to slot rows[b] from position 0:
        [T_b, V] per row. The prompt goes `chunk` positions per pass, so no pass holds more than
        chunk x S attention scores or masks however long the prompt is."""
        out: list[list[torch.Tensor]] = [[] for _ in tokens]
        for c in range(0, max(map(len, tokens)), chunk):
            live = [b for b, t in enumerate(tokens) if len(t) > c]
            logits = self.forward([rows[b] for b in live], [tokens[b][c:c + chunk] for b in live], [c] * len(live),
                                  is_all_logits=True)  # [B, <=chunk, V]
            for i, b in enumerate(live):
                out[b].append(logits[i, : len(tokens[b][c:c + chunk])])
        return [torch.cat(parts) for parts in out]
