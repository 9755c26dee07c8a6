"""The fused native MoE forward against the torch reference backend on gguf-py-dequantized weights."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hymoe.errors import HymoeError
from hymoe.experts import native
from hymoe.experts.torch_backend import TorchExperts
from test_lowbit_kernels import LOWBIT
from quant_utils import dequant, random_weights

pytestmark = pytest.mark.skipif(native.library() is None, reason="native kernels not built")

# Error bound per format against unquantized activations, relative to the largest output. The
# kernels quantize x and h to int8: per 32 values, or per 256 for the K-quants (one scale per
# super-block, as ggml's Q8_K, so sub-block scales apply in integer arithmetic) - a coarser step.
# For BF16 weights they round x and h to bf16 (relative step 2^-9; ggml's BF16 and torch's bf16
# GEMM do the same), measured here at 0.26-0.35% of the largest output; the exact arithmetic
# is pinned by test_native_moe_equals_step_by_step_emulation.
BOUND = {"F32": 1e-5, "F16": 1e-5, "BF16": 0.01, "Q8_0": 0.02, "Q4_0": 0.02, "Q4_K": 0.04, "Q5_K": 0.04,
         "Q6_K": 0.04, "IQ1_S": 0.03, "TQ2_0": 0.03, "TQ1_0": 0.03,
         **dict.fromkeys(LOWBIT, 0.02),  # activations per 32 (csrc/lowbit.h)
         "Q2_K": 0.04, "Q3_K": 0.04, "IQ4_XS": 0.04}  # but per 256, as the other K-quants
K_QUANTS = {"Q2_K", "Q3_K", "IQ4_XS", "Q4_K", "Q5_K", "Q6_K", "TQ2_0", "TQ1_0"}  # activations per 256
E, H, I = 12, 512, 256


@pytest.fixture(scope="module")
def engine():
    return native.NativeEngine(2)


def layer(formats, seed=0):
    raw = [random_weights(f, rows, n, seed=seed + j, experts=E, is_centered=True)
           for j, (f, rows, n) in enumerate(zip(formats, (I, I, H), (H, H, I)))]
    ref = TorchExperts(*[dequant(f, w, n) for f, w, n in zip(formats, raw, (H, H, I))])
    return raw, ref


def quantized(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """The activations a kernel of this format sees: int8 per block, scale = amax / 127; for BF16
    weights x rounded to bf16 (as ggml and torch's bf16 GEMM do)."""
    if fmt == "BF16":
        return x.bfloat16().float()
    if fmt in ("F32", "F16"):
        return x
    block = 256 if fmt in K_QUANTS else 32
    b = x.reshape(x.shape[0], -1, block)
    d = b.abs().amax(-1, keepdim=True) / 127
    q = torch.where(d > 0, torch.round(b / d.clamp_min(1e-30)), torch.zeros_like(b))
    return (q * d).reshape_as(x)


def emulated(x, ids, w, formats, dense, margins=None):
    """The fused layer computed step by step in float64, with the kernels' activation quantization.
    margins (a list) receives, per h, how far its scaled values come to a rounding tie (x.5)."""
    gate, up, down = (t.double() for t in dense)
    out = torch.zeros(x.shape[0], down.shape[1], dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            g = quantized(x[t:t + 1], formats[0]).double() @ gate[e].T
            u = quantized(x[t:t + 1], formats[1]).double() @ up[e].T
            h = (torch.nn.functional.silu(g) * u).float()
            if margins is not None and formats[2] not in ("F32", "F16", "BF16"):
                b = h.reshape(-1, 256 if formats[2] in K_QUANTS else 32).double()
                scaled = b * 127 / b.abs().amax(-1, keepdim=True)
                margins.append(((scaled - scaled.floor() - 0.5).abs()).min().item())
            out[t] += float(w[t, j]) * (quantized(h, formats[2]).double() @ down[e].T)[0]
    return out


def run(backend, x, ids, w):
    backend.submit(x, ids, w)
    return backend.sync()


def routing(tokens, k, seed, num_used=E - 3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(num_used, generator=g)[:k] for _ in range(tokens)])  # 3 experts idle
    return ids, torch.rand(tokens, k, generator=g)


@pytest.mark.parametrize("fmt", list(BOUND))
@pytest.mark.parametrize("tokens, k", [(1, 8), (3, 1), (17, 4), (128, 2), (600, 8)])
def test_native_moe_matches_torch_reference(engine, fmt, tokens, k):
    raw, ref = layer((fmt, fmt, fmt))
    backend = native.NativeExperts(engine, *raw, (fmt, fmt, fmt), H, I)
    x = torch.randn(tokens, H, generator=torch.Generator().manual_seed(tokens))
    ids, w = routing(tokens, k, tokens + k)
    want = run(ref, x, ids, w)
    got = run(backend, x, ids, w)
    assert ((got - want).abs().max() / want.abs().max()).item() < BOUND[fmt]


@pytest.mark.parametrize("fmt", list(BOUND))
def test_native_moe_equals_step_by_step_emulation(engine, fmt):
    """Beyond the error bound: the fused layer is exactly the math it claims, up to float rounding."""
    formats = (fmt, fmt, fmt)
    raw = [random_weights(f, rows, n, seed=j, experts=E, is_centered=True)
           for j, (f, rows, n) in enumerate(zip(formats, (I, I, H), (H, H, I)))]
    dense = [dequant(f, w_, n) for f, w_, n in zip(formats, raw, (H, H, I))]
    ids, w = routing(5, 3, 11)
    # the kernels compute h in float32, the emulation in float64: an h that lands within float
    # rounding of an int8 rounding tie may round either way, and one such code moves the output
    # far past rounding. Such inputs cannot test exactness, so the first x without one is used.
    for seed in range(7, 17):
        x = torch.randn(5, H, generator=torch.Generator().manual_seed(seed))
        margins = []
        want = emulated(x, ids, w, formats, dense, margins)
        if min(margins, default=1.0) > 1e-4:
            break
    got = run(native.NativeExperts(engine, *raw, formats, H, I), x, ids, w).double()
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-4


def test_gate_up_down_may_differ_in_format(engine):
    formats = ("Q4_K", "Q6_K", "Q8_0")  # like a Q4_K_M file
    raw, ref = layer(formats, seed=3)
    backend = native.NativeExperts(engine, *raw, formats, H, I)
    x = torch.randn(9, H)
    ids, w = routing(9, 3, 1)
    want = run(ref, x, ids, w)
    assert ((run(backend, x, ids, w) - want).abs().max() / want.abs().max()).item() < 0.02


def test_portable_and_simd_paths_agree(engine):
    raw, _ = layer(("Q4_K", "Q4_K", "Q4_K"), seed=4)
    backend = native.NativeExperts(engine, *raw, ("Q4_K",) * 3, H, I)
    x = torch.randn(33, H)
    ids, w = routing(33, 4, 2)
    native.set_isa("generic")
    try:
        portable = run(backend, x, ids, w)
    finally:
        native.set_isa("avx512")
    simd = run(backend, x, ids, w)
    assert ((portable - simd).abs().max() / portable.abs().max()).item() < 1e-5


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("tokens, k", [(1, 8), (17, 4), (600, 8)])
def test_thread_ranges_give_the_shared_counters_bits(threads, tokens, k):
    """Each thread a contiguous range of the units, then the others' leftovers (moe_by_thread): the
    same bits as units from one shared counter, with every pair's rows computed."""
    formats = ("Q4_K", "Q6_K", "Q8_0")
    raw, ref = layer(formats, seed=6)
    backend = native.NativeExperts(native.NativeEngine(threads, is_async=False), *raw, formats, H, I)
    x = torch.randn(tokens, H, generator=torch.Generator().manual_seed(tokens))
    ids, w = routing(tokens, k, 4)
    outs = []
    for by_thread in (1, 0):  # by thread first: a row it missed would hold no earlier result
        with native.tuned(moe_by_thread=by_thread):
            outs.append(run(backend, x, ids, w).clone())  # the backend reuses its output buffer
    want = run(ref, x, ids, w)
    assert ((outs[0] - want).abs().max() / want.abs().max()).item() < 0.04
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("formats", [("Q4_K", "Q6_K", "Q8_0"), ("BF16", "BF16", "BF16"), ("Q4_0", "Q5_K", "F32")])
@pytest.mark.parametrize("threads, k", [(1, 4), (2, 8), (2, 4)])
def test_one_token_as_whole_experts_gives_the_phased_bits(isa, formats, threads, k):
    """At one token, a unit an expert whole (gate, up, h and down: Tuning::moe_one_phase, where each
    thread has 4 experts or more) then the experts' rows added in order: the same bits as the four
    phases, and within the bound of the reference."""
    raw, ref = layer(formats, seed=7)
    backend = native.NativeExperts(native.NativeEngine(threads, is_async=False), *raw, formats, H, I)
    x = torch.randn(1, H, generator=torch.Generator().manual_seed(k))
    ids, w = routing(1, k, 5)
    outs = []
    for one_phase in (1, 0):  # one phase first: a row it missed would hold no earlier result
        with native.tuned(moe_one_phase=one_phase):
            outs.append(run(backend, x, ids, w).clone())
    want = run(ref, x, ids, w)
    assert ((outs[0] - want).abs().max() / want.abs().max()).item() < max(BOUND[f] for f in formats)
    assert torch.equal(outs[0], outs[1])


def test_one_token_naming_an_expert_twice_takes_both_pairs():
    """A caller may give one token the same expert twice: each pair counts (the one-phase path takes
    only tokens whose experts are distinct)."""
    formats = ("Q4_K", "Q6_K", "Q8_0")
    raw, ref = layer(formats, seed=8)
    backend = native.NativeExperts(native.NativeEngine(2, is_async=False), *raw, formats, H, I)
    x = torch.randn(1, H, generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([[3, 1, 3, 0, 5, 7, 2, 8, 9]])  # 8 experts for 2 threads, one of them twice
    w = torch.rand(1, 9, generator=torch.Generator().manual_seed(3))
    got, want = run(backend, x, ids, w).clone(), run(ref, x, ids, w)
    assert ((got - want).abs().max() / want.abs().max()).item() < 0.04


def test_submit_returns_before_sync_and_bad_ids_are_refused(engine):
    raw, _ = layer(("Q8_0",) * 3)
    backend = native.NativeExperts(engine, *raw, ("Q8_0",) * 3, H, I)
    ids, w = routing(4, 2, 0)
    with pytest.raises(Exception, match="expert id is out of range"):
        backend.submit(torch.randn(4, H), ids + E, w)
    backend.submit(torch.randn(4, H), ids, w)
    assert backend.sync().shape == (4, H)


def test_environment_forces_the_portable_path(tmp_path):
    """HYMOE_ISA=generic (how CI runs everything on the portable path) takes effect and agrees."""
    import os
    import subprocess
    import sys

    script = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from hymoe.experts import native
from quant_utils import random_weights
raw = [random_weights("Q4_K", r, n, seed=j, experts=4, is_centered=True)
       for j, (r, n) in enumerate(((256, 512), (256, 512), (512, 256)))]
b = native.NativeExperts(native.NativeEngine(2), *raw, ("Q4_K",) * 3, 512, 256)
x = torch.randn(5, 512, generator=torch.Generator().manual_seed(0))
b.submit(x, torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2]]), torch.full((5, 2), 0.5))
torch.save(b.sync(), sys.argv[1])
print(native.isa_name())
"""
    outs = {}
    for isa in ("generic", ""):
        env = {**os.environ, "HYMOE_ISA": isa}
        r = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{isa or 'best'}.pt")],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        outs[isa or "best"] = (r.stdout.strip(), torch.load(tmp_path / f"{isa or 'best'}.pt"))
    assert outs["generic"][0] == "generic"
    generic, best = outs["generic"][1], outs["best"][1]
    assert ((generic - best).abs().max() / generic.abs().max()).item() < 1e-5


def test_formats_without_a_kernel_take_the_dequantizing_path(caplog):
    """The dequantizing backend (what a GGUF type without a native kernel takes: none a MoE file
    uses), here on two formats gguf-py decodes: correct from their blocks, and said once."""
    import logging

    import numpy as np
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    from hymoe.experts.dequant_backend import DequantExperts

    formats = ("Q5_0", "Q2_K", "Q5_0")
    rng = np.random.default_rng(0)
    raw = []
    for f, rows, n in zip(formats, (I, I, H), (H, H, I)):
        block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[f]]
        b = rng.integers(0, 256, size=(E * rows * n // block, nbytes), dtype=np.uint8)
        b[:, :2] = (rng.uniform(1e-3, 1e-2, len(b)).astype(np.float16).view(np.uint8).reshape(-1, 2))
        if f == "Q2_K":  # d and dmin sit at the end of a Q2_K block
            b[:, -4:] = (rng.uniform(1e-3, 1e-2, (len(b), 2)).astype(np.float16).view(np.uint8).reshape(-1, 4))
        raw.append(torch.from_numpy(b.reshape(E, -1)))
    ref = TorchExperts(*[dequant(f, w_.reshape(E, rows, -1), n) for f, w_, rows, n in
                         zip(formats, raw, (I, I, H), (H, H, I))])
    x = torch.randn(7, H)
    ids, w = routing(7, 3, 5)
    backend = DequantExperts(*raw, formats, H, I)
    with caplog.at_level(logging.WARNING, logger="hymoe"):
        got = run(backend, x, ids, w)
        run(DequantExperts(*raw, formats, H, I), x, ids, w)
    said = [r for r in caplog.records if "dequantizing one expert at a time" in r.getMessage()]
    assert len(said) == 2  # once for Q5_0, once for Q2_K, when first used; not again for the second layer
    want = run(ref, x, ids, w)
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5


def test_async_submit_returns_while_the_pool_works():
    """The GPU-side contract: submit() returns before the job is done, the GIL is free meanwhile."""
    engine = native.NativeEngine(2, is_async=True)
    e, h, i = 4, 2048, 2048
    raw = [random_weights("F32", r, n, seed=j, experts=e) for j, (r, n) in enumerate(((i, h), (i, h), (h, i)))]
    backend = native.NativeExperts(engine, *raw, ("F32",) * 3, h, i)
    x = torch.randn(256, h)
    ids = torch.arange(256 * 2).remainder(e).view(256, 2)
    w = torch.full((256, 2), 0.5)
    backend.submit(x, ids, w)  # ~200 MB of float32 weights x 256 tokens: far longer than returning
    assert not backend.is_done()
    python_work = sum(range(200_000))  # runs on this thread while the pool computes (GIL released)
    out = backend.sync()
    assert backend.is_done() and python_work > 0
    ref = TorchExperts(*[r.view(torch.float32).view(e, rows, -1) for r, rows in zip(raw, (i, i, h))])
    want = run(ref, x, ids, w)
    assert ((out - want).abs().max() / want.abs().max()).item() < 1e-5


def test_pairs_marked_minus_one_are_skipped():
    """Expert id -1 means the pair is computed elsewhere (a GPU-resident expert): it adds nothing."""
    e, h, i = 4, 64, 32
    g, u, d = torch.randn(e, i, h), torch.randn(e, i, h), torch.randn(e, h, i)
    engine = native.NativeEngine(2, is_async=False)
    backend = native.NativeExperts(engine, *[w.contiguous().view(torch.uint8).reshape(e, -1) for w in (g, u, d)],
                                   ("F32",) * 3, h, i)
    x = torch.randn(5, h)
    ids = torch.tensor([[0, 1], [2, -1], [-1, -1], [3, 0], [1, 2]])
    w = torch.rand(5, 2)
    got = run(backend, x, ids, w)
    want = TorchExperts(g, u, d).compute(x, ids, w)  # the reference skips -1 the same way
    by_hand = TorchExperts(g, u, d).compute(x, ids.clamp(min=0), w * (ids >= 0))
    assert ((want - by_hand).abs().max() / want.abs().max()).item() < 1e-6
    assert got[2].abs().max() == 0
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5
    with pytest.raises(HymoeError, match="out of range"):
        run(backend, x, ids - 1, w)


PIN_PROBE = """
import os, sys, time
from hymoe.experts import native
os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:2]))
before = set(os.listdir("/proc/self/task"))
engine = native.NativeEngine(int(sys.argv[1]), is_async=True)
time.sleep(0.2)  # the pool's threads pin themselves as they start
new = sorted(set(os.listdir("/proc/self/task")) - before)
print(sorted(sorted(os.sched_getaffinity(int(t))) for t in new))
"""


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two CPUs")
@pytest.mark.parametrize("threads,pin,want", [(2, None, "pinned"), (2, "0", "free"), (3, None, "free")])
def test_pool_threads_pin_to_distinct_cpus(threads, pin, want):
    """Each pool thread on a CPU of its own (a packing scheduler otherwise puts a woken helper on
    the caller's core); not with HYMOE_PIN=0, nor with more threads than allowed CPUs."""
    env = {k: v for k, v in os.environ.items() if k != "HYMOE_PIN"}
    if pin is not None:
        env["HYMOE_PIN"] = pin
    out = subprocess.run([sys.executable, "-c", PIN_PROBE, str(threads)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    masks = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert len(masks) == threads  # the driver and the helpers
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if want == "pinned":
        assert sorted(masks) == [[cpus[0]], [cpus[1]]]
    else:
        assert all(m == cpus for m in masks)


@pytest.mark.parametrize("case", ["narrow hidden", "3-D hidden", "short ids", "short weights", "float ids"])
def test_bad_shapes_are_refused_before_the_engine(engine, case):
    """The engine reads T x K ids and weights and T rows of H values: every other shape is a
    HymoeError in Python, never a read past a buffer."""
    raw, _ = layer(("Q8_0",) * 3)
    ex = native.NativeExperts(engine, *raw, ("Q8_0",) * 3, H, I)
    x, ids, w = torch.randn(4, H), torch.randint(0, E, (4, 2)), torch.rand(4, 2)
    x, ids, w = {"narrow hidden": (x[:, : H // 2], ids, w), "3-D hidden": (x[None], ids, w),
                 "short ids": (x, ids[:2], w), "short weights": (x, ids, w[:, :1]),
                 "float ids": (x, ids.float(), w)}[case]
    with pytest.raises(HymoeError, match="experts take"):
        ex.submit(x, ids, w)
    ex.submit(*(torch.randn(4, H), torch.randint(0, E, (4, 2)), torch.rand(4, 2)))  # the engine still works
    assert ex.sync().shape == (4, H)


@pytest.mark.parametrize("shape", [(2, 0), (2, 100), (3,)])
def test_bare_rows_refuses_shapes_it_cannot_compute(shape):
    weight = random_weights("Q8_0", 8, 256)
    with pytest.raises(HymoeError):
        native.rows("Q8_0", weight, torch.randn(*shape))


def test_a_non_contiguous_expert_tensor_is_named_as_such(engine):
    raw, _ = layer(("Q8_0",) * 3)
    gate = torch.cat([raw[0], raw[0]], dim=1)[:, : raw[0].shape[1]]  # the same bytes per expert, strided
    with pytest.raises(HymoeError, match="not contiguous"):
        native.NativeExperts(engine, gate, raw[1], raw[2], ("Q8_0",) * 3, H, I)
