"""The table of scripts/gpu_check.py's JSON: the targets checked (summarize) and the markdown the run prints."""
from __future__ import annotations

GIB = 2**30
# the real model's depth, to say what share of it the run holds
FULL_LAYERS = {"deepseek-v3": 61}


def _planned_gpu(plan: dict, variant: str) -> int | None:
    placement = variant.split("+")[0]
    p = plan.get(placement) if plan else None
    if not p or "devices" not in p:
        return None
    gpu = p["devices"].get("gpu", 0)
    if "+gpu" in variant:
        gpu += plan["hot_experts_bytes"]
    return gpu


def summarize(out: dict) -> None:
    """Rows per run with the plan beside torch's peak; the issue's targets, where measured."""
    plan, runs = out.get("plan") or {}, out.get("e2e", {})
    rows = []
    for variant, r in runs.items():
        if variant == "prefill":
            continue
        row = {"variant": variant, "status": r["status"]}
        if r["status"] == "ok":
            row |= {k: r["rows"][0].get(k) for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "experts_busy",
                                                     "cpu_busy", "gpu_busy", "cuda_graphs", "decode_bandwidth_fraction")}
            row["seconds"] = r["seconds"]
            # asked for, but refused (hot experts, deferral, GPU prefill) or failed to capture: said once
            refused = [n for n in r.get("notes", []) if "CUDA graphs off" in n]
            row["graphs"] = ("refused" if refused else "on") if row["cuda_graphs"] else "off"
            row["graphs_note"] = refused[0] if refused else None
            peak = (r.get("memory") or {}).get("gpu_peak_bytes")
            planned = _planned_gpu(plan, variant)
            row |= {"gpu_peak_bytes": peak, "gpu_planned_bytes": planned,
                    "peak_over_plan": round(peak / planned, 3) if peak is not None and planned else None}
        else:
            row["error"] = r.get("error") or r.get("reason")
        rows.append(row)
    out["table"] = rows
    rate = {r["variant"]: r.get("decode_tokens_per_s") for r in rows if r["status"] == "ok"}
    k = out["sizes"]["gpu_layers"]
    # hybrid's figure: its fastest run (options such as +int4 or +gpuG are hybrid's own), named
    hybrids = [r for r in rows if r["status"] == "ok" and r["variant"].split("+")[0] == "hybrid"]
    best = max(hybrids, key=lambda r: r.get("decode_tokens_per_s") or 0, default=None)
    graphed = max((r for r in hybrids if r.get("graphs") == "on"), key=lambda r: r.get("decode_tokens_per_s") or 0,
                  default=None)
    targets = {}
    if best and rate.get("cpu"):
        targets["hybrid_over_cpu"] = {"value": round(best["decode_tokens_per_s"] / rate["cpu"], 2), "target": 3.5,
                                      "variant": best["variant"]}
    if best and rate.get(f"layers:{k}"):
        targets["hybrid_over_layers"] = {"value": round(best["decode_tokens_per_s"] / rate[f"layers:{k}"], 2),
                                         "target": 3.0, "variant": best["variant"]}
    if graphed and graphed.get("experts_busy") is not None:
        targets["cpu_busy_with_graphs"] = {"value": graphed["experts_busy"], "target": 0.9,
                                           "variant": graphed["variant"]}
    ratios = [r["peak_over_plan"] for r in rows if r.get("peak_over_plan")]
    if ratios:
        targets["gpu_memory_vs_plan_worst"] = {"value": max(ratios, key=lambda x: abs(x - 1)), "target": "1 +- 0.05"}
    for t in targets.values():
        v, goal = t["value"], t["target"]
        t["met"] = abs(v - 1) <= 0.05 if isinstance(goal, str) else v >= goal
    out["targets"] = targets


def markdown(out: dict) -> str:
    s, dev = out["sizes"], out["device"]
    gpu = dev.get("gpu") or ("no GPU: dry run on the CPU" if out["dry_run"] else "?")
    full = FULL_LAYERS.get(s["shape"])
    lines = [f"gpu_check on {gpu}, {dev['cpu_count']} CPU cores, torch {dev['torch']}"
             + (" (DRY RUN: toy sizes on the CPU)" if out["dry_run"] else ""),
             f"model: random {s['shape']}, {s['layers']} layers" + (f" of {full}" if full else "")
             + f", experts {s['experts_type']}, dense {s['dense_type']}; prompt {s['prompt_tokens']}, "
             f"decode {s['gen_tokens']} tokens; hot experts {s['gpu_experts']} per layer", "",
             "| run | graphs | prefill tok/s | decode tok/s | experts busy | CPU | GPU busy | GPU peak GiB | "
             "plan GiB | peak/plan | s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, d=1: "" if v is None else f"{v:.{d}f}"  # noqa: E731
    pct = lambda v: "" if v is None else f"{v:.0%}"  # noqa: E731
    gib = lambda v: "" if v is None else f"{v / GIB:.2f}"  # noqa: E731
    for r in out.get("table", []):
        if r["status"] != "ok":
            lines.append(f"| {r['variant']} | {r['status']}: {str(r.get('error'))[:80]} |||||||||")
            continue
        lines.append(f"| {r['variant']} | {r['graphs']} | {f(r['prefill_tokens_per_s'])} | "
                     f"{f(r['decode_tokens_per_s'], 2)} | {pct(r['experts_busy'])} | {pct(r['cpu_busy'])} | "
                     f"{pct(r['gpu_busy'])} | {gib(r['gpu_peak_bytes'])} | {gib(r['gpu_planned_bytes'])} | "
                     f"{f(r['peak_over_plan'], 3)} | {f(r['seconds'])} |")
    lines += [f"- {r['variant']}: {r['graphs_note']}" for r in out.get("table", []) if r.get("graphs_note")]
    pre = out.get("e2e", {}).get("prefill")
    if pre and pre["status"] == "ok":
        p = pre["rows"][0]
        peak = (pre.get("memory") or {}).get("gpu_peak_bytes")
        lines += ["", f"prefill of {p['prompt_tokens']} tokens (hybrid): experts on the CPU "
                  f"{p['cpu_experts_tokens_per_s']:.0f} tok/s, streamed to {p['gpu']} (GPU prefill on) "
                  f"{p['gpu_stream_tokens_per_s']:.0f} tok/s" + (f"; GPU peak {peak / GIB:.2f} GiB" if peak else "")]
    elif pre:
        lines += ["", f"prefill: {pre['status']}: {pre.get('error') or pre.get('reason')}"]
    lines += _dense_lines(out.get("dense_kernels"))
    setup = out["steps"].get("setup") or {}
    if setup.get("missing_packages"):
        lines += ["", f"packages that do not import: {', '.join(setup['missing_packages'])} (carry wheels in .whl/)"]
    tests = out["steps"].get("gpu_tests")
    if tests:
        lines += ["", f"pytest -m gpu: {tests['status']}: {tests['summary']}"] + tests["failed"]
    if out["dry_run"] and out.get("targets"):
        lines += ["", "(a dry run: the targets below mean nothing at toy sizes on a CPU)"]
    lines += [f"target {name}: {t['value']} (target {t['target']}{', ' + t['variant'] if 'variant' in t else ''}) "
              f"{'met' if t['met'] else 'NOT met'}"
              for name, t in out.get("targets", {}).items()]
    lines += ["", "steps: " + ", ".join(f"{n} {st['status']} {st.get('seconds', 0):.0f} s"
                                       for n, st in out["steps"].items()) + f"; total {out['total_seconds']:.0f} s"]
    return "\n".join(lines)


def _dense_lines(dense: dict | None) -> list[str]:
    """scripts/gpu_dense_kernels.py's rows: ms per call of each candidate, per shape and batch."""
    if not dense or not dense.get("rows"):
        return []
    lines = ["", "dense Q4_K linears (ms per call; error against gguf-py):", "",
             "| shape | tokens | dequant (today) | int4pack | bf16 |", "|---|---|---|---|---|"]
    cells: dict[tuple, dict] = {}
    for r in dense["rows"]:
        cell = f"{r['ms']:.3f} ({r['rel_error']:.3f})" if "ms" in r else f"failed: {r['error'][:40]}"
        cells.setdefault((f"{r['shape']} {r['in']}->{r['out']}", r["tokens"]), {})[r["kernel"]] = cell
    for (shape, tokens), c in cells.items():
        lines.append(f"| {shape} | {tokens} | {c.get('dequant', '')} | {c.get('int4pack', '')} | {c.get('bf16', '')} |")
    return lines

