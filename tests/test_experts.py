"""The torch expert backend against a per-token dense reference."""
import pytest
import torch
import torch.nn.functional as F

from hymoe.experts.torch_backend import TorchExperts


def reference(x, ids, w, gate, up, down):
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = ids[t, j]
            out[t] += w[t, j] * (down[e] @ (F.silu(gate[e] @ x[t]) * (up[e] @ x[t])))
    return out


@pytest.mark.parametrize("tokens, k", [(1, 1), (3, 2), (17, 8), (40, 4)])
def test_grouped_experts_match_reference(tokens, k):
    g = torch.Generator().manual_seed(tokens * 10 + k)
    e, h, i = 12, 32, 24
    gate, up = torch.randn(e, i, h, generator=g), torch.randn(e, i, h, generator=g)
    down = torch.randn(e, h, i, generator=g)
    x = torch.randn(tokens, h, generator=g)
    # only the first 9 experts are used: the others receive no token
    ids = torch.stack([torch.randperm(9, generator=g)[:k] for _ in range(tokens)])
    w = torch.rand(tokens, k, generator=g)
    backend = TorchExperts(gate, up, down)
    backend.submit(x, ids, w)
    got = backend.sync()
    assert torch.allclose(got, reference(x, ids, w, gate, up, down), rtol=1e-4, atol=1e-3)


def _huge_kb_at(address: int) -> int:
    """AnonHugePages of the mapping holding address, from /proc/self/smaps."""
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1])
    return 0


def test_host_memory_holds_the_bytes_in_large_pages():
    from hymoe.host_memory import LARGE_PAGE, host_bytes, host_copy, large_pages_offered

    t = torch.randn(3, 5, 7).bfloat16()
    c = host_copy(t)
    assert c.dtype == t.dtype and c.shape == t.shape and torch.equal(c, t)
    z = host_bytes(1000)
    assert z.numel() == 1000 and int(z.sum()) == 0
    big = host_bytes(64 << 20).fill_(1)
    # each mapping starts on a 2 MiB boundary: large pages back only the 2 MiB ranges it wholly covers
    assert all(b.data_ptr() % LARGE_PAGE == 0 for b in (z, big, host_bytes(5 << 20)))
    if not large_pages_offered():
        pytest.skip("this kernel offers no transparent huge pages")
    assert _huge_kb_at(big.data_ptr()) >= 2048, "expert memory came back in 4 KiB pages"
