"""GGUF files of llama.cpp's low-bit and older expert formats, quantized by llama.cpp itself, in hymoe
and in llama.cpp: teacher-forced next-token agreement (issue: run the files people download).

Where llama_model_quantize makes the format without an importance matrix, the file is its own mix
for that file type (Q2_K, Q3_K_S/M/L, IQ3_S, IQ4_XS, IQ4_NL, Q4_1, Q5_0, Q5_1: dense weights in
the types llama.cpp picks too). IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ1_M it refuses without one, so
their experts are quantized by ggml_quantize_chunk (its quantizer, with a uniform importance
matrix) into a file whose other weights are Q8_0."""
from __future__ import annotations

import collections

import pytest
from test_gguf_llama_cpp import agreement

from hymoe.loader.gguf_file import GGUFFile

llama_ref = pytest.importorskip("llama_ref")

# llama.cpp's file types (llama.h's LLAMA_FTYPE_MOSTLY_*) and the experts' format each gives here
FTYPES = {"Q2_K": (10, "Q2_K"), "Q3_K_S": (11, "Q3_K"), "Q3_K_M": (12, "Q3_K"), "Q3_K_L": (13, "Q3_K"),
          "IQ3_S": (26, "IQ3_S"), "IQ4_XS": (30, "IQ4_XS"), "IQ4_NL": (25, "IQ4_NL"), "Q4_1": (3, "Q4_1"),
          "Q5_0": (8, "Q5_0"), "Q5_1": (9, "Q5_1")}
NEEDS_IMATRIX = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ1_M"]


def expert_types(path) -> collections.Counter:
    return collections.Counter(t.format for name, t in GGUFFile(path).tensors.items() if "_exps" in name)


@pytest.mark.parametrize("ftype", list(FTYPES))
def test_llama_cpp_quantized_file_agrees(gguf_model, tmp_path, ftype):
    code, fmt = FTYPES[ftype]
    _, f16 = gguf_model("deepseek_v3", "F16")
    path = tmp_path / f"{ftype}.gguf"
    llama_ref.quantize_file(f16, path, code)
    assert fmt in expert_types(path)  # the format under test is in the file (not a fallback type)
    assert agreement(path, 200) >= 0.95


@pytest.mark.parametrize("fmt", NEEDS_IMATRIX)
def test_experts_quantized_by_ggml_agree(gguf_model, tmp_path, fmt):
    _, f16 = gguf_model("deepseek_v3", "F16")
    _, q8 = gguf_model("deepseek_v3", "Q8_0")
    path = llama_ref.with_quantized_experts(q8, f16, tmp_path / f"{fmt}.gguf", fmt)
    assert set(expert_types(path)) == {fmt}
    assert agreement(path, 200) >= 0.95
