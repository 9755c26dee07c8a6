"""CUDA graphs for hybrid decode: one decode step per batch size, captured as graph segments.

A step's GPU work is cut wherever the CPU experts come in: each MoE layer's segment ends with the
copies of its activations and routing to page-locked memory; a host step then starts the CPU
engine, the next segment (the shared experts) runs on the GPU meanwhile, a host step waits for
the engine, and the following segment begins by copying its result back. Replay is the list of
segments and host steps in order: a few launches per layer instead of a hundred kernels.

Attention reads every position a row's block table can hold, under a mask (the length must not
change between replays); the step's inputs, block tables included, are copied into static buffers. Any step that cannot be captured runs eagerly,
and hymoe says once why.
"""
from __future__ import annotations

import torch

from hymoe.errors import say_once
from hymoe.experts.base import NotCapturable
from hymoe.kv.cache import Step
from hymoe.layers.moe import MoE


class Capture:
    """Segments and host steps of one captured decode step, in replay order."""

    def __init__(self, pool):
        self.pool, self.steps, self.keep, self.graph = pool, [], [], None

    def begin(self) -> None:
        self.graph = torch.cuda.CUDAGraph()
        # relaxed: page-locked staging buffers are allocated while capturing
        self.graph.capture_begin(pool=self.pool, capture_error_mode="relaxed")

    def host(self, fn) -> None:
        """End the segment being captured; at replay, run fn after it; then capture the next one."""
        self.graph.capture_end()
        self.steps += [self.graph.replay, fn]
        self.begin()

    def end(self) -> None:
        self.graph.capture_end()
        self.steps.append(self.graph.replay)

    def abort(self) -> None:
        try:
            self.graph.capture_end()
        except Exception:  # the capture was already invalidated: nothing to end
            pass

    def replay(self) -> None:
        for step in self.steps:
            step()


class DecodeGraphs:
    """Per batch size B: static inputs, the captured step, and its static logits."""

    def __init__(self, model, cache, max_len: int, device: torch.device):
        self.model, self.cache, self.max_len, self.device = model, cache, max_len, device
        self.engines, refusals = set(), set()  # the engines whose host calls the graph makes
        for m in model.modules():
            if isinstance(m, MoE):
                try:
                    self.engines.add(m.experts.graph_engine())
                except NotCapturable as e:
                    refusals.add(str(e))
        self.reason = None
        if refusals:
            self.reason = f"routed experts that cannot be captured ({', '.join(sorted(refusals))})"
            say_once(f"CUDA graphs off, decoding eagerly: {self.reason}")
        self.graphs: dict[int, tuple] = {}
        self.warmed: set[int] = set()
        self.pool = torch.cuda.graph_pool_handle()

    def run(self, ids: torch.Tensor, positions: torch.Tensor, table: torch.Tensor,
            slots: torch.Tensor) -> torch.Tensor | None:
        """Logits [B, V] (float32, CPU) of one decode step, or None: run it eagerly. ids, positions
        and slots [B, 1], table [B, M] (M fixed per runner): CPU int64."""
        b = ids.shape[0]
        if self.reason is not None:
            return None
        if b not in self.graphs:
            if b not in self.warmed:  # the first step of a size runs eagerly: kernels and handles set up
                self.warmed.add(b)
                return None
            self.graphs[b] = self._capture(b, table.shape[1])
            if self.graphs[b] is None:
                return None
        inputs, capture, logits = self.graphs[b]
        for static, value in zip(inputs, (ids, positions, table, slots)):
            static.copy_(value)
        capture.replay()
        return logits.float().cpu()

    def _capture(self, b: int, width: int):
        long = dict(dtype=torch.long, device=self.device)
        ids, positions = torch.zeros(b, 1, **long), torch.zeros(b, 1, **long)
        # the scratch block until the first replay's inputs: capturing writes nothing a row holds
        slots = torch.full((b, 1), self.cache.scratch * self.cache.block_size, **long)
        table = torch.full((b, width), self.cache.scratch, **long)
        capture = Capture(self.pool)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        for engine in self.engines:
            engine.capture = capture
        try:
            with torch.cuda.stream(stream), torch.inference_mode():
                capture.begin()
                step = Step.build(positions, self.max_len, table, slots, self.model.cfg.sliding_window)
                hidden = self.model(ids, step, self.cache)  # [B, 1, H]
                logits = self.model.head(hidden[:, 0])  # [B, V]
                capture.end()
        except Exception as e:  # capture unsupported here: eager from now on, said once
            capture.abort()
            self.reason = f"capture failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            say_once(f"CUDA graphs off, decoding eagerly: {self.reason}")
            return None
        finally:
            for engine in self.engines:
                engine.capture = None
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return (ids, positions, table, slots), capture, logits
