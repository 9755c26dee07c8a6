"""Randomized calls into every native entry point, run by tests/test_fuzz_native.py in a
subprocess: `python tests/fuzz_native_worker.py CLASS SEED N`. Before each case it prints
`case I`, then `ok` (a result equal to the reference), or `refused: <one line>` (a HymoeError);
anything else is an uncaught exception (a traceback) or a signal, which the parent reports with
the case number to rerun."""
import functools
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).parent))
from hymoe.errors import HymoeError  # noqa: E402
from hymoe.experts import native  # noqa: E402
from hymoe.experts.native_attention import NativeGqaAttention  # noqa: E402
from hymoe.experts.native_linear import NativeLinear, NativeRMSNorm  # noqa: E402
from hymoe.experts.torch_backend import TorchExperts  # noqa: E402
from hymoe.quant.formats import qtype, row_bytes  # noqa: E402
from fuzz_cases import run_cases  # noqa: E402
from quant_utils import dequant, random_weights  # noqa: E402

E, H, I, FMT = 4, 256, 128, "Q8_0"
DTYPES = [torch.float32, torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
          torch.bool, torch.complex64, torch.uint8]


def tensor(r: random.Random, shape, dtype=torch.float32, low=-3.0, high=3.0, calm=1.0):
    """A tensor of this shape, or (one time in three, or in 3 x calm) of another shape, dtype or
    layout, or with non-finite values."""
    shape = list(shape)
    roll = r.random() * calm
    if roll < 0.08 and shape:
        shape[r.randrange(len(shape))] = r.choice([0, 1, 2, 3, 7, 255, 257, 512])
    elif roll < 0.12:
        shape = shape[:-1] if r.random() < 0.5 else [2] + shape
    elif roll < 0.18:
        dtype = r.choice(DTYPES)
    t = (torch.rand(shape) * (high - low) + low)
    t = t.round().to(dtype) if not dtype.is_floating_point and not dtype.is_complex else t.to(dtype)
    if 0.18 <= roll < 0.24 and t.dim() >= 1 and t.shape[-1] > 1:
        t = torch.cat([t, t], dim=-1)[..., ::2]  # strided: same shape, not contiguous
    elif 0.24 <= roll < 0.28 and t.is_floating_point() and t.numel():
        t.view(-1)[r.randrange(t.numel())] = r.choice([float("nan"), float("inf"), -float("inf"), 1e30])
    elif 0.28 <= roll < 0.31 and t.dim() == 2:
        t = t.t()  # transposed view
    return t


class Cases:
    def __init__(self, seed: int):
        self.r = random.Random(seed)
        torch.manual_seed(seed)
        self.sync_engine = native.NativeEngine(2, is_async=False)
        self.async_engine = native.NativeEngine(2, is_async=True)
        self.raw = [random_weights(FMT, rows, n, seed=j, experts=E, is_centered=True)
                    for j, (rows, n) in enumerate(((I, H), (I, H), (H, I)))]
        self.ref = TorchExperts(*[dequant(FMT, w, n) for w, n in zip(self.raw, (H, H, I))])

    def experts(self):
        r = self.r
        engine = r.choice([self.sync_engine, self.async_engine])
        ex = native.NativeExperts(engine, *self.raw, (FMT,) * 3, H, I)
        t, k = r.choice([0, 1, 2, 5, 33]), r.choice([1, 2, 4])
        x = tensor(r, (t, H))
        ids = tensor(r, (t, k), torch.int64, -1.4, E - 0.6 + (2 if r.random() < 0.1 else 0))
        w = tensor(r, (t, k), torch.float32, 0, 1)
        ex.submit(x, ids, w)
        got = ex.sync()
        want = self.ref.compute(x.float(), ids.long(), w.float())
        scale = want.abs().max().item() if want.numel() else 0.0
        if want.isfinite().all() and scale > 0:
            assert ((got - want).abs().max() / scale).item() < 0.05, "experts disagree with the reference"

    def rows(self):
        r = self.r
        n = r.choice([32, 256, 256, 288, 0, 100])
        w = tensor(r, (r.choice([0, 1, 8]), row_bytes(FMT, max(n, 32))), torch.uint8, 0, 255)
        x = tensor(r, (r.choice([1, 3]), n))
        got = native.rows(FMT, w, x)
        dense = dequant(FMT, w.contiguous(), x.shape[1])
        want, scale = x.float() @ dense.T, x.float().abs() @ dense.abs().T  # scale: the terms' size
        if want.isfinite().all() and want.numel() and scale.max() > 0:
            assert ((got - want).abs().max() / scale.max()).item() < 0.02, "rows disagree with gguf-py"

    def linear(self):
        r = self.r
        n = r.choice([256, 256, 64, 96])
        parts = [(r.choice([FMT, "F32", "Q4_K", "F16"]), r.choice([1, 16, 32]), None) for _ in range(r.choice([1, 2, 5]))]
        weights = []
        for fmt, rows, _ in parts:
            nb = row_bytes(fmt, n) if n % (256 if fmt == "Q4_K" else 32) == 0 else 7
            weights.append((fmt, rows, tensor(r, (rows * nb,), torch.uint8, 0, 255)))
        lin = NativeLinear(self.sync_engine, n, weights)
        lin(tensor(r, (r.choice([1, 4]), n)))

    def norm(self):
        r = self.r
        n = r.choice([64, 256])
        norm = NativeRMSNorm(self.sync_engine.lib, tensor(r, (n,)), 1e-6)
        x = tensor(r, (r.choice([1, 3]), n))
        got = norm(x)
        want = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
        if want.isfinite().all():
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)

    def attention(self):
        r = self.r
        # a call takes twelve tensors: each is mutated less often, so that valid calls occur too
        tensor = functools.partial(globals()["tensor"], calm=4.0)

        heads, kv, d = r.choice([(4, 2, 16), (8, 2, 64)])  # the second: attend.h's grouped path
        attn = SimpleNamespace(num_heads=heads, num_kv_heads=kv, head_dim=d, is_qk_norm=False, q_norm=None,
                               k_norm=None, rope=SimpleNamespace(is_interleaved=False))
        layer = NativeGqaAttention(self.sync_engine, attn, window=r.choice([0, 0, 3]))
        b, t, blocks, bs, width = r.choice([1, 2]), r.choice([1, 3]), 4, 5, r.choice([2, 4])
        positions = tensor(r, (b, t), torch.int64, -2, width * bs + 2)
        step = SimpleNamespace(positions=positions, table=tensor(r, (b, width), torch.int64, -1, blocks + 1),
                               slots=tensor(r, (b, t), torch.int64, -2, blocks * bs + 2),
                               kv_len=r.choice([1, 4, width * bs, width * bs + 3, 0]))
        cache_dtype = r.choice([torch.float32, torch.float16, torch.bfloat16])
        cache = {"k": tensor(r, (blocks, bs, kv, d), cache_dtype), "v": None}
        cache["v"] = torch.zeros_like(cache["k"]) if r.random() < 0.9 else tensor(r, (blocks, bs - 1, kv, d))
        cos_sin = tuple(tensor(r, (b, t, d // 2)) for _ in range(2))
        layer(tensor(r, (b, t, heads * d)), tensor(r, (b, t, kv * d)), tensor(r, (b, t, kv * d)), step, cache, cos_sin)

    def raw_calls(self):
        """The C side alone: real buffers, sizes and lengths as a careless caller might pass them.
        0 only where the lengths cover the sizes."""
        r = self.r
        lib = self.sync_engine.lib
        t, k = r.choice([0, 1, 3]), r.choice([1, 2])
        x, ids, w, out = torch.randn(t, H), torch.randint(0, E, (t, k)), torch.rand(t, k), torch.empty(t, H)
        lens = [x.numel(), ids.numel(), out.numel()]
        i = r.randrange(4)
        if i < 3:
            lens[i] = r.choice([0, lens[i] - 1, -5])
        ex = native.NativeExperts(self.sync_engine, *self.raw, (FMT,) * 3, H, I)
        rc = lib.hymoe_moe_start(self.sync_engine.handle, ex._args_ref, t, k, x.data_ptr(), ids.data_ptr(),
                                 w.data_ptr(), out.data_ptr(), *lens, 0)
        fits = lens[0] >= t * H and lens[1] >= t * k and lens[2] >= t * H
        assert (rc == 0) == fits, f"moe_start gave {rc} for lengths {lens}, sizes {t}x{k}"
        wt = random_weights(FMT, 4, 256)
        nrows, n, ntok = r.choice([0, 4, 5]), r.choice([256, 0, -32]), r.choice([0, 2, -1])
        xr, outr = torch.randn(2, 256), torch.empty(2, 4)
        rc = lib.hymoe_rows(int(qtype(FMT)), wt.data_ptr(), wt.numel(), nrows, n, xr.data_ptr(), xr.numel(), ntok,
                            outr.data_ptr(), outr.numel())
        fits = n > 0 and 0 <= nrows <= 4 and 0 <= ntok <= 2
        assert (rc == 0) == fits, f"rows gave {rc} for {nrows} rows of {n}, {ntok} tokens"
        if rc:
            raise HymoeError(f"refused by the C side ({rc})")


def main():
    kind, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    run_cases(count, getattr(Cases(seed), kind))


if __name__ == "__main__":
    main()
