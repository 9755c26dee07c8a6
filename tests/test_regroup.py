"""Q4_K regrouped at load (Q4_K_G4, csrc/regroup.cpp): the layout against its description, and every
kernel path that streams it against Q4_K's own from the file's blocks, on every ISA the CPU has."""
from __future__ import annotations

import ctypes

import pytest
import torch

from hymoe.errors import HymoeError
from hymoe.experts import native, regroup
from hymoe.experts.native_linear import NativeLinear
from hymoe.quant.formats import native_id
from quant_utils import aligned_bytes, dequant, random_weights, regroup_q4_k

pytestmark = pytest.mark.skipif(native.library() is None, reason="native kernels not built")


def _regrouped(w: torch.Tensor) -> torch.Tensor:
    out = aligned_bytes(w.numel()).view(w.shape)
    assert regroup.regroup(w, "Q4_K", out) == "Q4_K_G4"
    return out


def test_the_layout_is_the_described_one():
    w = random_weights("Q4_K", 8, 768, seed=1)  # 24 blocks: 6 groups
    assert torch.equal(_regrouped(w), regroup_q4_k(w))
    assert not torch.equal(regroup_q4_k(w), w)
    in_place = aligned_bytes(w.numel()).view(w.shape)
    in_place.copy_(w)
    assert regroup.regroup(in_place, "Q4_K", in_place) == "Q4_K_G4" and torch.equal(in_place, regroup_q4_k(w))


@pytest.mark.parametrize("rows,n", [(12, 256), (8, 768), (6, 2048), (32, 512)])
@pytest.mark.parametrize("tokens", [1, 2, 5, 6, 17])
def test_rows_equal_q4_k_from_the_file(isa, rows, n, tokens):
    # AVX512: the groups at one token, KQ4G per row, the batch tile from 6 tokens; other ISAs put the
    # rows back in the file's layout first. The same arithmetic either way: equal bits.
    w = random_weights("Q4_K", rows, n, seed=rows + tokens)
    x = torch.randn(tokens, n, generator=torch.Generator().manual_seed(tokens))
    ours, theirs = native.rows("Q4_K_G4", _regrouped(w), x), native.rows("Q4_K", w, x)
    assert torch.equal(ours, theirs)
    reference = x @ dequant("Q4_K", w, n).T  # gguf-py's decoding
    assert (ours - reference).abs().max() <= 2e-2 * reference.abs().max()


def test_experts_equal_q4_k_from_the_file(isa):
    # down's rows of 768 are 3 blocks: groups span rows (the callers' units of 4 rows start a group)
    E, H, inter, T, K = 4, 256, 768, 3, 2
    weights = [random_weights("Q4_K", rows, n, seed=i, experts=E, is_centered=True)
               for i, (rows, n) in enumerate(((inter, H), (inter, H), (H, inter)))]
    x = torch.randn(T, H, generator=torch.Generator().manual_seed(3))
    ids = torch.tensor([[0, 3], [1, 2], [3, 1]])  # experts 0 and 2 at one token, 1 and 3 at two
    gates = torch.full((T, K), 0.5)
    outs = []
    # the regrouped first, each on an engine of its own: no buffer holds the other's results
    for formats, ws in ((("Q4_K_G4",) * 3, [_regrouped(w) for w in weights]), (("Q4_K",) * 3, weights)):
        experts = native.NativeExperts(native.NativeEngine(2, is_async=False), *ws, formats, H, inter)
        experts.submit(x, ids, gates)
        outs.append(experts.sync().clone())
    assert outs[0].abs().max() > 0 and torch.equal(outs[0], outs[1])


def test_regrouped_experts_hand_on_the_files_blocks():
    w = random_weights("Q4_K", 256, 256, seed=5, experts=2)
    engine = native.NativeEngine(1, is_async=False)
    stored = native.NativeExperts(engine, w, w, w, ("Q4_K",) * 3, 256, 256).stored_weights()
    g = _regrouped(w)
    experts = native.NativeExperts(engine, g, g, g, ("Q4_K_G4",) * 3, 256, 256, stored)
    assert experts.stored_weights() is stored and experts.twin().stored_weights() is stored


def test_bad_regroups_are_refused_before_c():
    w = random_weights("Q4_K", 4, 256)  # 4 blocks: one group
    with pytest.raises(HymoeError, match="whole groups"):
        regroup.regroup(w, "Q4_K", aligned_bytes(w.numel() + 1)[1:])  # not at a multiple of 576
    with pytest.raises(HymoeError, match="whole groups"):
        regroup.regroup(w[:3], "Q4_K", aligned_bytes(3 * 144))  # 3 blocks: no whole group
    with pytest.raises(HymoeError, match="whole groups"):
        regroup.regroup(random_weights("Q5_K", 4, 256), "Q5_K", aligned_bytes(4 * 176))
    g = _regrouped(w)
    shifted = aligned_bytes(g.numel() + 64)[64:].view(g.shape)
    shifted.copy_(g)
    with pytest.raises(HymoeError, match="multiples of 576"):
        NativeLinear(native.NativeEngine(1, is_async=False), 256, [("Q4_K_G4", 4, shifted)])
    with pytest.raises(HymoeError, match="multiples of 576"):
        native.rows("Q4_K_G4", shifted, torch.randn(1, 256))


def test_the_c_side_refuses_a_misplaced_layout_too():
    lib = native.library()
    w = _regrouped(random_weights("Q4_K", 4, 256))
    shifted = aligned_bytes(w.numel() + 144)[144:]
    x, out = torch.randn(256), torch.empty(4)
    p = ctypes.c_void_p
    assert lib.hymoe_rows(native_id("Q4_K_G4"), p(shifted.data_ptr()), shifted.numel(), 4, 256, p(x.data_ptr()),
                          256, 1, p(out.data_ptr()), 4) == -4
    assert lib.hymoe_rows(native_id("Q4_K_G4"), p(w.data_ptr()), w.numel(), 4, 256, p(x.data_ptr()), 256, 1,
                          p(out.data_ptr()), 4) == 0
    assert lib.hymoe_regroup(native_id("Q4_K"), p(w.data_ptr()), 576, p(shifted.data_ptr()), 576) == -4
    assert lib.hymoe_regroup(native_id("Q5_K"), p(w.data_ptr()), 576, p(w.data_ptr()), 576) == -1


def test_regrouping_follows_the_kernels_in_use():
    native.set_isa("avx2")
    try:
        assert not regroup.regroups("Q4_K")  # no kernels of its own there: the file's layout streams faster
    finally:
        native.set_isa("avx512")
    with native.tuned(regroup_q4_k=1):
        assert regroup.regroups("Q4_K") == ("avx512" in native.isa_name())
        assert not regroup.regroups("Q5_K") and not regroup.regroups("Q8_0")
    with native.tuned(regroup_q4_k=0):
        assert not regroup.regroups("Q4_K")


def _cpu_avx512() -> tuple[bool, bool]:
    """(has AVX512 as the kernels need it, runs it as two 256-bit halves: AMD family 25, Zen 4), read
    from /proc/cpuinfo: a reference apart from the kernels' CPUID checks. The CPU's, whatever kernel
    table HYMOE_ISA forces."""
    try:
        info = open("/proc/cpuinfo").read().split("\n\n")[0]
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in info.splitlines() if ":" in line)}
    flags = set(fields.get("flags", "").split())
    has = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "fma", "f16c"} <= flags
    return has, has and fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == "25"


def test_groups_and_regrouping_are_on_by_default_only_where_they_were_measured_to_pay():
    has_avx512, splits = _cpu_avx512()
    # Zen 4 (512-bit halves, a compute-bound kernel): decode 0.962-0.998 of the file's layout; Zen 5:
    # 1.010-1.055 (csrc/common.h, docs/dense.md). The attention's 256-bit path follows the same test.
    assert native.bench_tune("regroup_q4_k") == native.bench_tune("attn_ymm") == int(splits)
    assert regroup.regroups("Q4_K") == (splits and "avx512" in native.isa_name())
    # Q4_K/Q5_K blocks 4 at a time at one token: not on AVX512 at full width (Zen 5: decode 1.06-1.11
    # of the per-row kernel's); AVX2's pairs and Zen 4's groups stay
    assert native.bench_tune("kq45_groups") == int(not (has_avx512 and not splits))


def test_a_linear_is_regrouped_only_where_its_blocks_stay_at_no_cost():
    # a view of a file's mapping keeps the file's blocks for every other reader and the kernel streams
    # a regrouped copy; an encoded weight (its own bytes: --dense-format, FP8 experts re-quantized,
    # test_fp8.py) would be held twice: copied plain
    from hymoe.layers.linear import QuantLinear
    from hymoe.placement.kernels import _kernel_for
    from hymoe.placement.large_pages import LargePageCopies

    engine = native.NativeEngine(1, is_async=False)
    w = random_weights("Q4_K", 8, 512, seed=9)
    mapping = torch.cat([w.reshape(-1), torch.zeros(4096, dtype=torch.uint8)])
    for qweight, is_view in ((mapping[:w.numel()].view(w.shape), True), (w.clone(), False)):
        linear = QuantLinear(512, 8, "Q4_K", qweight)
        linear.is_mapped = is_view  # as models/assemble.py marks a view of a GGUF's mapping
        assert _kernel_for(linear, lambda: engine, copies=LargePageCopies(True)) == "native"
        fmt, _, streamed = linear.kernel.weights[0]
        assert fmt == ("Q4_K_G4" if is_view and regroup.regroups("Q4_K") else "Q4_K")
        assert linear.qweight is (qweight if fmt == "Q4_K_G4" else streamed) and torch.equal(linear.qweight, w)
        x = torch.randn(3, 512, generator=torch.Generator().manual_seed(1))
        assert torch.equal(linear(x), native.rows("Q4_K", w, x))


def test_a_gguf_sources_views_are_told_from_its_copies(gguf_model):
    from hymoe.loader.gguf_file import GGUFModelFile

    _, path = gguf_model("qwen3_moe", "Q4_K")
    f = GGUFModelFile(path)
    t = next(iter(f.tensors.values())).data
    assert f.maps(t) and f.maps(t[16:]) and not f.maps(t.clone())
