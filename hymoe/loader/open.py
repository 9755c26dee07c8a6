"""Open a model path, a Hugging Face directory or a GGUF file, into what the engine needs."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from hymoe.config import ModelConfig, load_hf_config
from hymoe.errors import HymoeError
from hymoe.hub import resolve
from hymoe.tokenizer import Tokenizer, generation_defaults


class TensorSource(Protocol):
    """Named tensors, by the checkpoint's Hugging Face names, as views of the file where possible.

    A source may also offer `raw(name)` (a matrix in its stored block format), `packed_experts(names)`
    (one layer's stacked experts as blocks), `label(name)` (where a tensor lives, for errors) and
    `experts_type` (the ExpertBackend class for its packed experts); models/assemble.py uses them.
    """

    def __contains__(self, name: str) -> bool: ...
    def get(self, name: str) -> torch.Tensor: ...


@dataclass
class ModelFiles:
    config: ModelConfig
    source: TensorSource
    tokenizer: Tokenizer | None
    dtype: torch.dtype  # the compute dtype the checkpoint calls for
    generation_defaults: dict = field(default_factory=dict)
    gguf: object = None  # the GGUFModelFile, for GGUF models

    def stored_tensors(self) -> list[tuple[str, str, int, int]]:
        """(name, format, numel, bytes) of every stored tensor."""
        if self.gguf is not None:
            return [(t.name, t.format, t.numel, t.data.numel()) for t in self.gguf.tensors.values()]
        out = []
        for name in self.source.keys():
            dtype, shape = self.source.describe(name)
            numel = int(torch.Size(shape).numel())
            out.append((name, str(dtype).removeprefix("torch."), numel, numel * dtype.itemsize))
        return out


def _hf_dtype(model_dir: Path) -> torch.dtype:
    d = json.loads((model_dir / "config.json").read_text())
    name = d.get("dtype") or d.get("torch_dtype") or "float32"
    # Half-precision checkpoints compute in bfloat16: float16 overflows in large MoE activations.
    return torch.float32 if name == "float32" else torch.bfloat16


def _check_eos(files: ModelFiles, path: Path) -> ModelFiles:
    """Every end-of-sequence id, from whichever file names it, must be a token of the model: one past the
    vocabulary would never end a sequence."""
    eos = files.generation_defaults.get("eos_token_id")
    named = {"generation_config.json": eos if isinstance(eos, list) else [] if eos is None else [eos],
             "the tokenizer": list(files.tokenizer.eos_ids) if files.tokenizer else []}
    vocab = files.config.vocab_size
    for where, ids in named.items():
        bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < vocab)]
        if bad:
            raise HymoeError(f"{path}: {where} names end-of-sequence token {str(bad[0])[:40]}, outside the "
                             f"vocabulary of {vocab} tokens")
    return files


def open_model(path: str | Path) -> ModelFiles:
    """A directory or .gguf path, or a hub repo id in the local Hugging Face cache (hymoe/hub.py)."""
    path = resolve(path)
    if path.is_dir():
        from hymoe.loader.fp8 import fp8_aware
        from hymoe.loader.safetensors_dir import SafetensorsDir

        cfg = load_hf_config(path)
        source = fp8_aware(SafetensorsDir(path), cfg, path)
        return _check_eos(ModelFiles(cfg, source, Tokenizer.from_dir(path), _hf_dtype(path),
                                     generation_defaults(path)), path)
    if path.suffix != ".gguf":
        raise HymoeError(f"{path}: expected a Hugging Face model directory or a .gguf file")
    from hymoe.loader.gguf_file import GGUFModelFile
    from hymoe.loader.gguf_meta import config_from_gguf
    from hymoe.loader.gguf_source import GGUFSource
    from hymoe.loader.gguf_tokenizer import tokenizer_from_gguf

    g = GGUFModelFile(path)
    cfg = config_from_gguf(g.metadata, g.tensors, path)
    hf_tok = tokenizer_from_gguf(g.metadata, path)
    embed = g.tensors.get("token_embd.weight")
    dtype = torch.float32 if embed is not None and embed.format == "F32" else torch.bfloat16
    return _check_eos(ModelFiles(cfg, GGUFSource(g, cfg), Tokenizer(hf_tok) if hf_tok else None, dtype, gguf=g), path)
