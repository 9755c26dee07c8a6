"""A decoder layer of a decode step in one native call (csrc/layer.cpp): for a GQA + routed-MoE
layer whose norms, linears, attention, router and experts all run on the native engine (the CPU
placement of Qwen3-MoE and Mixtral GGUF files), the same entry points chained in C, so the ~250 us
of Python and torch between them go. Placement installs it as a DecoderLayer's `native_step`; a
call it does not take (a prompt chunk longer than its buffers, a retention policy) returns None and
the layer runs module by module."""
from __future__ import annotations

import ctypes

import torch

from hymoe.errors import HymoeError
from hymoe.experts.native import NativeExperts, native_error
from hymoe.experts.native_attention import NativeGqaAttention, _GqaArgs
from hymoe.experts.native_linear import NativeEmbedding, NativeLinear, NativeRMSNorm, NativeRouter

CAPACITY = 16  # rows (batch x tokens) a call takes: decode steps; longer prompt chunks go module by module
_p, _f32, _i32, _i64 = ctypes.c_void_p, ctypes.c_float, ctypes.c_int32, ctypes.c_int64


class _LayerArgs(ctypes.Structure):
    _fields_ = [(n, _i32) for n in ("hidden", "q_width", "kv_width", "topk", "num_experts", "capacity")] + \
               [("eps1", _f32), ("eps2", _f32)] + \
               [(n, _p) for n in ("norm1", "norm2", "qkv", "o", "router", "route", "attn", "moe", "h", "qkv_out",
                                  "attn_out", "o_out", "logits", "ids", "weights", "moe_out", "stage_ns")]
STAGES = ("q/k/v", "attention", "o", "router", "experts")  # LayerArgs.stage_ns's order


def _parts(layer):
    """The native pieces of a layer, or None where one is missing (then it runs module by module)."""
    attn, mlp = layer.self_attn, layer.mlp
    norm1, norm2 = (getattr(n, "kernel", None) for n in (layer.input_layernorm, layer.post_attention_layernorm))
    kernel, fused = getattr(attn, "kernel", None), getattr(getattr(attn, "q_proj", None), "fused", None)
    o = getattr(getattr(attn, "o_proj", None), "kernel", None)
    gate, experts = getattr(getattr(mlp, "gate", None), "kernel", None), getattr(mlp, "experts", None)
    if not (isinstance(norm1, NativeRMSNorm) and isinstance(norm2, NativeRMSNorm)
            and isinstance(kernel, NativeGqaAttention) and fused is not None and fused.bias is None
            and isinstance(fused.call, NativeLinear) and isinstance(o, NativeLinear) and attn.o_proj.bias is None
            and isinstance(gate, NativeRouter) and type(experts) is NativeExperts
            and getattr(mlp, "shared_experts", True) is None and not experts.engine.is_async
            and all(p.engine is experts.engine for p in (kernel, fused.call, o, gate.logits))):
        return None
    return norm1, norm2, kernel, fused.call, o, gate, experts


class NativeDecoderLayer:
    """layer(x, step, cache, cos_sin) for x [B, T, H] float32 on the CPU -> the layer's output, or
    None for a call it does not take. It rotates by `rope`'s table (cos_sin is not read)."""

    def __init__(self, parts, rope):
        norm1, norm2, self.attn, qkv, o, router, experts = parts
        self.engine = experts.engine
        h, n_exp, k = norm1.n, router._args.num_experts, router.k
        q_width, kv_width = self.attn.heads * self.attn.head_dim, self.attn.kv_heads * self.attn.head_dim
        rows = CAPACITY
        # [R, H] normed input, [R, q + 2 kv] q|k|v, [R, q] attention, [R, H] o, [R, E] router logits,
        # [R, K] ids and weights, [R, H] experts' output: LayerArgs' buffers, in its order
        self.buffers = [torch.empty(rows, w) for w in (h, q_width + 2 * kv_width, q_width, h, n_exp)] + \
            [torch.empty(rows, k, dtype=torch.int64), torch.empty(rows, k), torch.empty(rows, h)]
        # held: the C side keeps the addresses of these structs and of the weights behind them
        self.keep = (norm1, norm2, qkv, o, router, experts)
        ptr = ctypes.addressof
        self._args = _LayerArgs(h, q_width, kv_width, k, n_exp, rows, norm1.eps, norm2.eps,
                                norm1.weight.data_ptr(), norm2.weight.data_ptr(), ptr(qkv._args), ptr(o._args),
                                ptr(router.logits._args), ptr(router._args), ptr(self.attn._args),
                                ptr(experts._args), *(b.data_ptr() for b in self.buffers))
        self.stage_ns = None
        self.rope = rope
        self._alone = NativeLayerStack([self])  # the per-layer call: a stack of this layer alone

    def time_stages(self, on: bool) -> None:
        """Add each stage's nanoseconds to `self.stage_ns` ([5] float64, STAGES' order) from now on."""
        self.stage_ns = torch.zeros(len(STAGES), dtype=torch.float64) if on else None
        self._args.stage_ns = self.stage_ns.data_ptr() if on else None

    def __call__(self, x: torch.Tensor, step, cache: dict, cos_sin) -> torch.Tensor | None:
        return self._alone(x, step, [cache], self.rope)


class _StackEnds(ctypes.Structure):
    _fields_ = [("ids", _p), ("embed_fmt", _i32), ("embed_rows", _i64), ("embed_bytes", _i64), ("embed", _p),
                ("norm", _p), ("norm_eps", _f32), ("head", _p), ("logits", _p), ("logits_len", _i64), ("best", _p)]


class NativeLayerStack:
    """stack(x, step, caches, rope): layers of a decode step, then the model's final `norm` if
    given, in one native call, each layer reading its cache of `caches` (the model's per-layer
    dicts), for layers with a native_step on one engine; None for a call they do not take (more rows
    than CAPACITY, a retention policy, not float32 CPU). The norm runs in the call when it has a
    native kernel, in Python otherwise. With the model's `embed` and `head` native on this engine
    (after a native norm), `logits` takes a decode step from token ids to logits in one call."""

    def __init__(self, layers: list[NativeDecoderLayer], norm=None, head=None, embed=None):
        self.layers, self.engine, self.norm = layers, layers[0].engine, norm
        self.engine.lib.hymoe_layers_step.argtypes = [_p, _p, ctypes.c_int, ctypes.POINTER(_GqaArgs), ctypes.c_int, _p,
                                                      ctypes.POINTER(_StackEnds)]
        self.engine.lib.hymoe_layers_decode.argtypes = [_p, _p, ctypes.c_int, ctypes.POINTER(_GqaArgs), ctypes.c_int,
                                                        _p, ctypes.POINTER(_StackEnds), ctypes.c_int, _p]
        self._table = (ctypes.c_void_p * len(layers))(*(ctypes.addressof(n._args) for n in layers))
        self.hidden = hidden = layers[0]._args.hidden
        kernel = getattr(norm, "kernel", None)  # NativeRMSNorm: the same C function, so the same bits
        self._native_norm = kernel if isinstance(kernel, NativeRMSNorm) and kernel.n == hidden else None
        is_head = isinstance(head, NativeLinear) and head.engine is self.engine and head.n == hidden
        is_embed = isinstance(embed, NativeEmbedding) and embed.n == hidden
        self.head = head if is_head and is_embed and self._native_norm is not None else None
        self.embed = embed if self.head is not None else None
        self._best = (ctypes.c_int64 * CAPACITY)()  # each row's greedy pick, written by the call with the head
        self._x = torch.empty(CAPACITY, hidden)  # the rows `logits` computes in (returned: only the logits)
        # the call's ends, their fixed fields set once: the norm (__call__); with the embedding and
        # head too (`logits`, which sets only the step's ids and logits)
        self._plain, self._decode = _StackEnds(), _StackEnds()
        if self._native_norm is not None:
            for e in (self._plain, self._decode):
                e.norm, e.norm_eps = self._native_norm.weight.data_ptr(), self._native_norm.eps
        if self.head is not None:
            e = self._decode
            e.embed_fmt, e.embed_rows, e.embed, e.embed_bytes = embed.fmt, embed.num_rows, embed.weight.data_ptr(), \
                embed.weight.numel()
            e.head, e.best = ctypes.addressof(self.head._args), ctypes.addressof(self._best)

    def __call__(self, x: torch.Tensor, step, caches: list[dict], rope) -> torch.Tensor | None:
        b, t, h = x.shape
        if not self._takes(b * t, step) or x.dtype is not torch.float32 or not x.is_cpu:
            return None
        if h != self.hidden:
            raise HymoeError(f"the native decoder layers take rows of {self.hidden} values, got {h}")
        out = x.clone(memory_format=torch.contiguous_format)  # [B, T, H]: the C side adds the residuals in place
        self._run(out, b * t, step, caches, rope, self._plain)
        return out if self._native_norm is not None or self.norm is None else self.norm(out)

    def logits(self, ids: torch.Tensor, step, caches: list[dict], rope) -> tuple[torch.Tensor, list[int]] | None:
        """A decode step from token ids [B, 1] (int64, CPU) to float32 logits [B, V] and each row's
        greedy pick (its first largest logit's index, as argmax), embedding, layers, norm and head
        in the one call; None for a call it does not take (no native head, more than one token a row)."""
        if not self._takes_ids(ids, step):
            return None
        logits = self._logits_of(ids)
        self._run(self._x, ids.shape[0], step, caches, rope, self._decode)
        return logits, self._best[:ids.shape[0]]

    def decode_steps(self, ids: torch.Tensor, step, caches: list[dict], rope, steps: int) -> list[list[int]] | None:
        """`steps` greedy decode steps from token ids [B, 1] in one call, each next step fed the rows'
        picks one position on (the rows' block tables must hold every position written): the picks
        [steps][B]. None for a call `logits` does not take."""
        if steps < 1:
            raise HymoeError(f"the native decoder layers take at least one decode step a call, got {steps}")
        if not self._takes_ids(ids, step):
            return None
        b = ids.shape[0]
        logits = self._logits_of(ids)  # each step's, in turn (held: the call writes them)
        picks = torch.empty(steps, b, dtype=torch.int64)
        self._run(self._x, b, step, caches, rope, self._decode, steps, picks)
        del logits
        return picks.tolist()

    def _takes_ids(self, ids: torch.Tensor, step) -> bool:
        if self.head is None or ids.dim() != 2 or ids.shape[1] != 1 or not self._takes(ids.shape[0], step):
            return False
        if ids.dtype is not torch.int64 or not ids.is_cpu or not ids.is_contiguous():
            raise HymoeError(f"the native decoder layers take contiguous int64 CPU token ids, got {ids.dtype}")
        return True

    def _logits_of(self, ids: torch.Tensor) -> torch.Tensor:
        """A new logits buffer [B, V] for a decode call from ids, set in the decode ends with the ids."""
        logits = torch.empty(ids.shape[0], self.head.out_features)
        e = self._decode
        e.ids, e.logits, e.logits_len = ids.data_ptr(), logits.data_ptr(), logits.numel()
        return logits

    def _takes(self, rows: int, step) -> bool:
        return rows <= CAPACITY and step.kept is None

    def _run(self, x: torch.Tensor, rows: int, step, caches: list[dict], rope, ends: _StackEnds, steps: int = 0,
             picks: torch.Tensor | None = None) -> None:
        """The call over x's first `rows` rows, in place, with these ends (steps > 0: that many decode
        steps, their picks written to picks [steps, rows])."""
        # every call: another runner's pass (a long prompt, module by module) may have bound its cache
        for native, layer_cache in zip(self.layers, caches):
            native.attn.bind_cache(layer_cache)
        args = self.layers[0].attn.inputs.step_args(step, rope, self.layers[0].attn.head_dim, max(steps - 1, 0))
        lib, handle, n = self.engine.lib, self.engine.handle, len(self.layers)
        if steps:
            rc = lib.hymoe_layers_decode(handle, self._table, n, ctypes.byref(args), rows, x.data_ptr(),
                                         ctypes.byref(ends), steps, picks.data_ptr())
        else:
            rc = lib.hymoe_layers_step(handle, self._table, n, ctypes.byref(args), rows, x.data_ptr(), ctypes.byref(ends))
        if rc == -2 and ends is self._decode:
            raise HymoeError(f"a token id outside the embedding's {self.embed.num_rows} rows"
                             + (", or a position outside the KV cache" if steps else ""))
        if rc:
            raise native_error(rc, f"the native decoder layers refused their arguments ({rc})")


def place_native_layers(model) -> int:
    """A native_step for every layer whose pieces all run natively, and the model's native_stack
    when that is all of them on one engine; returns how many layers got one."""
    for layer in model.layers:
        parts = _parts(layer)
        layer.native_step = NativeDecoderLayer(parts, layer.self_attn.rope) if parts is not None else None
    steps = [layer.native_step for layer in model.layers]
    is_stack = all(s is not None and s.engine is steps[0].engine for s in steps) and len(steps) > 0
    # all layers share one StepInputs (placement/kernels.py), whose step arguments the stack passes once
    is_stack = is_stack and all(s.attn.inputs is steps[0].attn.inputs for s in steps)
    head = getattr(model.lm_head, "kernel", None) if getattr(model.lm_head, "bias", None) is None else None
    embed = getattr(model.embed_tokens, "kernel", None)
    model.native_stack = NativeLayerStack(steps, model.norm, head, embed) if is_stack else None
    return sum(s is not None for s in steps)
