"""The native MoE layer against llama.cpp's own MoE graph (ggml's mul_mat_id kernels) on the same
GGUF blocks: an independent implementation of the same layer, and the peer `hymoe bench experts
--backend llama.cpp` times."""
import pytest
import torch
import torch.nn.functional as F
from quant_utils import dequant

from hymoe.experts import native

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.skipif(native.library() is None, reason="native kernels not built")

E, H, I, K = 8, 512, 256, 4
# Relative to the largest output. Where both quantize activations alike (ggml's Q8_K per 256 for
# the K-quants, TQ2_0 and TQ1_0, as hymoe; bf16 for BF16; none for F32) only float rounding
# separates the two. Elsewhere the activation steps differ: ggml's Q8_0 blocks carry an fp16 scale
# (hymoe: f32), F16 weights take fp16 activations there, IQ1_S takes Q8_K (hymoe: blocks of 32).
# Q2_K, Q3_K and IQ4_XS take per-256 activations as ggml's Q8_K (csrc/lowbit.h: kAct256): float rounding.
# The other low-bit and older formats take int8 activations per 32 here (csrc/lowbit.h): against
# ggml's Q8_0/Q8_1 (Q4_1, Q5_0, Q5_1, IQ4_NL) the fp16 scale differs, as for Q4_0; against its Q8_K
# (the others) one scale per 256 as for IQ1_S.
BOUND = {"Q4_K": 1e-5, "Q5_K": 1e-5, "Q6_K": 1e-5, "TQ2_0": 1e-5, "TQ1_0": 1e-5, "BF16": 1e-5, "F32": 1e-5,
         "Q2_K": 1e-5, "Q3_K": 1e-5, "IQ4_XS": 1e-5,
         "F16": 2e-3, "Q8_0": 0.01, "Q4_0": 0.01, "IQ1_S": 0.05,
         "Q4_1": 0.01, "Q5_0": 0.01, "Q5_1": 0.01, "IQ4_NL": 0.01,
         "IQ2_XXS": 0.05, "IQ2_XS": 0.05, "IQ2_S": 0.05,
         "IQ3_XXS": 0.05, "IQ3_S": 0.05, "IQ1_M": 0.05}


# Where only rounding separates the two, it still reaches the down projection through its input
# h = silu(g) * u, which both round alike before it: to int8 per 256 (ggml's Q8_K, as hymoe) or to
# bf16. A float rounding difference in g or u moves an element of h that lies at a rounding tie to
# the neighbouring step (about one element in 10,000 here; any change of summation order moves
# which). That token's difference is then exactly one step times one column of one expert's down
# weights, and what remains after it must be float rounding again.
def h_steps(fmt: str, h: torch.Tensor) -> torch.Tensor | None:
    """[I]: the step of each element of h as the down projection reads it (None: not rounded alike)"""
    if fmt in ("Q4_K", "Q5_K", "Q6_K", "TQ2_0", "TQ1_0", "Q2_K", "Q3_K", "IQ4_XS"):
        return (h.abs().max() / 127).expand_as(h)  # Q8_K: the block's largest / 127
    if fmt == "BF16":
        return torch.exp2(torch.floor(torch.log2(h.abs())) - 7)  # bf16 keeps 8 significant bits
    return None


def is_one_step(diff, x, experts, weights, raw, fmt, bound) -> bool:
    """diff [H]: one token's difference, explained by one step of one element of h (see h_steps)?"""
    for e, w in zip(experts.tolist(), weights.tolist()):
        gate, up, down = (dequant(fmt, raw[j][e].view(rows, -1), n).double()
                          for j, (rows, n) in enumerate(((I, H), (I, H), (H, I))))
        steps = h_steps(fmt, F.silu(gate @ x) * (up @ x))
        if steps is None:
            return False
        v = down * w                                 # [H, I]: the output per unit of h_j
        c = (diff @ v) / (v * v).sum(0)              # [I]: the best multiple of each column
        rest = (diff[:, None] - v * c).abs().max(0).values
        j = rest.argmin()
        if rest[j] < bound and 0.9 < abs(c[j] / steps[j]) < 1.1:
            return True
    return False


@pytest.mark.parametrize("fmt", list(BOUND))
@pytest.mark.parametrize("tokens", [1, 9, 23])
def test_native_layer_matches_llama_cpp_graph(fmt, tokens):
    from hymoe.bench.experts import random_experts
    from hymoe.bench.llama_peer import LlamaCppExperts

    raw = [random_experts(fmt, E, rows, n, 20 + j) for j, (rows, n) in enumerate(((I, H), (I, H), (H, I)))]
    peer = LlamaCppExperts(fmt, E, H, I, 2, lambda dst, j: dst.__setitem__(slice(None), raw[j].reshape(-1).numpy()))
    ours = native.NativeExperts(native.NativeEngine(2, is_async=False), *raw, (fmt,) * 3, H, I)
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, H, generator=g)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(tokens)])
    w = torch.rand(tokens, K, generator=g)
    peer.submit(x, ids, w)
    want = peer.sync().clone()
    ours.submit(x, ids, w)
    got = ours.sync()
    bound = BOUND[fmt] * want.abs().max().item()
    for t in range(tokens):
        diff = (want[t] - got[t]).double()
        if diff.abs().max() >= bound:
            assert is_one_step(diff, x[t].double(), ids[t], w[t], raw, fmt, bound), t
