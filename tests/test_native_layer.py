"""A decode step's layer in one native call (experts/native_layer.py, csrc/layer.cpp) against the
same layer computed module by module: the same kernels, so the same bits."""
from __future__ import annotations

import pytest
import torch

import hymoe
from hymoe.engine.llm import SamplingParams
from hymoe.errors import HymoeError
from hymoe.experts import native
from hymoe.kv.cache import Step

needs_native = pytest.mark.skipif(native.library() is None, reason="native kernels not built")
PROMPT = [3, 17, 42, 7, 99, 5, 23, 61, 8, 14]


def _decode(llm, native_steps, logprobs: bool = True, stack: bool = True):
    """Tokens and logprobs of two rows: every layer in one call (native_steps and stack), a call a
    layer (native_steps only), or module by module."""
    saved, saved_stack = [layer.native_step for layer in llm.model.layers], llm.model.native_stack
    if not native_steps:
        for layer in llm.model.layers:
            layer.native_step = None
    if not (native_steps and stack):
        llm.model.native_stack = None
    try:
        params = SamplingParams(max_new_tokens=12, is_eos_ignored=True, logprobs=1 if logprobs else None)
        seqs, _ = llm.generate_batch([PROMPT, PROMPT[:6]], params)  # two rows: a batch of 2 a step
    finally:
        for layer, step in zip(llm.model.layers, saved):
            layer.native_step = step
        llm.model.native_stack = saved_stack
    return [(s.token_ids, s.logprobs) for s in seqs]


@needs_native
@pytest.mark.parametrize("name,typ", [("qwen3_moe", "Q8_0"), ("mixtral", "Q8_0")])
def test_native_layer_steps_equal_the_modules(gguf_model, name, typ):
    _, path = gguf_model(name, typ)
    llm = hymoe.load(path, placement="cpu", progress=False)
    assert llm.native_layers == llm.config.num_layers and llm.model.native_stack is not None
    stacked = _decode(llm, True)
    assert stacked == _decode(llm, True, stack=False) == _decode(llm, False)


@needs_native
def test_layers_it_cannot_take_run_module_by_module(gguf_model):
    for name, typ in (("qwen2_moe", "Q8_0"), ("qwen3_moe", "F32")):  # a shared expert; linears in torch
        llm = hymoe.load(gguf_model(name, typ)[1], placement="cpu", progress=False)
        assert llm.native_layers == 0 and llm.model.native_stack is None
    policy = hymoe.load(gguf_model("qwen3_moe", "Q8_0")[1], placement="cpu", progress=False, kv_policy="sink-window:2,4")
    assert policy.native_layers > 0
    assert _decode(policy, True) == _decode(policy, False)  # a retention policy: the modules take each step


@needs_native
def test_stage_clocks_split_a_step_without_changing_it(gguf_model):
    """profile_decode.py's split of a native layer (time_stages): every stage is timed, none is
    counted twice (the stages fit in the step's time) and the tokens are the same."""
    import time

    from hymoe.experts.native_layer import STAGES

    llm = hymoe.load(gguf_model("qwen3_moe", "Q8_0")[1], placement="cpu", progress=False)
    plain = _decode(llm, True)
    layers = [layer.native_step for layer in llm.model.layers]
    for step in layers:
        step.time_stages(True)
    t0 = time.perf_counter_ns()
    assert _decode(llm, True) == plain
    wall = time.perf_counter_ns() - t0
    spent = sum(step.stage_ns for step in layers)  # [5] ns
    assert spent.shape == (len(STAGES),) and bool((spent > 0).all()) and spent.sum().item() < wall
    for step in layers:
        step.time_stages(False)
    assert all(step.stage_ns is None and not step._args.stage_ns for step in layers)


@needs_native
def test_the_layer_stack_refuses_rows_of_another_width(gguf_model):
    llm = hymoe.load(gguf_model("qwen3_moe", "Q8_0")[1], placement="cpu", progress=False)
    runner = llm.runner(1, 16)
    _, positions, table, slots = runner._inputs([0], [[3]], [0])
    step = Step.build(positions, 1, table, slots)
    h = llm.config.hidden_size
    with pytest.raises(HymoeError, match=f"rows of {h} values"):
        llm.model.native_stack(torch.zeros(1, 1, h + 32), step, runner.cache.layers, llm.model.rope)


@needs_native
def test_a_step_reads_its_own_cache_after_another_runner_ran_module_by_module(gguf_model):
    """A long prompt of another runner (module by module: more rows than a native step takes) binds
    the attention kernels to its cache; the next stacked step must rebind them to its own."""
    llm = hymoe.load(gguf_model("qwen3_moe", "Q8_0")[1], placement="cpu", progress=False)
    ref, mine, other = (llm.runner(1, 64) for _ in range(3))
    ref.forward([0], [PROMPT], [0])
    want = ref.forward([0], [[11]], [len(PROMPT)])
    mine.forward([0], [PROMPT], [0])  # its step binds its cache last
    other.forward([0], [[(5 * i) % 97 for i in range(40)]], [0])  # 40 rows: the module path
    assert torch.equal(mine.forward([0], [[11]], [len(PROMPT)]), want)


YARN = dict(kind="yarn", factor=4.0, original_max_position=256)


@pytest.mark.parametrize("rope, dim", [(dict(theta=1e6), 64), (YARN, 64), (dict(theta=1e4), 24)])  # 24: 12 a row
def test_the_rope_table_holds_cos_sin_of_each_position(rope, dim):
    """The layer stack reads a token's rotation from Rope.table at its position: each row is what
    cos_sin gives that position alone (the same bits), and the table grows to cover what is asked."""
    from hymoe.config import RopeConfig
    from hymoe.layers.rope import Rope

    r = Rope(RopeConfig(**rope), dim)
    cos, sin = r.table(10)
    assert cos.shape == sin.shape == (1024, dim // 2) and cos.dtype is torch.float32 and cos.is_contiguous()
    for p in (0, 1, 7, 511, 1023):  # one position a call, as a decode step's cos_sin
        want = r.cos_sin(torch.tensor([[p]]), torch.float32)  # [1, 1, 1, D/2] each
        assert torch.equal(cos[p], want[0][0, 0, 0]) and torch.equal(sin[p], want[1][0, 0, 0]), p
    cos, sin = r.table(1500)
    assert cos.shape[0] == 2048 and torch.equal(cos[1499], r.cos_sin(torch.tensor([[1499]]), torch.float32)[0][0, 0, 0])


@needs_native
def test_stacked_steps_past_the_table_rows_equal_the_modules(gguf_model):
    """Decode steps at positions past the rope table's rows (cut to 64 here): the stack grows it, and
    its tokens and logprobs equal the modules'."""
    llm = hymoe.load(gguf_model("qwen3_moe", "Q8_0")[1], placement="cpu", progress=False)
    rope = llm.model.rope
    prompt = [(7 * i) % 97 + 3 for i in range(100)]
    params = SamplingParams(max_new_tokens=8, is_eos_ignored=True, logprobs=1)
    rope._table = tuple(t[:64].clone() for t in rope.table(1))
    stacked = llm.generate_batch([prompt], params)[0][0]
    assert rope.table(1)[0].shape[0] == 1024
    saved = [layer.native_step for layer in llm.model.layers], llm.model.native_stack
    try:
        llm.model.native_stack = None
        for layer in llm.model.layers:
            layer.native_step = None
        modules = llm.generate_batch([prompt], params)[0][0]
    finally:
        for layer, step in zip(llm.model.layers, saved[0]):
            layer.native_step = step
        llm.model.native_stack = saved[1]
    assert (stacked.token_ids, stacked.logprobs) == (modules.token_ids, modules.logprobs)


def test_decode_ab_turns_the_order_and_keeps_the_settings(gguf_model, capsys):
    """scripts/decode_ab.py: over 2 x variants rounds every variant holds every place once in each
    direction, so no setting sits later (at a longer context) than another; the run prints a ratio
    for each variant and its control (again over the rounds under --split-ms: here all of them), and
    leaves the tuning values as it found them."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import decode_ab

    orders = decode_ab.schedule(3, 6)
    for v in range(3):
        places = [order.index(v) for order in orders]
        assert sorted(places) == [0, 0, 1, 1, 2, 2]
    assert orders[0] == [0, 1, 2] and orders[1] == [2, 1, 0] and orders[2] == [1, 2, 0]
    if native.library() is None:
        pytest.skip("native kernels not built")
    before = native.bench_tune("kq45_groups")
    ratios = decode_ab.main(str(gguf_model("qwen3_moe", "Q8_0")[1]), ["kq45_groups=0", "kq45_groups=1"], 2, 3,
                            context=8, split_ms=1e9)
    assert len(ratios) == 3 and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert native.bench_tune("kq45_groups") == before
    out = capsys.readouterr().out
    assert "kq45_groups=0 (control)" in out and "probe" in out
    assert "rounds under 1e+09 ms (2): kq45_groups=0 1.000" in out and "the rest" not in out


@needs_native
def test_the_head_and_greedy_pick_run_in_the_stack_call(gguf_model):
    """A decode step's logits from the stack's call (the head after the final norm) are the bits of
    the head computed from Python, and Runner.picks is their argmax: the first largest logit, and
    the first NaN where a row's weights give one (as torch.argmax)."""
    llm = hymoe.load(gguf_model("qwen3_moe", "Q8_0")[1], placement="cpu", progress=False)
    stack, head = llm.model.native_stack, llm.model.lm_head
    assert stack.head is head.kernel

    def step(is_stacked):
        stack.head = head.kernel if is_stacked else None
        runner = llm.runner(2, 32)
        runner.forward([0, 1], [PROMPT, PROMPT[:6]], [0, 0])
        return runner.forward([0, 1], [[11], [12]], [len(PROMPT), 6]), runner.picks

    saved = head.qweight.clone()
    try:
        (stacked, picks), (alone, none) = step(True), step(False)
        assert none is None and picks == stacked.argmax(-1).tolist()
        assert torch.equal(stacked, alone)
        head.qweight.zero_()  # every logit 0: the first index, not the last
        assert step(True)[1] == [0, 0]
        block = 2 + 32  # Q8_0: a float16 scale, then 32 int8 weights
        for row in (5, 9):
            head.qweight[row, :block] = 0
            head.qweight[row, :2] = torch.tensor([0x7E00], dtype=torch.int16).view(torch.uint8)  # a NaN scale
        logits, picks = step(True)
        assert logits[:, 5].isnan().all() and picks == logits.argmax(-1).tolist() == [5, 5]
    finally:
        head.qweight.copy_(saved)
        stack.head = head.kernel


@needs_native
def test_a_token_id_outside_the_table_fails_in_one_line(gguf_model):
    """The stack's call looks a decode step's ids up in C: one outside the table is a clear error
    before any layer runs, not a read past the table."""
    llm = hymoe.load(gguf_model("qwen3_moe", "Q8_0")[1], placement="cpu", progress=False)
    runner = llm.runner(1, 32)
    runner.forward([0], [PROMPT], [0])
    vocab = llm.config.vocab_size
    for bad in (vocab, -1):
        with pytest.raises(HymoeError, match=f"outside the embedding's {vocab} rows"):
            runner.forward([0], [[bad]], [len(PROMPT)])
