"""The native decoder of embedding rows (csrc/dequant.cpp) against gguf-py's own decoder, for
every format it takes, and its refusals of bad ids."""
from __future__ import annotations

import pytest
import torch

from hymoe.errors import HymoeError
from hymoe.experts import native
from hymoe.experts.native_linear import NativeEmbedding
from hymoe.layers.linear import QuantEmbedding
from hymoe.placement.kernels import _embedding_kernel
from quant_utils import dequant, random_weights

pytestmark = pytest.mark.skipif(native.library() is None, reason="native kernels not built")

DECODED = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
           "Q6_K", "IQ4_XS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_M"]


@pytest.mark.parametrize("fmt", DECODED)
def test_native_rows_equal_gguf_py(fmt):
    w = random_weights(fmt, 40, 512, seed=3)  # [40, row_bytes]
    ids = torch.tensor([[5, 0, 39], [5, 17, 2]])
    got = NativeEmbedding(native.library(), fmt, w, 40, 512)(ids)  # [2, 3, 512]
    want = dequant(fmt, w, 512)[ids]
    assert torch.equal(got, want)  # scales times small integers: exact in float32 on both sides


def test_formats_without_a_native_decoder_stay_with_gguf_py():
    lib = native.library()
    assert not NativeEmbedding.decodes(lib, "IQ1_S") and NativeEmbedding.decodes(lib, "Q4_K")
    w = random_weights("IQ1_S", 8, 256)
    embed = QuantEmbedding(8, 256, "IQ1_S", w, torch.float32)
    _embedding_kernel(embed)
    assert embed.kernel is None
    assert torch.equal(embed(torch.tensor([3])), dequant("IQ1_S", w, 256)[[3]])


def test_a_placed_embedding_decodes_natively_into_the_model_dtype():
    w = random_weights("Q6_K", 16, 256, seed=1)
    embed = QuantEmbedding(16, 256, "Q6_K", w, torch.bfloat16)
    ids = torch.tensor([[1, 15, 1]])
    want = embed(ids)  # the torch decoder
    _embedding_kernel(embed)
    assert isinstance(embed.kernel, NativeEmbedding)
    got = embed(ids)
    assert got.dtype is torch.bfloat16 and got.shape == (1, 3, 256)
    assert torch.equal(got, want)


@pytest.mark.parametrize("ids", [torch.tensor([40]), torch.tensor([-1]), torch.tensor([[0, 2**40]])])
def test_ids_outside_the_table_are_refused(ids):
    call = NativeEmbedding(native.library(), "Q4_K", random_weights("Q4_K", 40, 256), 40, 256)
    with pytest.raises(HymoeError, match="outside the embedding"):
        call(ids)


def test_bad_tables_and_ids_are_refused_before_c():
    lib, w = native.library(), random_weights("Q8_0", 4, 64)
    with pytest.raises(HymoeError, match="holds"):
        NativeEmbedding(lib, "Q8_0", w[:3], 4, 64)  # fewer bytes than 4 rows
    with pytest.raises(HymoeError, match="cannot decode"):
        NativeEmbedding(lib, "TQ1_0", random_weights("TQ1_0", 4, 256), 4, 256)
    call = NativeEmbedding(lib, "Q8_0", w, 4, 64)
    with pytest.raises(HymoeError, match="int64"):
        call(torch.tensor([1], dtype=torch.int32))
    assert call(torch.zeros(0, dtype=torch.int64)).shape == (0, 64)
