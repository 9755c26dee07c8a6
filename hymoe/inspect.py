"""`hymoe inspect MODEL`: what a model is and what running it costs, without loading its weights.

Reads only headers (GGUF tensor infos or safetensors headers): architecture, parameter counts
(total and active per token), formats per tensor group, and the memory each device needs under a
placement, including the price of dequantizing the non-expert weights to the compute dtype.
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import torch

from hymoe.errors import HymoeError
from hymoe.kv.cache import KVCache
from hymoe.layers.linear import DEQUANT_CHUNK, DEQUANT_PEAK_BYTES
from hymoe.loader.fp8 import DEFAULT_EXPERTS_FORMAT
from hymoe.loader.open import open_model
from hymoe.models import build_model
from hymoe.placement import default_dtype, default_kv_dtype, resolve_placement
from hymoe.placement.kernels import check_dense_format, mla_up_format, uses_int4pack
from hymoe.placement.rules import describe
from hymoe.quant.formats import NATIVE_FORMATS, row_bytes
from hymoe.quant.int4pack import Int4PackMatmul
from hymoe.quant.torch_dequant import TORCH_DEQUANT_FORMATS

# first match wins; the patterns cover both HF and GGUF tensor names
_GROUPS = (("routed experts", r"_exps\.|\.experts\."), ("shared experts", r"_shexp|shared_expert"),
           ("router", r"ffn_gate_inp|exp_probs_b|mlp\.gate\.|block_sparse_moe\.gate\."),
           ("embedding", r"token_embd|embed_tokens"), ("output", r"^output\.|lm_head"), ("norms", r"norm"),
           ("attention", r"attn_|self_attn"), ("dense ffn", r"ffn_|mlp\."))


# the weights of called linears and the embedding, by HF or GGUF name (norms and routers are not)
_LINEARS = r"(token_embd|embed_tokens|lm_head|output|_proj|_proj_with_mqa|attn_(q|k|v|q_a|q_b|kv_a_mqa)" \
           r"|ffn_(gate|up|down)(_shexp)?)\.weight$"
_EMBEDDING = r"token_embd|embed_tokens"
_FLOAT_KEPT = r"kv_b_proj|attn_k_b|attn_v_b|attn_kv_b"  # MLA's per-head up-projections (mla_up_format on the CPU)


def _group(name: str) -> str:
    return next((g for g, pat in _GROUPS if re.search(pat, name)), "other")


def _unit(name: str, group: str) -> str:
    """The placement unit (rules.py) a stored tensor belongs to."""
    m = re.search(r"(?:blk|layers)\.(\d+)\.", name)
    if m is None:
        return {"embedding": "embed_tokens", "output": "lm_head"}.get(group, "norm")
    if group == "routed experts":
        return f"layers.{m[1]}.mlp.experts"
    return f"layers.{m[1]}.self_attn" if group in ("attention", "norms") else f"layers.{m[1]}.mlp"


def _kv_a_of(name: str) -> str:
    """MLA's kv_a tensor beside a kv_b one (GGUF or HF names); other names come back as they are."""
    return re.sub(r"attn_(kv|k|v)_b\.", "attn_kv_a_mqa.", name).replace("kv_b_proj", "kv_a_proj_with_mqa")


def _dense_bytes(name: str, fmt: str, numel: int, nbytes: int, target, compute: torch.dtype,
                 dense_format: str | None, int4pack: bool, kv_a_fmt: str | None = None) -> int:
    """What a non-expert tensor holds on its device: linears and the embedding keep a block format
    (the stored one, or the rule's / --dense-format's) where a kernel of that device computes it
    (layers/linear.py, placement/kernels.py), Q4_K linears on a GPU in torch's int4 layout when
    `int4pack` (a CUDA GPU is assumed, and the real models' rows and columns that it takes); the rest
    is dequantized to the compute dtype."""
    if re.search(r"ffn_gate_inp|exp_probs_b|mlp\.gate\.|block_sparse_moe\.gate\.|e_score_correction", name):
        return numel * 4  # routing stays float32
    if re.search(_FLOAT_KEPT, name) and target.device == "cpu" and compute == torch.float32:
        # the native per-head products' rows, as placement picks them (kv_a_fmt: the layer's
        # kv_a as stored; a rule's or --dense-format's format replaces it)
        split = fmt if re.search(r"attn_[kv]_b\.", name) else None
        held, is_in_place = mla_up_format(split, target.format or dense_format or kv_a_fmt, None)
        return nbytes if is_in_place else numel * row_bytes(held, 256) // 256
    if not re.search(_LINEARS, name) or re.search(_FLOAT_KEPT, name):
        return numel * compute.itemsize
    want = target.format or dense_format
    if want and not re.search(_EMBEDDING, name):
        fmt, nbytes = want, numel * row_bytes(want, 256) // 256
    if int4pack and target.device == "gpu" and fmt == "Q4_K" and not re.search(_EMBEDDING, name):
        return round(numel * Int4PackMatmul.BYTES_PER_WEIGHT)
    computable = NATIVE_FORMATS + TORCH_DEQUANT_FORMATS if target.device == "cpu" else TORCH_DEQUANT_FORMATS
    return nbytes if fmt in computable and fmt not in ("F32", "F16", "BF16") else numel * compute.itemsize


def _tally(files, plan, compute: torch.dtype, dense_format: str | None, int4pack: bool) -> tuple[dict, dict, int, int]:
    """Stored tensors by group (count, parameters, bytes, formats), and the bytes each device holds:
    routed experts on the native CPU engine in their stored (or rule's) format, the dense part as
    _dense_bytes keeps it, the rest in the compute dtype; a GPU that dequantizes blocks per call
    also holds one chunk's intermediates (layers/linear.py). Last, the routed experts' bytes on the
    native engine (the ones --numa splits across nodes)."""
    groups: dict[str, dict] = defaultdict(lambda: {"tensors": 0, "params": 0, "bytes": 0, "formats": defaultdict(int)})
    devices = {"gpu": 0, "cpu": 0}
    dense_on_devices = workspace = experts_native = 0
    stored = files.stored_tensors()
    formats = {name: fmt for name, fmt, _, _ in stored}  # MLA's kv_b follows its kv_a
    for name, fmt, numel, nbytes in stored:
        group = _group(name)
        target = plan.targets[_unit(name, group)]
        if group == "routed experts":
            kept_stored = target.device == "cpu" and target.backend != "torch"
            # an FP8 checkpoint's experts are re-encoded at load (loader/fp8.py), never kept as FP8
            load_format = target.format or (DEFAULT_EXPERTS_FORMAT if fmt.startswith("float8") else None)
            held = numel * row_bytes(load_format, 256) // 256 if load_format else nbytes  # quantized at load
            devices[target.device] += held if kept_stored else numel * compute.itemsize
            experts_native += held if kept_stored else 0
        else:
            kv_a_fmt = formats.get(_kv_a_of(name))
            placed = _dense_bytes(name, fmt, numel, nbytes, target, compute, dense_format, int4pack, kv_a_fmt)
            devices[target.device] += placed
            dense_on_devices += placed
            if target.device == "gpu" and placed < numel * compute.itemsize and not re.search(_EMBEDDING, name):
                # blocks the GPU dequantizes per call (layers/linear.py), or packs at load
                # (quant/int4pack.py): one bounded chunk at a time
                workspace = max(workspace, min(numel, DEQUANT_CHUNK) * DEQUANT_PEAK_BYTES)
        g = groups[group]
        g["tensors"] += 1
        g["params"] += numel
        g["bytes"] += nbytes
        g["formats"][fmt] += 1
    devices["gpu"] += workspace
    devices["gpu_workspace"] = workspace  # popped by inspect_model (reported on its own)
    return groups, devices, dense_on_devices, experts_native


def _numa_nodes(cpu_bytes: int, experts_native: int, numa: str | None, cfg) -> list[int]:
    """Host memory per NUMA node under --numa: each node holds its rows of every native expert
    (experts/numa.py), the first node also the rest (first touched by the loading thread); no byte
    is held twice."""
    from hymoe.experts import native
    from hymoe.experts.numa import node_first_row, parse_numa

    lib = native.library()
    nodes, _ = parse_numa(numa, lib.hymoe_numa_nodes() if lib is not None else 1)
    inter, hidden = cfg.moe_intermediate_size, cfg.hidden_size
    share = [(2 * (node_first_row(inter, k + 1, nodes) - node_first_row(inter, k, nodes)) / inter
              + (node_first_row(hidden, k + 1, nodes) - node_first_row(hidden, k, nodes)) / hidden) / 3
             for k in range(nodes)]  # gate and up split by I rows, down by H rows
    per_node = [round(experts_native * f) for f in share]
    per_node[0] += cpu_bytes - sum(per_node)
    return per_node


def inspect_model(path: str | Path, placement: str = "cpu", dtype: str | None = None,
                  context: int | None = None, dense_format: str | None = None, numa: str | None = None,
                  gpu_dense_kernel: str = "auto") -> dict:
    from hymoe.engine.llm import DEFAULT_MAX_CONTEXT, parse_dtype

    dense_format = check_dense_format(dense_format)
    files = open_model(path)
    cfg = files.config
    plan = resolve_placement(placement, cfg)
    compute = parse_dtype(dtype) or default_dtype(files, plan)
    kv_dtype = default_kv_dtype(files, plan, compute)
    int4pack = uses_int4pack(gpu_dense_kernel)
    groups, devices, dense_on_devices, experts_native = _tally(files, plan, compute, dense_format, int4pack)
    workspace = devices.pop("gpu_workspace")
    routed = groups.get("routed experts", {"params": 0, "bytes": 0})
    total = sum(g["params"] for g in groups.values())
    total_note = "embedding and output tied" if cfg.is_tied_embeddings else ""
    n_moe = sum(cfg.moe_layers)
    per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    dense_params = total - routed["params"]
    active = dense_params + n_moe * cfg.num_experts_per_tok * per_expert
    dense_stored = sum(g["bytes"] for k, g in groups.items() if k != "routed experts")
    ctx = min(context or DEFAULT_MAX_CONTEXT, cfg.max_position_embeddings)
    with torch.device("meta"):
        entries = build_model(cfg).cache_entries()
    for i, layer in enumerate(entries):  # each layer's cache lives with its attention
        kv_layer = ctx * sum(int(torch.Size(s).numel()) for s in layer.values()) * kv_dtype.itemsize
        devices[plan.targets[f"layers.{i}.self_attn"].device] += kv_layer
    kv_position = KVCache.position_bytes(entries, kv_dtype)  # one position, every layer
    kv = ctx * kv_position
    devices = {d: b for d, b in devices.items() if b or d == "cpu"}  # the CPU always appears
    if "gpu" in devices and torch.cuda.is_available():
        total_gpu = torch.cuda.mem_get_info(plan.gpu)[1]
        if devices["gpu"] > total_gpu:
            raise HymoeError(f"placement {placement} needs {devices['gpu'] / 1e9:.1f} GB on {plan.gpu}; "
                             f"it has {total_gpu / 1e9:.1f} GB")
    return {
        "path": str(path), "model_type": cfg.model_type, "layers": cfg.num_layers, "moe_layers": n_moe,
        "hidden_size": cfg.hidden_size, "experts": cfg.num_experts, "experts_per_token": cfg.num_experts_per_tok,
        "shared_intermediate_size": cfg.shared_intermediate_size, "context_length": cfg.max_position_embeddings,
        "params_total": total, "params_active_per_token": active, "note": total_note,
        "groups": {k: {**v, "formats": dict(v["formats"])} for k, v in sorted(groups.items())},
        "placement": placement, "compute_dtype": str(compute).removeprefix("torch."), "kv_context": ctx,
        "kv_dtype": str(kv_dtype).removeprefix("torch."),
        "dense_bytes_stored": dense_stored, "dense_bytes_placed": dense_on_devices,
        "experts_bytes": routed["bytes"], "kv_bytes": kv, "gpu_workspace_bytes": workspace,
        "experts_note": f"FP8: re-encoded to {DEFAULT_EXPERTS_FORMAT} at load unless --experts-format"
        if any(f.startswith("float8") for f in routed.get("formats", {})) else "kept in their stored format",
        "kv_position_bytes": kv_position, "kv_positions_per_gib": 2**30 // kv_position, "devices": devices, "plan": describe(plan.targets),
        "cpu_per_numa_node": _numa_nodes(devices["cpu"], experts_native, numa, cfg),
    }


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return ""


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def report(d: dict) -> str:
    lines = [f"model        {d['path']}",
             f"architecture {d['model_type']}: {d['layers']} layers ({d['moe_layers']} MoE), hidden {d['hidden_size']}, "
             f"{d['experts']} routed experts (top {d['experts_per_token']})"
             + (f" + shared {d['shared_intermediate_size']}" if d["shared_intermediate_size"] else ""),
             f"context      {d['context_length']} tokens",
             f"parameters   {_count(d['params_total'])} total, {_count(d['params_active_per_token'])} active per token"
             + (f" ({d['note']})" if d["note"] else ""),
             "", f"{'tensor group':<16}{'tensors':>8}  {'params':>10}  {'stored':>10}  formats"]
    for name, g in d["groups"].items():
        fmts = ", ".join(f"{f} x{n}" for f, n in sorted(g["formats"].items()))
        lines.append(f"{name:<16}{g['tensors']:>8}  {_count(g['params']):>10}  {_size(g['bytes']):>10}  {fmts}")
    lines += ["", f"placement {d['placement']} (compute dtype {d['compute_dtype']}, KV cache of {d['kv_context']} tokens in "
              f"{d['kv_dtype']}):",
              f"  non-expert weights: {_size(d['dense_bytes_stored'])} stored -> {_size(d['dense_bytes_placed'])} "
              f"placed (block formats kept where a kernel computes them, the rest in {d['compute_dtype']})",
              f"  routed experts: {_size(d['experts_bytes'])} stored ({d['experts_note']}; CPU memory)",
              f"  KV cache: {_size(d['kv_bytes'])} ({d['kv_positions_per_gib']:,} positions per GiB, "
              f"{d['kv_position_bytes']:,} bytes each: size a server's pool with --kv-memory)"]
    lines += ["  plan:"] + [f"    {line}" for line in d["plan"]]
    lines += [f"  {dev}: {_size(b)}" for dev, b in d["devices"].items()]
    if len(d["cpu_per_numa_node"]) > 1:
        lines.append("  cpu per NUMA node (--numa: each expert's rows on one node, nothing twice): "
                     + ", ".join(f"node {k} {_size(b)}" for k, b in enumerate(d["cpu_per_numa_node"])))
    return "\n".join(lines)
