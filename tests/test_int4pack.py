"""Q4_K blocks as torch's int4 weight-only matmul reads them (quant/int4pack.py), checked with the
CPU build of that matmul against gguf-py's dequantization."""
from __future__ import annotations

import pytest
import torch

from hymoe.quant.int4pack import GROUP, Int4PackMatmul, q4_k_to_int4pack
from quant_utils import dequant, random_weights

needs_op = pytest.mark.skipif(not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"),
                              reason="this torch has no CPU int4 pack matmul")


def test_codes_scales_and_zeros_give_gguf_py_values():
    n, k = 48, 768
    raw = random_weights("Q4_K", n, k, seed=5)
    want = dequant("Q4_K", raw, k)  # [n, k]
    q, sz = q4_k_to_int4pack(raw, k)
    assert q.shape == (n, k) and int(q.min()) >= 0 and int(q.max()) <= 15
    scale, zero = (sz[..., i].T.repeat_interleave(GROUP, 1) for i in (0, 1))  # [n, k]
    assert torch.allclose((q - 8) * scale + zero, want, rtol=1e-5, atol=1e-6)  # exact in float32
    bf = (q - 8) * scale.bfloat16().float() + zero.bfloat16().float()  # as tinygemm keeps them
    # bf16 rounds scale and zero by at most 2^-8 of themselves; |q - 8| <= 8
    assert ((bf - want).abs() <= 2.0 ** -8 * (8 * scale.abs() + zero.abs()) * 1.001 + 1e-7).all()


@needs_op
def test_torch_int4_matmul_on_the_converted_blocks_equals_gguf_py():
    n, k = 64, 1024
    raw = random_weights("Q4_K", n, k, seed=9)
    q, sz = q4_k_to_int4pack(raw, k)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 8)
    x = torch.randn(5, k).bfloat16()
    got = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, GROUP, sz.bfloat16()).float()
    want = x.float() @ dequant("Q4_K", raw, k).T
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-2


def _packed_in_chunks_equals_gguf_py(device: str):
    n, k = 320, 512
    raw = random_weights("Q4_K", n, k, seed=11)  # on the host, as placement hands it over
    whole = Int4PackMatmul(raw, k, device)
    chunked = Int4PackMatmul(raw, k, device, chunk=128 * k)  # packings of 128, 128 and 64 rows
    assert torch.equal(whole.packed, chunked.packed) and torch.equal(whole.scales_and_zeros, chunked.scales_and_zeros)
    assert chunked.packed.device.type == device and chunked.nbytes() == n * k * Int4PackMatmul.BYTES_PER_WEIGHT
    x = torch.randn(3, k)
    got = chunked(x.to(device)).float().cpu()
    want = x.bfloat16().float() @ dequant("Q4_K", raw, k).T
    assert got.shape == (3, n) and ((got - want).abs().max() / want.abs().max()).item() < 1e-2


@needs_op
def test_the_kernel_packs_in_row_chunks_and_equals_gguf_py_on_the_cpu():
    _packed_in_chunks_equals_gguf_py("cpu")


@pytest.mark.gpu
def test_the_kernel_packs_in_row_chunks_and_equals_gguf_py_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    _packed_in_chunks_equals_gguf_py("cuda")


def test_auto_takes_the_int4_matmul_on_cuda_only_and_bad_names_are_refused():
    from hymoe.errors import HymoeError
    from hymoe.placement.kernels import uses_int4pack
    from hymoe.placement.options import PlacementOptions

    assert uses_int4pack("int4pack") and not uses_int4pack("dequant")
    assert not uses_int4pack("auto", torch.device("cpu"))
    assert PlacementOptions().gpu_dense_kernel == "auto"
    with pytest.raises(HymoeError, match="--gpu-dense-kernel 'int8'"):
        PlacementOptions(gpu_dense_kernel="int8")
