"""Placement rules: an ordered list of regexes over a model's unit paths, each naming a device and,
for routed experts, a backend and weight format. The first rule that matches a unit wins. The
presets (cpu, hybrid, gpu, layers:N) are rule files in presets/; users may write their own.

Units: `embed_tokens`, `norm`, `lm_head` (the ends), and per layer i `layers.i.self_attn`,
`layers.i.mlp` (a dense MLP, or an MoE layer's router and shared experts) and, for MoE layers,
`layers.i.mlp.experts` (its routed experts).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from hymoe.errors import HymoeError

PRESETS = Path(__file__).parent / "presets"
_KEYS = {"match", "layers", "device", "backend", "format"}


@dataclass(frozen=True)
class Target:
    device: str  # "cpu" or "gpu"
    backend: str | None = None  # routed experts on the CPU: "native" or "torch" (None: the caller's choice)
    format: str | None = None  # quantize at load (None: as stored): routed experts for the native
    # engine, or a dense unit's linears (layers/linear.py)


@dataclass(frozen=True)
class Rule:
    index: int
    pattern: re.Pattern
    layers: range | None
    target: Target

    def matches(self, unit: str) -> bool:
        if not self.pattern.fullmatch(unit):
            return False
        m = re.match(r"layers\.(\d+)\.", unit)
        return self.layers is None or (m is not None and int(m[1]) in self.layers)


def units(cfg) -> list[str]:
    out = ["embed_tokens"]
    for i in range(cfg.num_layers):
        out += [f"layers.{i}.self_attn", f"layers.{i}.mlp"] + ([f"layers.{i}.mlp.experts"] if cfg.moe_layers[i] else [])
    return out + ["norm", "lm_head"]


def load_rules(name: str) -> tuple[str, list[Rule]]:
    """A preset name (cpu, hybrid, gpu, layers:N) or a YAML file -> (name, rules)."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise HymoeError(f"{path}: no such placement rules file")
        text = path.read_text()
    elif name in ("cpu", "hybrid", "gpu"):
        text = (PRESETS / f"{name}.yaml").read_text()
    elif name.startswith("layers:") and name[7:].isdigit():
        text = (PRESETS / "layers.yaml").read_text().replace("{N}", name[7:])
    else:
        raise HymoeError(f"unknown placement {name!r} (use cpu, hybrid, layers:N, gpu or a rules .yaml file)")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise HymoeError(f"{name}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list) or not doc["rules"]:
        raise HymoeError(f"{name}: expected a mapping with a non-empty list `rules`")
    return name, [_rule(i, r, name) for i, r in enumerate(doc["rules"], 1)]


def _rule(i: int, r, source: str) -> Rule:
    where = f"{source}: rule {i}"
    if not isinstance(r, dict) or "match" not in r or "device" not in r:
        raise HymoeError(f"{where}: needs `match` (a regex) and `device` (cpu or gpu)")
    unknown = set(r) - _KEYS
    if unknown:
        raise HymoeError(f"{where}: unknown key {sorted(unknown)[0]!r} (use {', '.join(sorted(_KEYS))})")
    if r["device"] not in ("cpu", "gpu"):
        raise HymoeError(f"{where}: device must be cpu or gpu, not {r['device']!r}")
    if r.get("backend") not in (None, "native", "torch"):
        raise HymoeError(f"{where}: backend must be native or torch, not {r['backend']!r}")
    if r["device"] == "gpu" and r.get("backend") == "native":
        raise HymoeError(f"{where}: the native backend runs on the CPU, not on device gpu")
    try:
        pattern = re.compile(str(r["match"]))
    except re.error as e:
        raise HymoeError(f"{where}: bad regex {r['match']!r} ({e})") from None
    layers = None
    if "layers" in r:
        m = re.fullmatch(r"(\d+):(\d+)", str(r["layers"]))
        if not m:
            raise HymoeError(f"{where}: layers must be START:STOP, e.g. 0:3")
        layers = range(int(m[1]), int(m[2]))
    fmt = r.get("format")
    return Rule(i, pattern, layers, Target(r["device"], r.get("backend"), fmt and str(fmt).upper()))


def _check_target(unit: str, rule: Rule, source: str) -> None:
    t, where = rule.target, f"{source}: rule {rule.index}"
    if t.backend and not unit.endswith(".experts"):
        raise HymoeError(f"{where} sets a backend, which only routed experts have, and it matches {unit}")
    if t.format and unit == "norm":
        raise HymoeError(f"{where} sets a format and matches norm, which has no weights to quantize")
    if t.format and unit.endswith(".experts") and t.device == "gpu":
        raise HymoeError(f"{where} sets a format for {unit} on the GPU; expert formats are the native CPU "
                         "engine's (GPU experts are torch weights)")


def plan(cfg, rules: list[Rule], source: str) -> dict[str, Target]:
    """unit -> Target, or one clear error: a unit no rule places, a rule that places nothing, a
    backend for something other than routed experts, a format for the final norm or for experts on
    the GPU, or one layer (or the ends) split across devices."""
    out, used = {}, set()
    for unit in units(cfg):
        rule = next((r for r in rules if r.matches(unit)), None)
        if rule is None:
            raise HymoeError(f"{source}: no rule places {unit} (end with a catch-all rule, match: '.*')")
        _check_target(unit, rule, source)
        used.add(rule.index)
        out[unit] = rule.target
    unused = [r for r in rules if r.index not in used]
    if unused:
        r = unused[0]
        raise HymoeError(f"{source}: rule {r.index} (match {r.pattern.pattern!r}) places nothing in this model "
                         "(an earlier rule takes everything it matches, or nothing has that name)")
    for group in [("embed_tokens", "norm", "lm_head")] + [(f"layers.{i}.self_attn", f"layers.{i}.mlp")
                                                          for i in range(cfg.num_layers)]:
        devices = {out[u].device for u in group}
        if len(devices) > 1:
            raise HymoeError(f"{source}: rules put {group[0]} on {out[group[0]].device} and {group[-1]} on "
                             f"{out[group[-1]].device}; they must share a device")
    return out


def describe(targets: dict[str, Target]) -> list[str]:
    """One line per target, its units with layer runs folded: 'gpu: layers.0-3.self_attn, ...'."""
    by_target: dict[Target, dict[str, list[int]]] = {}
    for unit, t in targets.items():
        m = re.fullmatch(r"layers\.(\d+)\.(.+)", unit)
        kind, layer = (m[2], int(m[1])) if m else (unit, -1)
        by_target.setdefault(t, {}).setdefault(kind, []).append(layer)
    lines = []
    for t, kinds in by_target.items():
        extra = ", ".join(x for x in (t.backend, t.format) if x)
        parts = []
        for kind, layers in kinds.items():
            if layers == [-1]:
                parts.append(kind)
                continue
            runs, start = [], layers[0]
            for a, b in zip(layers, layers[1:] + [None]):
                if b != a + 1:
                    runs.append(f"{start}" if start == a else f"{start}-{a}")
                    start = b
            parts.append(f"layers.{','.join(runs)}.{kind}")
        lines.append(f"{t.device}{f' ({extra})' if extra else ''}: {', '.join(parts)}")
    return lines
