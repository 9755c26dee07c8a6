"""Every expert backend and wrapper against the contract in hymoe/experts/base.py, with a per-token
torch loop on the same (dequantized) weights as the reference: ids of -1 add nothing, all -1 gives
zeros, compute() is submit() + sync(), a twin computes the same while the original has a job in flight."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf.quants import quantize

from hymoe import errors
from hymoe.experts import native
from hymoe.experts.base import ExpertBackend, NotCapturable, StoredWeights, cpu_part
from hymoe.experts.counting import CountingExperts
from hymoe.experts.deferral import DeferralChain, DeferredExperts
from hymoe.experts.dequant_backend import DequantExperts
from hymoe.experts.gpu_prefill import GpuPrefillExperts
from hymoe.experts.split import SplitExperts
from hymoe.experts.torch_backend import TorchExperts
from hymoe.quant.formats import NATIVE_FORMATS, qtype
from test_lowbit_kernels import LOWBIT
from quant_utils import dequant, random_weights

E, H, I, K, T = 8, 256, 256, 4, 20  # T = 20: past the native kernels' tile threshold on most experts
HOT = [2, E - 1]  # the last expert among them: an id of -1 must not index it
GPU = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the CPU stands in, as in placement
HAS_NATIVE = native.library() is not None
# error bound relative to the largest output: the native kernels quantize activations (test_native_moe.py)
BOUND = {"F32": 1e-5, "F16": 1e-5, "BF16": 0.01, "Q8_0": 0.02, "Q4_0": 0.02, "Q4_K": 0.04, "Q5_K": 0.04,
         "Q6_K": 0.04, "IQ1_S": 0.03, "TQ2_0": 0.03, "TQ1_0": 0.03,
         **dict.fromkeys(LOWBIT, 0.02),  # activations per 32 (csrc/lowbit.h)
         "Q2_K": 0.04, "Q3_K": 0.04}  # but per 256, as the other K-quants


@functools.lru_cache(maxsize=None)
def weights(fmt: str):
    """(raw uint8 [E, rows * row_bytes] each, dense float32 gate/up [E, I, H] and down [E, H, I])."""
    raw = []
    for j, (rows, n) in enumerate(((I, H), (I, H), (H, I))):
        if fmt in NATIVE_FORMATS:
            raw.append(random_weights(fmt, rows, n, seed=j, experts=E, is_centered=True).reshape(E, -1))
        else:  # a format the native kernels lack: gguf-py quantizes it
            w = np.random.default_rng(j).standard_normal((E * rows, n)).astype(np.float32) * 0.05
            raw.append(torch.from_numpy(np.ascontiguousarray(quantize(w, qtype(fmt)))).reshape(E, -1))
    dense = [dequant(fmt, w.reshape(E, rows, -1), n) for w, (rows, n) in zip(raw, ((I, H), (I, H), (H, I)))]
    return raw, dense


@functools.lru_cache(maxsize=None)
def engine(is_async: bool):
    return native.NativeEngine(2, is_async=is_async)


@dataclass
class Case:
    backend: ExpertBackend
    dense: list  # the reference's weights
    bound: float
    finish: Callable = lambda out: out  # what completes a result (deferral: the job left to the next layer)
    is_concurrent_twin: bool = True


def _native(fmt: str, is_async: bool = True) -> ExpertBackend:
    raw, _ = weights(fmt)
    return native.NativeExperts(engine(is_async), *raw, (fmt,) * 3, H, I)


def _torch(fmt: str = "F32") -> TorchExperts:
    return TorchExperts(*weights(fmt)[1])


def _split(inner: ExpertBackend, fmt: str) -> SplitExperts:
    gate, up, down = (w[torch.tensor(HOT)] for w in weights(fmt)[1])
    return SplitExperts(inner, TorchExperts(gate, up, down).to(GPU), HOT, E)


def _deferred(inner: ExpertBackend, dense, bound) -> Case:
    chain = DeferralChain()
    backend = DeferredExperts(inner, chain, 1, is_first=False, is_last=False)
    return Case(backend, dense, bound, finish=lambda out: out + chain.take(), is_concurrent_twin=False)


def _prefill(inner: ExpertBackend, threshold: int) -> GpuPrefillExperts:
    wrapped = GpuPrefillExperts(inner, GPU, threshold, torch.float32)
    wrapped.chunk = 3  # several chunks of experts, the last one short
    return wrapped


def _cases() -> dict[str, Callable[[], Case]]:
    q8 = lambda: weights("Q8_0")[1]  # noqa: E731
    f32 = lambda: weights("F32")[1]  # noqa: E731
    cases = {
        "torch": lambda: Case(_torch(), f32(), 1e-5),
        "dequant-Q8_0": lambda: Case(DequantExperts(*weights("Q8_0")[0], ("Q8_0",) * 3, H, I), q8(), 1e-5),
        "dequant-Q5_0": lambda: Case(DequantExperts(*weights("Q5_0")[0], ("Q5_0",) * 3, H, I), weights("Q5_0")[1],
                                     1e-5),
        "split(torch)": lambda: Case(_split(_torch(), "F32"), f32(), 1e-5),
        "deferred(torch)": lambda: _deferred(_torch(), f32(), 1e-5),
        "counting(torch)": lambda: Case(CountingExperts(_torch(), E), f32(), 1e-5),
    }
    if HAS_NATIVE:
        cases.update({f"native-{f}": functools.partial(lambda f: Case(_native(f), weights(f)[1], BOUND[f]), f)
                      for f in NATIVE_FORMATS})
        cases.update({
            "native-Q8_0-in-caller": lambda: Case(_native("Q8_0", is_async=False), q8(), BOUND["Q8_0"]),
            "split(native)": lambda: Case(_split(_native("Q8_0"), "Q8_0"), q8(), BOUND["Q8_0"]),
            "deferred(native)": lambda: _deferred(_native("Q8_0"), q8(), BOUND["Q8_0"]),
            "gpu_prefill(native), streamed": lambda: Case(_prefill(_native("Q8_0"), 1), q8(), 1e-5),
            "gpu_prefill(native), on the CPU": lambda: Case(_prefill(_native("Q8_0"), 10**9), q8(), BOUND["Q8_0"]),
            "deferred(split(gpu_prefill(native)))": lambda: _deferred(
                _split(_prefill(_native("Q8_0"), 10**9), "Q8_0"), q8(), BOUND["Q8_0"]),
        })
    return cases


CASES = _cases()


@pytest.fixture(autouse=True)
def _said_once_stays_unsaid(monkeypatch):
    """The dequantizing path says once per process that it runs: leave that to the test that checks it."""
    monkeypatch.setattr(errors, "_said", set(errors._said))


@pytest.fixture(params=list(CASES))
def case(request) -> Case:
    return CASES[request.param]()


def reference(x, ids, w, gate, up, down) -> torch.Tensor:
    """One token and slot at a time; ids of -1 are skipped."""
    out = torch.zeros(x.shape[0], down.shape[1])
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            if e >= 0:
                out[t] += w[t, j] * (down[e] @ (F.silu(gate[e] @ x[t]) * (up[e] @ x[t])))
    return out


def inputs(tokens: int, seed: int, masked: float = 0.0):
    """hidden [T, H], ids [T, K] (distinct per token; a share `masked` of the pairs set to -1), weights [T, K]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, H, generator=g)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(tokens)])
    ids = ids.masked_fill(torch.rand(tokens, K, generator=g) < masked, -1)
    return x, ids, torch.rand(tokens, K, generator=g)


def run(case: Case, x, ids, w, is_compute: bool = False) -> torch.Tensor:
    b = case.backend
    if is_compute:
        out = b.compute(x, ids, w)
    else:
        b.submit(x, ids, w)
        out = b.sync()
    assert out.shape == x.shape and out.dtype == torch.float32 and out.device == x.device
    return case.finish(out.clone())  # clone: the contract lets a backend reuse its result buffer


def rel_err(got, want) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("tokens", [1, T])
def test_matches_the_reference(case, tokens):
    x, ids, w = inputs(tokens, seed=tokens)
    assert rel_err(run(case, x, ids, w), reference(x, ids, w, *case.dense)) < case.bound


def test_ids_of_minus_one_add_nothing(case):
    x, ids, w = inputs(T, seed=5, masked=0.4)
    ids[3] = -1  # one token computed wholly elsewhere
    assert (ids == -1).any(dim=1).sum() > T // 2
    got = run(case, x, ids, w)
    assert rel_err(got, reference(x, ids, w, *case.dense)) < case.bound
    assert torch.equal(got[3], torch.zeros(H))


def test_all_minus_one_gives_zeros(case):
    x, ids, w = inputs(T, seed=6)
    assert torch.equal(run(case, x, torch.full_like(ids, -1), w), torch.zeros(T, H))


def test_compute_is_submit_then_sync(case):
    x, ids, w = inputs(T, seed=7, masked=0.2)
    assert rel_err(run(case, x, ids, w, is_compute=True), run(case, x, ids, w)) < 1e-6


def test_a_twin_computes_the_same_beside_the_original(case):
    x1, ids1, w1 = inputs(T, seed=8, masked=0.2)
    x2, ids2, w2 = inputs(T - 3, seed=9, masked=0.2)
    twin = Case(case.backend.twin(), case.dense, case.bound, case.finish)
    if case.is_concurrent_twin:  # both jobs in flight at once
        case.backend.submit(x1, ids1, w1)
        twin.backend.submit(x2, ids2, w2)
        got1, got2 = (c.finish(c.backend.sync().clone()) for c in (case, twin))
    else:  # deferral: a layer's twin shares its chain, so the two run one after the other
        got1, got2 = run(case, x1, ids1, w1), run(twin, x2, ids2, w2)
    assert rel_err(got1, reference(x1, ids1, w1, *case.dense)) < case.bound
    assert rel_err(got2, reference(x2, ids2, w2, *case.dense)) < case.bound


def test_label_bytes_stored_weights_and_capture(case):
    b = case.backend
    inner = cpu_part(b)
    assert isinstance(b.label, str) and b.label not in ("", "?")
    assert b.nbytes() >= inner.nbytes() > 0
    stored = b.stored_weights()
    assert stored is None if isinstance(inner, TorchExperts) else isinstance(stored, StoredWeights)
    if stored is not None:
        assert stored.num_experts == E and stored.nbytes() == inner.nbytes()
    if type(b) is native.NativeExperts:  # the one backend CUDA graphs capture: its engine's host calls
        assert b.graph_engine() is b.engine and b.engine.capture is None
    else:
        with pytest.raises(NotCapturable, match=r"\w"):
            b.graph_engine()
