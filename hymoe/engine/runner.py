"""Runner: turns lists of token ids into one batched forward pass over the model and its KV cache.

It makes no policy (what to run next is the caller's); it only packs, runs and picks logits.
"""
from __future__ import annotations

import contextlib
import threading

import torch

from hymoe.kv.cache import KVCache, Step
from hymoe.models.decoder import Decoder


class Runner:
    def __init__(self, model: Decoder, num_slots: int, max_len: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu", is_graphed: bool = False, step_scope=None,
                 kv_dtype: torch.dtype | None = None, lock: threading.Lock | None = None):
        self.model, self.max_len, self.device = model, max_len, torch.device(device)
        # one pass at a time on the model, whichever thread calls: every runner of one model shares
        # its weights, its native engine and its staging buffers
        self.lock = lock or threading.Lock()
        # how a pass of this many tokens per row shares the CPU (NativeEngine.step_scope), or None
        self.step_scope = step_scope
        self.cache = KVCache(model.cache_entries(), num_slots, max_len, kv_dtype or dtype, model.layer_devices())
        self.graphs = None
        if is_graphed and self.device.type == "cuda":  # decode steps as CUDA graphs, per batch size
            from hymoe.engine.cuda_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(model, self.cache, max_len, self.device)

    def forward(self, rows: list[int], tokens: list[list[int]], starts: list[int],
                is_all_logits: bool = False) -> torch.Tensor:
        """Append tokens[b] to cache slot rows[b] from position starts[b].

        Returns float32 CPU logits: [B, V] at each row's last token, or [B, T, V] with is_all_logits.
        """
        with self.lock:
            return self._pass(rows, tokens, starts, is_all_logits)

    @torch.inference_mode()
    def _pass(self, rows: list[int], tokens: list[list[int]], starts: list[int], is_all_logits: bool) -> torch.Tensor:
        if self.graphs is not None and not is_all_logits and all(len(t) == 1 for t in tokens):
            logits = self.graphs.run(rows, tokens, starts)
            if logits is not None:
                return logits
        lens = [len(t) for t in tokens]
        num_rows, width = len(tokens), max(lens)
        assert all(s + n <= self.max_len for s, n in zip(starts, lens)), "caller checks the context"
        ids = torch.zeros(num_rows, width, dtype=torch.long)
        positions = torch.full((num_rows, width), self.max_len, dtype=torch.long)  # pads -> scratch column
        for b, (toks, start) in enumerate(zip(tokens, starts)):
            ids[b, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            positions[b, : len(toks)] = torch.arange(start, start + len(toks))
        kv_len = max(s + n for s, n in zip(starts, lens))
        is_in_order = rows == list(range(num_rows))
        row_t = None if is_in_order else torch.tensor(rows, dtype=torch.long, device=self.device)
        step = Step.build(positions.to(self.device), kv_len, row_t, self.model.cfg.sliding_window)
        with self.step_scope(width) if self.step_scope else contextlib.nullcontext():
            hidden = self.model(ids.to(self.device), step, self.cache)  # [B, T, H]
            if not is_all_logits:
                hidden = hidden[torch.arange(num_rows), torch.tensor(lens) - 1]  # [B, H]: each row's last
            return self.model.head(hidden).cpu()

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
