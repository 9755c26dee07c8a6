"""The one engine loop (engine/scheduler.py) and the sequence record (engine/sequence.py) that every
client shares: chunked prefill, waiting for rows, cancelling, streamed text, reuse of cached KV blocks by
chat's next turn and by prompts that share a prefix."""
import pytest

import hymoe
from hymoe.engine.chat import ChatSession
from hymoe.engine.sampler import SamplingParams
from hymoe.engine.scheduler import Scheduler
from hymoe.engine.sequence import Sequence

GREEDY = SamplingParams(max_new_tokens=10, is_eos_ignored=True)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    from hymoe.default_model import ensure_default_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        # blocks of 8 positions: prompts span several, and share them in whole blocks
        return hymoe.load(ensure_default_model(), dtype="float32", progress=False, max_context=128, kv_block_size=8)


def _prompts(llm):
    texts = ["And God said unto Moses,", "In the beginning", "The Lord is my shepherd; I shall not want."]
    return [llm.tokenizer.encode(t) for t in texts]


def _run(llm, prompts, slots: int, chunk: int = 512, params=GREEDY) -> list[Sequence]:
    sched = Scheduler(llm.runner(slots, llm.max_context), prefill_chunk=chunk)
    seqs = [llm.sequence(p, params) for p in prompts]
    for s in seqs:
        sched.add(s)
    sched.run()
    assert sorted(sched.free) == list(range(slots)) and not sched.running  # every slot came back
    return seqs


def test_chunked_prefill_and_waiting_for_slots_give_the_same_tokens(llm):
    """Prompts read 3 tokens per step, and 3 sequences sharing 2 slots, decode what each decodes alone."""
    alone = [llm.generate(p, max_new_tokens=10, is_eos_ignored=True) for p in _prompts(llm)]
    for slots, chunk in ((3, 512), (3, 3), (2, 5), (1, 2)):
        got = [s.token_ids for s in _run(llm, _prompts(llm), slots, chunk)]
        assert got == alone, (slots, chunk)


def test_a_sequence_waits_until_a_slot_is_free(llm):
    sched = Scheduler(llm.runner(1, llm.max_context))
    a, b = (llm.sequence(p, GREEDY) for p in _prompts(llm)[:2])
    sched.add(a)
    sched.add(b)
    sched.step()
    assert a.slot == 0 and b.slot == -1 and list(sched.waiting) == [b]
    done = []
    while sched.has_work:
        done += sched.step()
    assert done == [a, b] and len(b.token_ids) == 10


def test_cancelled_sequences_free_their_slot(llm):
    sched = Scheduler(llm.runner(2, llm.max_context))
    a, b, c = (llm.sequence(p, GREEDY) for p in _prompts(llm))
    for s in (a, b, c):
        sched.add(s)
    sched.step()
    a.cancel()  # running
    c.cancel()  # waiting
    sched.step()
    assert a not in sched.running and c not in sched.waiting and 0 in sched.free
    sched.run()
    assert len(b.token_ids) == 10 and len(a.token_ids) < 10 and not c.token_ids


def test_length_limit_is_the_cache(llm):
    """A sequence ends when its slot is full; the token sampled at the last position is returned."""
    prompt = _prompts(llm)[0]
    seq, = _run(llm, [prompt], 1, 512, SamplingParams(max_new_tokens=500, is_eos_ignored=True))
    assert seq.finish_reason == "length" and len(prompt) + len(seq.token_ids) == llm.max_context + 1


def test_streamed_text_holds_back_a_possible_stop_string(llm):
    prompt = _prompts(llm)[0]
    free, = _run(llm, [prompt], 1, 512, SamplingParams(max_new_tokens=16, is_eos_ignored=True))
    stop = free.text[6:9]
    events = []
    seq = llm.sequence(prompt, SamplingParams(max_new_tokens=16, is_eos_ignored=True, stop=(stop,)),
                       on_event=lambda kind, data: events.append((kind, data)))
    sched = Scheduler(llm.runner(1, llm.max_context))
    sched.add(seq)
    sched.run()
    texts = [d["text"] for k, d in events if k == "text"]
    assert "".join(texts) == free.text[: free.text.index(stop)] == seq.text
    assert events[-1][0] == "done" and events[-1][1]["finish_reason"] == "stop"
    assert not any(stop in t for t in texts)


def test_eos_ends_the_sequence_and_is_not_returned(llm):
    prompt = _prompts(llm)[1]
    free, = _run(llm, [prompt], 1)
    params = SamplingParams(max_new_tokens=10, extra_eos_ids=(free.token_ids[2],))
    seq, = _run(llm, [prompt], 1, 4, params)
    assert seq.token_ids == free.token_ids[:2] and seq.finish_reason == "stop"


def _shared(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_chat_reuses_its_blocks_and_survives_a_failed_reply(llm, monkeypatch):
    session = ChatSession(llm, SamplingParams(max_new_tokens=6, is_eos_ignored=True))
    seqs, add = [], session.scheduler.add
    monkeypatch.setattr(session.scheduler, "add", lambda seq: seqs.append(seq) or add(seq))
    first = session.reply("Who was Moses?")
    held = seqs[0].history[:-1]  # the last sampled token was never fed back
    pool = session.scheduler.blocks
    assert session.scheduler.free == [0] and not pool.tables
    assert len(pool.idle) == len(held) // 8  # its full blocks stay cached, referenced by nobody
    fed = []
    forward = session.scheduler.runner.forward
    monkeypatch.setattr(session.scheduler.runner, "forward",
                        lambda rows, tokens, starts, **kw: fed.append(starts[0]) or forward(rows, tokens, starts, **kw))
    session.reply("And Aaron?")
    want = min(_shared(held, seqs[1].prompt), len(seqs[1].prompt) - 1) // 8 * 8
    assert want >= 8 and fed[0] == seqs[1].reused == want  # the second turn starts after the blocks it shares
    monkeypatch.setattr(session.scheduler.runner, "forward", lambda *a, **kw: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        session.reply("Again?")
    assert session.scheduler.free == [0] and not session.scheduler.has_work and not pool.tables
    assert not any(pool.refs)
    monkeypatch.setattr(session.scheduler.runner, "forward", forward)
    session.reset()
    assert session.reply("Who was Moses?") == first
    assert seqs[-1].reused == (len(seqs[0].prompt) - 1) // 8 * 8  # all but its last block found again


def test_a_prompt_sharing_a_prefix_reuses_its_blocks(llm):
    """The second prompt's shared whole blocks are not computed again, and it decodes what it decodes alone."""
    head = llm.tokenizer.encode("In the beginning God created the heaven and the earth. And the earth was")
    first, second = head + llm.tokenizer.encode(" without form"), head + llm.tokenizer.encode(" void; and")
    alone, = _run(llm, [second], 1)
    sched = Scheduler(llm.runner(2, llm.max_context))
    fed = []
    forward = sched.runner.forward
    sched.runner.forward = lambda rows, tokens, starts, **kw: fed.append((rows, starts)) or forward(rows, tokens,
                                                                                                   starts, **kw)
    for prompt in (first, second):
        seq = llm.sequence(prompt, GREEDY)
        sched.add(seq)
        sched.run()
    common = _shared(first, second) // 8 * 8
    assert seq.slot == 1 and seq.reused == common >= 8  # the least recently used row: blocks are shared, not rows
    assert seq.usage()["prompt_tokens_details"]["cached_tokens"] == common
    assert fed[-10] == ([1], [common])  # its prefill starts after the shared blocks (then 9 decode steps)
    assert seq.token_ids == alone.token_ids
    other = llm.sequence(llm.tokenizer.encode("Blessed are the meek"), GREEDY)
    sched.add(other)
    sched.run()
    assert other.slot == 0 and other.reused == 0  # nothing shared


THREADS_SCRIPT = """
import sys, threading
import hymoe
llm = hymoe.load(sys.argv[1], dtype="float32", progress=False)
prompts = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]
want = [llm.generate(p, max_new_tokens=12, is_eos_ignored=True) for p in prompts]
got, errors = {}, []
def work(i):
    try:
        for _ in range(3):
            got.setdefault(i, []).append([llm.generate(p, max_new_tokens=12, is_eos_ignored=True) for p in prompts])
            llm.logits(prompts[i % 3])
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
for t in threads: t.start()
for t in threads: t.join()
assert not errors, errors
assert all(run == want for runs in got.values() for run in runs), "threads changed the tokens"
print("ok")
"""


@pytest.mark.parametrize("name", ["deepseek_v3", "qwen3_moe"])
def test_one_llm_from_three_threads(tiny_model, name):
    """Each pass takes the model's lock, so threads sharing an LLM neither crash nor mix their tokens
    (run in a subprocess: the failure this guards against was a SIGSEGV)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(tiny_model(name)[0])], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
