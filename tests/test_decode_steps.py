"""Greedy decode steps several to one native call (engine/decode_steps.py): the same tokens as one
step at a time, and only where they may be taken."""
from __future__ import annotations

import pytest

import hymoe
from hymoe.engine import decode_steps
from hymoe.engine.runner import Runner
from hymoe.engine.sampler import SamplingParams
from hymoe.engine.scheduler import Scheduler
from hymoe.errors import HymoeError
from hymoe.experts import native

pytestmark = pytest.mark.skipif(native.library() is None, reason="native kernels not built")
PROMPTS = [[3, 17, 42, 7, 99, 5, 23, 61, 8, 14], [3, 17, 42, 7, 99]]


@pytest.fixture(scope="module")
def llm(gguf_model):
    # blocks of 8 positions: a call's steps cross blocks, whose slots the C side finds in the tables
    return hymoe.load(gguf_model("qwen3_moe", "Q8_0")[1], placement="cpu", progress=False, kv_block_size=8)


def _tokens(llm, monkeypatch, steps: int, params: SamplingParams) -> list[list[int]]:
    monkeypatch.setattr(decode_steps, "DECODE_STEPS", steps)
    return [s.token_ids for s in llm.generate_batch(PROMPTS, params)[0]]


def test_steps_in_one_call_give_the_tokens_of_one_step_at_a_time(llm, monkeypatch):
    """Two rows at different positions, 11 tokens each: two from the engine step that reads the
    prompts (its pass, then a decode step), two calls of 4 steps, and one step for the last token."""
    calls = []
    real = Runner.decode_steps
    monkeypatch.setattr(Runner, "decode_steps", lambda self, *a: calls.append(a[-1]) or real(self, *a))
    params = SamplingParams(max_new_tokens=11, is_eos_ignored=True)
    alone = _tokens(llm, monkeypatch, 1, params)
    assert not calls and all(len(t) == 11 for t in alone)
    assert _tokens(llm, monkeypatch, 4, params) == alone
    assert calls == [4, 4]


def test_a_row_that_ends_inside_a_call_takes_no_token_after_its_end(llm, monkeypatch):
    """Row 0 meets an EOS (its 5th greedy token, made one) at the second of a call's four steps (its
    3rd to 6th tokens): it ends there as it does step by step, taking none of the call's later
    picks, while row 1 goes on to its length limit."""
    free = _tokens(llm, monkeypatch, 1, SamplingParams(max_new_tokens=11, is_eos_ignored=True))
    params = SamplingParams(max_new_tokens=11, extra_eos_ids=(free[0][4],))
    alone = _tokens(llm, monkeypatch, 1, params)
    assert alone[0] == free[0][:4] and len(alone[1]) == 11
    assert _tokens(llm, monkeypatch, 4, params) == alone


def test_only_greedy_rows_that_no_one_streams_take_several_steps(llm):
    sched = Scheduler(llm.runner(2, 64))
    seqs = [llm.sequence(p, SamplingParams(max_new_tokens=20, is_eos_ignored=True)) for p in PROMPTS]
    for s in seqs:
        sched.add(s)
    sched.step()  # the prompts' pass: both decode from here
    assert all(s.is_decoding for s in seqs) and decode_steps.steps_at_once(sched) == decode_steps.DECODE_STEPS
    seqs[1].on_event = lambda kind, data: None  # a client reads its text as it comes
    assert decode_steps.steps_at_once(sched) == 1
    seqs[1].on_event = None
    seqs[1].params = SamplingParams(max_new_tokens=20, temperature=0.7)
    assert decode_steps.steps_at_once(sched) == 1
    seqs[1].params = SamplingParams(max_new_tokens=20, logprobs=2)
    assert decode_steps.steps_at_once(sched) == 1
    seqs[1].params = SamplingParams(max_new_tokens=3)  # (two tokens so far) one left: one step
    assert decode_steps.steps_at_once(sched) == 1
    sched.run()


def test_rows_under_a_retention_policy_step_one_at_a_time(gguf_model, monkeypatch):
    """A --kv-policy row attends in torch under its mask (Runner._policy_pass): no call takes it."""
    calls = []
    monkeypatch.setattr(Runner, "decode_steps", lambda self, *a: calls.append(a) or None)
    policy = hymoe.load(gguf_model("qwen3_moe", "Q8_0")[1], placement="cpu", progress=False,
                        kv_policy="sink-window:2,4")
    seqs, _ = policy.generate_batch(PROMPTS, SamplingParams(max_new_tokens=8, is_eos_ignored=True))
    assert all(len(s.token_ids) == 8 for s in seqs) and not calls


def test_the_stack_refuses_a_call_of_no_steps_before_c(llm):
    runner = llm.runner(1, 32)
    runner.forward([0], [PROMPTS[0]], [0])
    with pytest.raises(HymoeError, match="at least one decode step"):
        runner.decode_steps([0], [5], [len(PROMPTS[0])], 0)
    picks = runner.decode_steps([0], [5], [len(PROMPTS[0])], 1)
    assert picks == [[runner.forward([0], [[5]], [len(PROMPTS[0])])[0].argmax().item()]]
