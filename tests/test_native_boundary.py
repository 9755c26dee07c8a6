"""The native engine's own checks (issue 24, items 1 and 2): whatever a caller passes through
ctypes, the C side touches no memory outside the buffers it was told of, and a second thread is
refused while another uses the engine, instead of sharing its job and buffers."""
import ctypes
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
import torch

from hymoe.errors import HymoeError
from hymoe.experts import native
from hymoe.experts.native_linear import NativeHeadLinear, NativeLinear, _HeadLinearArgs
from hymoe.quant.formats import qtype, row_bytes
from quant_utils import random_weights

pytestmark = pytest.mark.skipif(native.library() is None, reason="native kernels not built")
E, H, I = 4, 256, 128
SMALL = -4


def experts(engine, fmt="Q8_0"):
    raw = [random_weights(fmt, rows, n, seed=j, experts=E) for j, (rows, n) in enumerate(((I, H), (I, H), (H, I)))]
    return native.NativeExperts(engine, *raw, (fmt,) * 3, H, I)


def start(ex, x, ids, w, out, lens=None):
    """hymoe_moe_start as a careless caller would call it: lengths given, not derived."""
    x_len, pairs_len, out_len = lens or (x.numel(), min(ids.numel(), w.numel()), out.numel())
    lib = ex.engine.lib
    rc = lib.hymoe_moe_start(ex.engine.handle, ex._args_ref, x.shape[0], ids.shape[1], x.data_ptr(), ids.data_ptr(),
                             w.data_ptr(), out.data_ptr(), x_len, pairs_len, out_len, 0)
    lib.hymoe_moe_sync(ex.engine.handle)
    return rc


@pytest.mark.parametrize("lie", ["x", "pairs", "out"])
def test_moe_start_refuses_sizes_its_buffers_cannot_hold(lie):
    ex = experts(native.NativeEngine(2, is_async=False))
    x, ids, w, out = torch.randn(4, H), torch.randint(0, E, (4, 2)), torch.rand(4, 2), torch.empty(4, H)
    assert start(ex, x, ids, w, out) == 0
    lens = {"x": (4 * H - 1, 8, 4 * H), "pairs": (4 * H, 7, 4 * H), "out": (4 * H, 8, H)}[lie]
    assert start(ex, x, ids, w, out, lens) == SMALL


@pytest.mark.parametrize("field, value", [("gate_bytes", -1), ("down_bytes", 10), ("up_stride", 1),
                                          ("num_experts", 0), ("hidden", -256), ("inter", 0)])
def test_moe_start_refuses_experts_outside_their_tensors(field, value):
    """The layer's fields as a corrupted struct would hold them: every expert's rows must lie in
    the bytes given, and sizes must be positive."""
    ex = experts(native.NativeEngine(2, is_async=False))
    setattr(ex._args, field, value)
    x, ids, w, out = torch.randn(2, H), torch.randint(0, E, (2, 2)), torch.rand(2, 2), torch.empty(2, H)
    assert start(ex, x, ids, w, out) in (SMALL, -2)


def test_moe_start_refuses_a_topk_past_its_bound():
    ex = experts(native.NativeEngine(2, is_async=False))
    x, ids, w, out = torch.randn(1, H), torch.zeros(1, 2000, dtype=torch.int64), torch.rand(1, 2000), torch.empty(1, H)
    assert start(ex, x, ids, w, out) == SMALL


@pytest.mark.parametrize("lie", ["w", "x", "out", "n"])
def test_bare_rows_refuses_lengths_short_of_its_sizes(lie):
    lib = native.library()
    w, x, out = random_weights("Q8_0", 8, 256), torch.randn(3, 256), torch.empty(3, 8)
    args = dict(w=w.numel(), x=x.numel(), out=out.numel(), n=256)
    args[lie] = {"w": w.numel() - 1, "x": 3 * 256 - 1, "out": 23, "n": 0}[lie]
    rc = lib.hymoe_rows(int(qtype("Q8_0")), w.data_ptr(), args["w"], 8, args["n"], x.data_ptr(), args["x"], 3,
                        out.data_ptr(), args["out"])
    assert rc == (-1 if lie == "n" else SMALL)


@pytest.mark.parametrize("lie", ["weight", "x", "out"])
def test_linear_refuses_lengths_short_of_its_sizes(lie):
    engine = native.NativeEngine(2, is_async=False)
    w = random_weights("Q8_0", 16, 256)
    lin = NativeLinear(engine, 256, [("Q8_0", 16, w)])
    x, out = torch.randn(2, 256), torch.empty(2, 16)
    x_len, out_len = {"weight": (512, 32), "x": (511, 32), "out": (512, 31)}[lie]
    if lie == "weight":
        lin._args.parts[0].w_bytes = 16 * row_bytes("Q8_0", 256) - 1
    rc = engine.lib.hymoe_linear(engine.handle, lin._args_ref, 2, x.data_ptr(), x_len, out.data_ptr(), out_len)
    assert rc == SMALL


@pytest.mark.parametrize("lie", ["weight", "x", "out", "rows"])
def test_head_linear_refuses_lengths_short_of_its_sizes(lie):
    """The per-head product's C check, past NativeHeadLinear's own: each length one short, or
    more rows a head than the weight holds."""
    engine = native.NativeEngine(2, is_async=False)
    w = random_weights("Q8_0", 4 * 8, 64).reshape(-1)
    call = NativeHeadLinear(engine, "Q8_0", 4, 8, 64, w)
    x, out = torch.randn(2, 4, 64), torch.empty(2, 4, 8)
    a = call._args
    a.num_tokens, a.x, a.x_len, a.out, a.out_len = 2, x.data_ptr(), x.numel(), out.data_ptr(), out.numel()
    if lie == "weight":
        a.w_bytes -= 1
    elif lie == "rows":
        a.rows += 1
    else:
        setattr(a, f"{lie}_len", getattr(a, f"{lie}_len") - 1)
    assert engine.lib.hymoe_head_linear(engine.handle, ctypes.byref(a)) == SMALL


def test_a_second_thread_is_refused_while_a_job_runs():
    """Two threads on one engine used to hang (both driving one pool): the second is told."""
    engine = native.NativeEngine(2, is_async=True)
    e, h, i = 4, 2048, 2048
    raw = [random_weights("F32", r, n, seed=j, experts=e) for j, (r, n) in enumerate(((i, h), (i, h), (h, i)))]
    first = native.NativeExperts(engine, *raw, ("F32",) * 3, h, i)
    second = first.twin()
    x, ids, w = torch.randn(256, h), torch.arange(512).remainder(e).view(256, 2), torch.full((256, 2), 0.5)
    first.submit(x, ids, w)  # far longer than the other thread's call below
    caught = []

    def other():
        try:
            second.submit(x[:1], ids[:1], w[:1])
        except HymoeError as err:
            caught.append(str(err))

    t = threading.Thread(target=other)
    t.start()
    t.join(30)
    assert not t.is_alive() and caught and "another thread" in caught[0]
    assert not first.is_done()
    first.sync()
    second.submit(x[:1], ids[:1], w[:1])  # the job is over: the engine serves whoever asks
    assert second.sync().shape == (1, h)


HAMMER = """
import sys, threading, torch
sys.path.insert(0, "tests")
from hymoe.errors import HymoeError
from hymoe.experts import native
from hymoe.experts.native_linear import NativeLinear
from quant_utils import random_weights
engine = native.NativeEngine(2, is_async=sys.argv[1] == "async")
raw = [random_weights("Q8_0", r, n, seed=j, experts=4) for j, (r, n) in enumerate(((128, 256), (128, 256), (256, 128)))]
lin = NativeLinear(engine, 256, [("Q8_0", 64, random_weights("Q8_0", 64, 256))])
counts = {"ok": 0, "busy": 0}
x, ids, w = torch.randn(8, 256), torch.randint(0, 4, (8, 2)), torch.rand(8, 2)
want = None

def work():
    global want
    ex = native.NativeExperts(engine, *raw, ("Q8_0",) * 3, 256, 128)
    for i in range(300):
        try:
            if i % 3:
                ex.submit(x, ids, w)
                got = ex.sync().clone()
                want = got if want is None else want
                assert torch.equal(got, want)
            else:
                lin(x)
            counts["ok"] += 1
        except HymoeError as err:
            assert "another thread" in str(err), err
            counts["busy"] += 1

threads = [threading.Thread(target=work) for _ in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
print(counts["ok"], counts["busy"])
"""


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_threads_hammering_one_engine_get_results_or_a_refusal(mode):
    """Three threads, 900 calls on one engine: each call computes the right answer or is refused
    in one line; no hang (the timeout), no crash (the exit code)."""
    out = subprocess.run([sys.executable, "-c", HAMMER, mode], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    ok, busy = map(int, out.stdout.split())
    assert ok + busy == 900 and ok > 0


def test_read_gbps_refuses_while_another_thread_holds_the_engine():
    engine = native.NativeEngine(2, is_async=True)
    e, h, i = 4, 2048, 2048
    raw = [random_weights("F32", r, n, seed=j, experts=e) for j, (r, n) in enumerate(((i, h), (i, h), (h, i)))]
    ex = native.NativeExperts(engine, *raw, ("F32",) * 3, h, i)
    ex.submit(torch.randn(256, h), torch.arange(512).remainder(e).view(256, 2), torch.full((256, 2), 0.5))
    caught = []
    t = threading.Thread(target=lambda: caught.append(pytest.raises(HymoeError, engine.read_gbps, torch.empty(1 << 20))))
    t.start()
    t.join(30)
    ex.sync()
    assert caught and "another thread" in str(caught[0].value)
    assert engine.read_gbps(torch.empty(1 << 20)) > 0
    assert ctypes.sizeof(native._MoeArgs) == 8 * 4 + 7 * 8 + 6 * 8  # the C struct's layout, mirrored
    assert ctypes.sizeof(_HeadLinearArgs) == 5 * 4 + 4 + 6 * 8  # HeadLinearArgs: the padding after num_tokens


class _Lying:
    """The library, but hymoe_gqa_attention and hymoe_gqa_attend get one field lessened by one."""

    def __init__(self, lib, field):
        self.lib, self.field = lib, field

    def __getattr__(self, name):
        return getattr(self.lib, name)

    def _lie(self, args_ref):
        args = args_ref._obj
        setattr(args, self.field, getattr(args, self.field) - 1)
        return args_ref

    def hymoe_gqa_attention(self, handle, args_ref):
        return self.lib.hymoe_gqa_attention(handle, self._lie(args_ref))

    def hymoe_gqa_attend(self, handle, args_ref):
        return self.lib.hymoe_gqa_attend(handle, self._lie(args_ref))


def _small_gqa():
    """A native engine and a GQA attention kernel of 4 heads over 2 kv heads of 16, no q/k norms."""
    from hymoe.experts.native_attention import NativeGqaAttention
    engine = native.NativeEngine(2, is_async=False)
    attn = SimpleNamespace(num_heads=4, num_kv_heads=2, head_dim=16, is_qk_norm=False, q_norm=None, k_norm=None,
                           rope=SimpleNamespace(is_interleaved=False))
    return engine, NativeGqaAttention(engine, attn, window=0)


@pytest.mark.parametrize("field", ["q_len", "k_len", "v_len", "rope_len", "cache_len", "out_len", "positions_len",
                                   "slots_len", "table_len"])
def test_attention_refuses_lengths_short_of_its_sizes(field):
    engine, layer = _small_gqa()
    b, t = 2, 3
    table = torch.tensor([[1], [0]])  # [B, M]: one block of 9 positions per row
    step = SimpleNamespace(positions=torch.arange(t).repeat(b, 1), table=table,
                           slots=table * 9 + torch.arange(t), kv_len=t)
    cache = {"k": torch.zeros(b, 9, 2, 16), "v": torch.zeros(b, 9, 2, 16)}
    args = (torch.randn(b, t, 64), torch.randn(b, t, 32), torch.randn(b, t, 32), step, cache,
            (torch.randn(b, t, 8), torch.randn(b, t, 8)))
    assert layer(*args).shape == (b, t, 64)
    layer.engine = SimpleNamespace(lib=_Lying(engine.lib, field), handle=engine.handle)
    with pytest.raises(HymoeError, match="smaller than its sizes"):
        layer(*args)


class _ByPosition:
    """The library, but hymoe_gqa_attention reads its rotation from tables [rows, D/2] by position."""

    def __init__(self, lib, cos, sin, flag):
        self.lib, self.cos, self.sin, self.flag = lib, cos, sin, flag

    def __getattr__(self, name):
        return getattr(self.lib, name)

    def hymoe_gqa_attention(self, handle, args_ref):
        args = args_ref._obj
        args.cos, args.sin, args.rope_len = self.cos.data_ptr(), self.sin.data_ptr(), self.cos.numel()
        args.rope_at_position = self.flag
        return self.lib.hymoe_gqa_attention(handle, args_ref)


@pytest.mark.parametrize("rows, flag, refusal", [(5, 1, None), (4, 1, "smaller than its sizes"),
                                                 (5, 2, r"refused its arguments \(-1")])
def test_attention_reads_a_rotation_table_only_within_its_rows(rows, flag, refusal):
    """rope_at_position (the layer stack's decode steps): cos and sin are tables read at each token's
    position, which gives what per-token rows of the same values give; a position past the table's
    rows (positions 2..4 here) or a flag other than 0 or 1 is refused before any row is read."""
    engine, layer = _small_gqa()
    b, t = 2, 3
    table = torch.tensor([[1], [0]])  # [B, M]: one block of 9 positions per row
    positions = torch.arange(2, 2 + t).repeat(b, 1)
    step = SimpleNamespace(positions=positions, table=table, slots=table * 9 + positions, kv_len=2 + t)
    cos, sin = torch.randn(rows, 8), torch.randn(rows, 8)
    q, k, v = torch.randn(b, t, 64), torch.randn(b, t, 32), torch.randn(b, t, 32)
    fresh = lambda: {"k": torch.zeros(b, 9, 2, 16), "v": torch.zeros(b, 9, 2, 16)}  # noqa: E731
    want = layer(q, k, v, step, fresh(), (cos[positions.clamp(max=rows - 1)], sin[positions.clamp(max=rows - 1)]))
    layer.engine = SimpleNamespace(lib=_ByPosition(engine.lib, cos, sin, flag), handle=engine.handle)
    rotation = (torch.zeros(b, t, 8), torch.zeros(b, t, 8))  # per-token rows the tables replace
    if refusal is None:
        assert torch.equal(layer(q, k, v, step, fresh(), rotation), want)
    else:
        with pytest.raises(HymoeError, match=refusal):
            layer(q, k, v, step, fresh(), rotation)


@pytest.mark.parametrize("field", ["q_len", "q_stride", "cache_len", "out_len", "positions_len", "slots_len",
                                   "table_len"])
def test_latent_attention_refuses_lengths_short_of_its_sizes(field):
    """MLA's attention with prepared queries (hymoe_gqa_attend) checks its own buffers: each length
    one short, or queries not side by side, is refused before any row is read."""
    from hymoe.experts.native_attention import NativeLatentAttention
    from hymoe.kv.cache import Step
    engine = native.NativeEngine(2, is_async=False)
    table = torch.tensor([[1], [0]])  # [B, M]: one block of 8 positions per row
    positions = torch.arange(3).repeat(2, 1)
    step = Step.build(positions, 3, table, table * 8 + positions)
    query, cache = torch.randn(2, 4, 3, 40), torch.randn(2, 8, 40)
    layer = NativeLatentAttention(engine, 4, 32, 8, 0.1)
    assert layer(query, step, cache).shape == (2, 4, 3, 32)
    layer.engine = SimpleNamespace(lib=_Lying(engine.lib, field), handle=engine.handle)
    with pytest.raises(HymoeError):
        layer(query, step, cache)
