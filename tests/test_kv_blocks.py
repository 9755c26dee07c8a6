"""Paged KV (kv/cache.py) and its blocks (kv/blocks.py): reads and writes through shuffled block
tables against a contiguous reference, whole models through small blocks against Hugging Face, the
block pool's sharing, eviction and copy-on-write, and the scheduler over a pool that shares prefixes
and runs out."""
import json

import pytest
import torch

import hymoe
from hymoe.engine.sampler import SamplingParams
from hymoe.engine.scheduler import Scheduler
from hymoe.errors import HymoeError
from hymoe.experts import native
from hymoe.kv.blocks import BlockPool
from hymoe.kv.cache import KVCache, Step, slots_of
from hymoe.kv.sizing import parse_kv_memory

GREEDY = SamplingParams(max_new_tokens=10, is_eos_ignored=True)


def test_paged_writes_and_reads_equal_a_contiguous_cache():
    """Three rows of different lengths written in uneven chunks (padding included) through shuffled
    blocks of 5: every read returns what a plain [B, S] buffer holds."""
    gen = torch.Generator().manual_seed(0)
    bs, width, max_len = 5, 6, 30
    buf = torch.zeros(3 * width + 1, bs, 2, 4)  # [blocks + scratch, bs, *entry]
    table = torch.randperm(3 * width, generator=gen).view(3, width)
    ref = torch.zeros(3, max_len, 2, 4)
    lens = [0, 0, 0]
    for chunk in ([7, 3, 1], [1, 9, 13], [4, 1, 1], [11, 0, 2]):
        t = max(chunk)
        positions = torch.full((3, t), max_len)  # padding at max_len: written to the scratch block
        for b, n in enumerate(chunk):
            positions[b, :n] = torch.arange(lens[b], lens[b] + n)
        is_pad = positions >= max_len
        slots = slots_of(positions.masked_fill(is_pad, 0), table, bs).masked_fill(is_pad, 3 * width * bs)
        new = torch.randn(3, t, 2, 4, generator=gen)
        kv_len = max(n + c for n, c in zip(lens, chunk))
        got = KVCache.write_read(buf, new, Step.build(positions, kv_len, table, slots))  # [B, S, 2, 4]
        for b, n in enumerate(chunk):
            ref[b, lens[b]:lens[b] + n] = new[b, :n]
            lens[b] += n
            assert torch.equal(got[b, : lens[b]], ref[b, : lens[b]])
        assert got.shape == (3, kv_len, 2, 4)


def test_the_cpu_layers_buffers_are_zeroed_views_of_one_page_aligned_pool():
    """Every CPU layer's buffers lie in one allocation (on 2 MiB pages where the OS gives them), each
    from a page boundary, zeroed, of its own shape, none overlapping another; writes stay in their own."""
    cache = KVCache([{"k": (2, 8), "v": (2, 8)}, {"latent": (12,)}], 6, 5, torch.float16)
    bufs = [t for layer in cache.layers for t in layer.values()]
    assert [tuple(t.shape) for t in bufs] == [(7, 5, 2, 8), (7, 5, 2, 8), (7, 5, 12)]
    assert all(t.dtype is torch.float16 and t.is_contiguous() and bool((t == 0).all()) for t in bufs)
    base = bufs[0].untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == base for t in bufs)  # one allocation
    assert all((t.data_ptr() - base) % 4096 == 0 for t in bufs)  # (an mmap's base is a page too)
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in bufs)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
    for i, t in enumerate(bufs):
        t.fill_(i + 1)
    assert [int(t.float().mean()) for t in bufs] == [1, 2, 3]
    assert cache.nbytes() == sum(t.numel() * 2 for t in bufs)


@pytest.mark.parametrize("name,backend", [("deepseek_v3", "torch"), ("qwen3_moe", "native"),
                                          ("mixtral_sliding_window", "native"), ("qwen2_moe_sliding_layers", "torch")])
def test_models_through_blocks_of_five_match_transformers(tiny_model, name, backend, monkeypatch):
    """A prompt read 7 tokens per pass into blocks of 5 (so chunks and blocks cross), then greedy
    decoding: Hugging Face's logits and tokens."""
    if backend == "native" and native.library() is None:
        pytest.skip("native kernels not built")
    model_dir, hf = tiny_model(name)
    ours = hymoe.load(model_dir, dtype="float32", progress=False, experts=backend, kv_block_size=5)
    ids = torch.randint(0, 256, (48,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].float()
        want = hf.generate(torch.tensor([ids[:10]]), attention_mask=torch.ones(1, 10, dtype=torch.long),
                           max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)[0, 10:].tolist()
    monkeypatch.setattr(ours, "prefill_chunk", 7)
    assert (ours.logits(ids) - ref).abs().max().item() <= 1e-4
    assert ours.generate(ids[:10], max_new_tokens=24, is_eos_ignored=True) == want


def _fill(pool: BlockPool, row: int, tokens: list[int]) -> None:
    """What the runner does for a pass: blocks for the tokens, then their entries committed."""
    assert pool.prepare(row, 0, len(tokens)) == []
    pool.commit(row, 0, tokens)


def test_full_blocks_are_shared_by_their_prefix():
    pool = BlockPool(12, 5)
    _fill(pool, 0, list(range(23)))  # 4 full blocks and 3 positions
    assert pool.share(1, list(range(20)) + [99]) == 20  # every full block of the prefix
    assert pool.table(1) == pool.table(0)[:4] and [pool.refs[b] for b in pool.table(0)] == [2, 2, 2, 2, 1]
    assert pool.share(2, list(range(20))) == 15  # its last token is computed: the last block with it
    assert pool.share(3, [0, 1, 2, 3, 5] + list(range(5, 20))) == 0  # same later blocks, another prefix
    pool.release(0)
    assert pool.refs[pool.table(1)[0]] == 2 and len(pool.free) == 12 - 4  # the partial block is free again
    assert pool.share(1, list(range(23))) == 20  # a row starting over gives back what it held first


def test_unreferenced_blocks_are_evicted_least_recently_used_and_never_referenced_ones():
    pool = BlockPool(6, 2)
    _fill(pool, 0, [1, 2, 3, 4])  # prompt A: 2 blocks
    _fill(pool, 1, [5, 6, 7, 8])  # prompt B: 2 blocks
    _fill(pool, 2, [9, 9])  # held by a running row
    a, b, held, spare = pool.table(0), pool.table(1), pool.table(2), list(pool.free)
    pool.release(0)
    pool.release(1)  # B released after A: A goes first, and each prompt's tail before its head
    assert list(pool.idle) == [a[1], a[0], b[1], b[0]] and pool.available == 5
    assert pool.reserve(3, 6) and pool.table(3) == spare + [a[1], a[0]]  # the free one, then A's tail and head
    assert pool.share(4, [5, 6, 7, 8, 0]) == 4 and pool.share(5, [1, 2, 3, 4, 0]) == 0  # B kept, A gone
    assert not pool.reserve(6, 2) and pool.table(6) == []  # none left, only referenced ones: refused
    assert pool.table(2) == held and pool.refs[held[0]] == 1


def test_rewriting_a_shared_block_copies_it():
    pool = BlockPool(8, 4)
    _fill(pool, 0, list(range(10)))
    assert pool.share(1, list(range(9))) == 8
    shared = pool.table(0)[1]
    copies = pool.prepare(0, 6, 10)  # row 0 rewrites from position 6, inside a block row 1 reads
    assert copies == [(shared, pool.table(0)[1])] and pool.table(1)[1] == shared != pool.table(0)[1]
    assert pool.refs[shared] == 1 and pool.by_key  # row 1 and the cache still have the original
    with pytest.raises(HymoeError, match="cannot be written from 9"):
        pool.prepare(0, 9, 10)


def test_kv_memory_sizes():
    assert parse_kv_memory("8GiB") == (8 << 30, 0.0) and parse_kv_memory("512MB") == (512 * 10**6, 0.0)
    assert parse_kv_memory("0.5") == (0, 0.5)
    for bad in ("0", "1.5", "-3GiB", "lots"):
        with pytest.raises(HymoeError, match="--kv-memory"):
            parse_kv_memory(bad)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    from hymoe.default_model import ensure_default_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        return hymoe.load(ensure_default_model(), dtype="float32", progress=False, max_context=128, kv_block_size=8)


def _shared(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _alone(llm, prompt, params=GREEDY) -> list[int]:
    return llm.generate(prompt, max_new_tokens=params.max_new_tokens, is_eos_ignored=True)


def test_two_sequences_share_a_prefix_and_one_is_cancelled(llm):
    """B finds A's prompt blocks (each held twice); A is cancelled mid-decode and B still decodes
    what it decodes alone; then C finds them in the cache."""
    head = llm.tokenizer.encode("In the beginning God created the heaven and the earth. And the earth was")
    a_ids, b_ids, c_ids = (head + llm.tokenizer.encode(t) for t in (" without form", " void; and", " dark"))
    sched = Scheduler(llm.runner(2, llm.max_context))
    a, b = llm.sequence(a_ids, SamplingParams(max_new_tokens=40, is_eos_ignored=True)), llm.sequence(b_ids, GREEDY)
    sched.add(a)
    sched.step()  # A's prompt read, its full blocks registered
    sched.add(b)
    sched.step()
    shared = min(_shared(a_ids, b_ids), len(b_ids) - 1) // 8
    assert b.reused == shared * 8 > 0 and sched.blocks.table(b.slot)[:shared] == sched.blocks.table(a.slot)[:shared]
    assert all(sched.blocks.refs[blk] == 2 for blk in sched.blocks.table(a.slot)[:shared])
    a.cancel()
    sched.step()
    assert a not in sched.running and all(sched.blocks.refs[blk] == 1 for blk in sched.blocks.table(b.slot)[:shared])
    sched.run()
    assert b.token_ids == _alone(llm, b_ids)
    c = llm.sequence(c_ids, GREEDY)
    sched.add(c)
    sched.run()
    assert c.reused >= shared * 8 and c.token_ids == _alone(llm, c_ids)
    assert not any(sched.blocks.refs) and sorted(sched.free) == [0, 1]


def test_a_full_pool_ends_sequences_and_refuses_prompts_without_crashing(llm):
    """Six blocks of 8 for two sequences: decoding stops at "length" when no block is left (the
    tokens so far are those decoded alone); a prompt the pool can never hold fails alone; one that
    fits once others end waits."""
    prompts = [llm.tokenizer.encode(t) for t in ("And God said unto Moses,", "The Lord is my shepherd;")]
    sched = Scheduler(llm.runner(2, llm.max_context, num_blocks=6))
    long_params = SamplingParams(max_new_tokens=60, is_eos_ignored=True)
    seqs = [llm.sequence(p, long_params) for p in prompts]
    huge = llm.sequence(list(range(1, 60)), GREEDY)
    later = llm.sequence(list(range(1, 20)), GREEDY)
    for s in seqs + [huge, later]:
        sched.add(s)
    sched.run()
    assert {s.finish_reason for s in seqs} == {"length"}
    assert all(len(s.token_ids) < 60 and len(s.prompt) + len(s.token_ids) - 1 <= 6 * 8 for s in seqs)
    for s in seqs:
        assert s.token_ids == _alone(llm, s.prompt, long_params)[: len(s.token_ids)]
    assert huge.finish_reason == "error" and not huge.token_ids
    assert later.finish_reason == "length" and later.token_ids == _alone(llm, later.prompt)[: len(later.token_ids)]
    assert not any(sched.blocks.refs) and sorted(sched.free) == [0, 1]


def test_kv_memory_sizes_the_pool_of_servers_and_chats(llm, monkeypatch):
    import dataclasses

    per_block = 8 * KVCache.position_bytes(llm.model.cache_entries(), llm.kv_dtype)
    monkeypatch.setattr(llm, "options", dataclasses.replace(llm.options, kv_memory="64KiB"))
    runner = llm.pool_runner(4)
    assert runner.blocks.num_blocks == (64 << 10) // per_block and runner.max_len == llm.max_context
    assert runner.cache.nbytes() == (runner.blocks.num_blocks + 1) * per_block
    monkeypatch.setattr(llm, "options", dataclasses.replace(llm.options, kv_memory="1KB"))
    with pytest.raises(HymoeError, match="holds no KV block"):
        llm.pool_runner(4)


def test_inspect_prices_a_position_of_kv():
    """The demo model (MLA) keeps one latent of kv_lora_rank + rope dims per layer and position."""
    from hymoe.config import from_hf_dict
    from hymoe.default_model import ensure_default_model
    from hymoe.inspect import inspect_model, report

    d = inspect_model(ensure_default_model(), "cpu", "float32")
    cfg = from_hf_dict(json.loads((ensure_default_model() / "config.json").read_text()))
    per = (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * cfg.num_layers * 4
    assert d["kv_position_bytes"] == per and d["kv_positions_per_gib"] == 2**30 // per
    assert f"{2**30 // per:,} positions per GiB" in report(d)


def test_a_pool_the_os_will_not_map_is_a_clear_error(monkeypatch):
    import errno

    from hymoe.errors import HymoeError
    from hymoe.kv import cache

    def refuse(nbytes):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(cache, "host_bytes", refuse)
    with pytest.raises(HymoeError, match=r"KV pool's .* GiB cannot be mapped: Cannot allocate memory"):
        KVCache([{"k": (2, 8), "v": (2, 8)}], 6, 5, torch.float16)
