"""The weights the CPU's native kernels stream are copied at load onto 2 MiB pages (large_pages.py);
`--mmap` keeps them on the GGUF file's mapping. Either way the model computes the same logits."""
from __future__ import annotations

import logging

import pytest
import torch

import hymoe
from hymoe.cli import build_parser
from hymoe.experts import native, regroup
from hymoe.layers.linear import QuantLinear
from hymoe.layers.moe import MoE
from hymoe.placement import large_pages
from hymoe.placement.options import PlacementOptions
from quant_utils import regroup_q4_k

PROMPT = [5, 17, 42, 99, 7, 64, 23, 11]
needs_native = pytest.mark.skipif(native.library() is None, reason="native kernels not built")


def _streamed(llm) -> list[tuple[torch.Tensor, str]]:
    """Every weight a native kernel streams, with its format: the native linears', the routers' and
    the experts'."""
    out = [m.kernel.weights[0][::-2] for m in llm.model.modules() if isinstance(m, QuantLinear) and m.kernel is not None]
    out += [m.gate.kernel.logits.weights[0][::-2] for m in llm.model.modules() if isinstance(m, MoE)]
    experts = [m.experts for m in llm.model.modules() if isinstance(m, MoE)]
    assert all(isinstance(e, native.NativeExperts) for e in experts)
    out += [(w, f) for e in experts for w, f in zip((e.gate, e.up, e.down), e.formats)]
    return out


def _in_file(t: torch.Tensor, path) -> bool:
    """Whether t views the GGUF file's mapping (its storage is the whole file)."""
    return t.untyped_storage().nbytes() == path.stat().st_size


@needs_native
@pytest.mark.parametrize("tuned", [0, 1])  # the default is the CPU's (regroup_q4_k, csrc/common.h)
def test_streamed_weights_are_copies_and_mmap_keeps_the_file(gguf_model, tuned):
    _, path = gguf_model("qwen3_moe", "Q4_K")
    with native.tuned(regroup_q4_k=tuned):
        copied = hymoe.load(path, placement="cpu", progress=False)
        is_regrouped = regroup.regroups("Q4_K")
    mapped = hymoe.load(path, placement="cpu", progress=False, mmap=True)
    ours, theirs = _streamed(copied), _streamed(mapped)
    assert len(ours) == len(theirs) == 2 * (4 + 1 + 3) + 1  # q, k, v, o, router, three expert stacks a layer; head
    regrouped = [f == "Q4_K_G4" for _, f in ours]
    if large_pages.large_pages_offered() or any(regrouped):
        assert not any(_in_file(t, path) for t, f in ours if f == "Q4_K_G4" or large_pages.large_pages_offered())
    assert all(_in_file(t, path) for t, _ in theirs) and all(f != "Q4_K_G4" for _, f in theirs)
    # the AVX512 kernels stream Q4_K regrouped (as many as are whole groups: here every one)
    assert all(regrouped[i] == (f == "Q4_K" and is_regrouped) for i, (_, f) in enumerate(theirs))
    assert is_regrouped == (tuned == 1 and "avx512" in native.isa_name())
    assert all(torch.equal(a, regroup_q4_k(b) if f == "Q4_K_G4" else b) for (a, f), (b, _) in zip(ours, theirs))
    assert torch.equal(copied.logits(PROMPT), mapped.logits(PROMPT))


@needs_native
def test_copies_stop_at_the_headroom_and_say_so(gguf_model, monkeypatch, caplog):
    _, path = gguf_model("qwen3_moe", "Q4_K")
    monkeypatch.setattr(large_pages, "large_pages_offered", lambda: True)
    monkeypatch.setattr(large_pages, "free_bytes", lambda device: 0)
    monkeypatch.setattr("hymoe.errors._said", set())  # said once per process: this test must see it
    with caplog.at_level(logging.WARNING, logger="hymoe"):
        llm = hymoe.load(path, placement="cpu", progress=False)
    assert all(_in_file(t, path) for t, _ in _streamed(llm))
    notes = [r.getMessage() for r in caplog.records if "stay on the file's pages" in r.getMessage()]
    assert len(notes) == 1 and "--mmap" in notes[0]


def test_copies_budget_and_offer():
    t = torch.arange(4096, dtype=torch.uint8)
    copies = large_pages.LargePageCopies(True)
    copies.is_offered, copies.left = True, 6000
    first, second = copies(t), copies(t)
    assert torch.equal(first, t) and first.data_ptr() != t.data_ptr()  # a copy
    assert second is t and (copies.copied, copies.kept) == (4096, 4096)  # past the budget: the original
    off = large_pages.LargePageCopies(False)
    assert off(t) is t and off.copied == 0


def test_small_copies_share_an_arena_on_page_boundaries():
    copies = large_pages.LargePageCopies(True)
    copies.is_offered, copies.left = True, 1 << 40
    small = [torch.randn(n, generator=torch.Generator().manual_seed(n)) for n in (1000, 300_000, 7)]
    got = [copies(t) for t in small]
    assert all(torch.equal(a, b) and a.data_ptr() != b.data_ptr() for a, b in zip(got, small))
    assert len({g.untyped_storage().data_ptr() for g in got}) == 1  # one arena: whole large pages shared
    assert all(g.data_ptr() % 4096 == 0 for g in got)
    big = torch.ones(large_pages.SHARED_UP_TO // 4 + 1)  # past the shared size: a mapping of its own
    got_big = copies(big)
    assert torch.equal(got_big, big) and got_big.untyped_storage().data_ptr() != got[0].untyped_storage().data_ptr()
    full = [copies(torch.ones(large_pages.SHARED_UP_TO // 4)) for _ in range(large_pages.ARENA // large_pages.SHARED_UP_TO + 1)]
    assert len({f.untyped_storage().data_ptr() for f in full}) >= 2  # an arena that is full gives way to a new one
    assert copies.copied == sum(t.numel() * 4 for t in small + [big] + full)


def test_mmap_option_reaches_the_placement_options():
    args = build_parser().parse_args(["generate", "m.gguf", "--prompt", "hi", "--mmap"])
    assert PlacementOptions.from_args(args).mmap is True
    assert PlacementOptions.from_args(build_parser().parse_args(["generate", "m.gguf", "--prompt", "hi"])).mmap is False


@needs_native
def test_mla_products_read_copies_of_the_files_attn_k_b_and_attn_v_b(gguf_model):
    _, path = gguf_model("deepseek_v3", "Q4_0")  # the file's own split, read in place (test_native_mla.py)
    weights = [[k.weight for m in llm.model.modules() for k in (getattr(m, "up_kernels", None) or ())]
               for llm in (hymoe.load(path, progress=False), hymoe.load(path, progress=False, mmap=True))]
    assert weights[0] and len(weights[0]) == len(weights[1])
    if large_pages.large_pages_offered():
        assert not any(_in_file(t, path) for t in weights[0])
    assert all(_in_file(t, path) for t in weights[1])
    assert all(torch.equal(a, b) for a, b in zip(*weights))
