"""A GGUF model as a TensorSource: dense tensors by their HF names, experts as raw GGUF blocks.

Dense (non-expert) tensors are dequantized with gguf-py on request (models/assemble.py then casts
them to the compute dtype of their device). Routed experts stay in the file's blocks, views of its
mapping, for the CPU expert engine (placement copies what the CPU streams onto 2 MiB pages:
placement/large_pages.py).
"""
from __future__ import annotations

import torch

from hymoe.config import ModelConfig
from hymoe.errors import HymoeError
from hymoe.loader.gguf_file import GGUFModelFile, TensorInfo
from hymoe.loader.gguf_names import GGUFNames, merge_kv_b, permute_rows
from hymoe.host_memory import host_bytes
from hymoe.quant.formats import FLOAT_DTYPES, dequantize, is_decodable, row_bytes


def dequantize_tensor(t: TensorInfo) -> torch.Tensor:
    """Any GGUF tensor -> float32."""
    return dequantize(t.data, t.format, t.shape)


class GGUFSource:
    def __init__(self, gfile: GGUFModelFile, cfg: ModelConfig):
        self.file, self.cfg, self.names = gfile, cfg, GGUFNames(cfg)

    def _tensor(self, name: str) -> TensorInfo:
        t = self.file.tensors.get(name)
        if t is None:
            raise HymoeError(f"{self.file.path}: missing tensor {name}")
        if not is_decodable(t.format):
            raise HymoeError(f"{self.file.path}: tensor {name} is stored as {t.format}, not a weight format")
        return t

    def _unpermuted(self, name: str, w: torch.Tensor, heads: int) -> torch.Tensor:
        """q/k rows back in Hugging Face order; rows that do not split into the heads are a corrupt file."""
        if w.shape[0] % (2 * heads):
            raise HymoeError(f"{self.file.path}: tensor {name} has {w.shape[0]} rows, which do not split into "
                             f"{heads} heads")
        return permute_rows(w, heads, to_gguf=False)

    def __contains__(self, hf_name: str) -> bool:
        try:
            return self.names.gguf(hf_name) in self.file.tensors
        except HymoeError:
            return False

    def maps(self, t: torch.Tensor) -> bool:
        """Whether t (from raw or packed_experts) views the file's mapping rather than a copy: placement
        may then keep it for other readers at no memory cost (large_pages.for_kernels)."""
        return self.file.maps(t)

    def label(self, hf_name: str) -> str:
        return f"{self.names.gguf(hf_name)} in {self.file.path}"

    def get(self, hf_name: str) -> torch.Tensor:
        name = self.names.gguf(hf_name)
        if name.endswith("attn_kv_b.weight") and name not in self.file.tensors:
            k_b = dequantize_tensor(self._tensor(name.replace("attn_kv_b", "attn_k_b")))
            v_b = dequantize_tensor(self._tensor(name.replace("attn_kv_b", "attn_v_b")))
            return merge_kv_b(k_b, v_b, self.cfg)
        w = dequantize_tensor(self._tensor(name))
        if hf_name.endswith("shared_expert_gate.weight"):
            w = w.reshape(1, -1)  # llama.cpp stores the Qwen2-MoE shared gate as a vector
        heads = self.names.is_permuted(hf_name)
        return self._unpermuted(name, w, heads) if heads else w

    def raw(self, hf_name: str) -> tuple[str, torch.Tensor] | None:
        """A dense weight in its stored block format, (format, uint8 [rows, row_bytes]) viewing the
        file; None for float formats and for tensors hymoe rebuilds (a merged kv_b, a vector gate)."""
        name = self.names.gguf(hf_name)
        t = self._tensor(name) if name in self.file.tensors else None
        if t is None or t.format in FLOAT_DTYPES or len(t.shape) != 2 or hf_name.endswith("shared_expert_gate.weight"):
            return None
        w = t.data.view(t.shape[0], row_bytes(t.format, t.shape[1]))
        heads = self.names.is_permuted(hf_name)  # whole rows move: the blocks themselves are untouched
        return t.format, self._unpermuted(name, w, heads).contiguous() if heads else w

    def raw_up(self, hf_name: str) -> tuple[tuple[str, torch.Tensor], tuple[str, torch.Tensor]] | None:
        """MLA's up-projections as a file of llama.cpp's split stores them, attn_k_b [N, R, Dn] and
        attn_v_b [N, Dv, R]: each one's heads' rows, (format, uint8 [rows, row_bytes]) viewing the
        file; None for a file that stores attn_kv_b whole."""
        name = self.names.gguf(hf_name)
        if not name.endswith("attn_kv_b.weight") or name in self.file.tensors:
            return None
        parts = [self._tensor(name.replace("attn_kv_b", part)) for part in ("attn_k_b", "attn_v_b")]
        if any(len(t.shape) != 3 for t in parts):
            return None
        return tuple((t.format, t.data.view(-1, row_bytes(t.format, t.shape[-1]))) for t in parts)

    def packed_experts(self, hf_names: list[str]):
        """One layer's stacked (gate, up, down), by HF name, as uint8 [E, rows * row_bytes] + formats.

        Views of the file when it stores the stack; older Mixtral files store one tensor per expert
        (`blk.N.ffn_gate.E.weight`), which are stacked into one copy here.
        """
        cfg = self.cfg
        e, i, h = cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size
        out, formats = [], []
        for name, shape in zip(map(self.names.gguf, hf_names), ((e, i, h), (e, i, h), (e, h, i))):
            if name in self.file.tensors:
                t = self._tensor(name)
                got, fmt, data = t.shape, t.format, t.data
            else:
                parts = [self._tensor(name.replace("_exps.", f".{j}.")) for j in range(e)]
                fmt = parts[0].format
                if any(p.format != fmt or p.shape != parts[0].shape for p in parts):
                    raise HymoeError(f"{self.file.path}: the experts of {name} differ in format or shape")
                got = (e, *parts[0].shape)
                data = host_bytes(sum(p.data.numel() for p in parts)).view(e, -1)  # one copy, in large pages
                for j, p in enumerate(parts):
                    data[j] = p.data.reshape(-1)
            if got != shape:
                raise HymoeError(f"{self.file.path}: tensor {name} has shape {list(got)}, "
                                 f"the metadata says {list(shape)}")
            out.append(data.view(e, shape[1] * row_bytes(fmt, shape[2])))
            formats.append(fmt)
        return out, tuple(formats)
