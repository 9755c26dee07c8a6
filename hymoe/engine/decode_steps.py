"""Several greedy decode steps in one native call (Runner.decode_steps, csrc/layer.cpp's
hymoe_layers_decode), for the engine loop: between two steps a `generate` loop spent ~0.4 ms of a
~13 ms step in Python (the runner's inputs, the scheduler, the stack's binding) on 2 Zen 4 cores,
its state cold after the weights streamed. The call feeds each row its own pick one position on.

Taken only where nothing else changes what a step does: every running sequence decodes greedily
(no sampling, log-probabilities or grammar), no client reads its tokens as they come (they would
arrive in bursts) and no prompt waits. A sequence that ends inside a call's steps takes none of
its later picks; their positions hold those tokens' keys and values and are committed with them,
so the prefix cache stays true.
"""
from __future__ import annotations

import time

# Steps a call runs at most: a sequence that ends inside them throws away at most this many less one
DECODE_STEPS = 4


def take(sched) -> bool:
    """One call of several decode steps for the scheduler's running sequences, where they may take
    it (see the top); False otherwise, or where the runner or the pool's blocks do not allow it."""
    if (k := steps_at_once(sched)) < 2:
        return False
    seqs = list(sched.running)
    if not all(sched.runner.reserve(s.slot, s.cached, k) for s in seqs):
        return False
    t0 = time.perf_counter()
    picks = sched.runner.decode_steps([s.slot for s in seqs], [s.token_ids[-1] for s in seqs],
                                      [s.cached for s in seqs], k)  # [k][B]
    if picks is None:
        return False
    taken = 0
    for b, seq in enumerate(seqs):
        seq.cached += k  # the row holds the k positions written, whatever it takes of them
        for row in picks:
            if seq.finish_reason is not None:
                break
            seq.accept(row[b])
            taken += 1
    sched.timings.add(False, time.perf_counter() - t0, taken)
    return True


def steps_at_once(sched) -> int:
    """Decode steps the next call may run: 1 unless every running sequence may take several (see
    the top); then as many as each still needs and its context holds, at most DECODE_STEPS."""
    seqs = sched.running
    if sched.waiting or not seqs or \
            not all(s.is_decoding and s.on_event is None and s.params.is_argmax and s.params.logprobs is None
                    for s in seqs) or not sched.runner.decodes_steps([s.slot for s in seqs]):
        return 1
    return min(DECODE_STEPS, *(min(s.params.max_new_tokens - len(s.token_ids), sched.runner.max_len - s.cached)
                               for s in seqs))
