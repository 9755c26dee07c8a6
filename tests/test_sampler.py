import torch

from hymoe.engine.sampler import SamplingParams, sample


def test_greedy_picks_argmax():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample(logits, SamplingParams(), [], None) == 1


def test_top_k_one_is_greedy_even_when_hot():
    logits = torch.randn(100)
    p = SamplingParams(temperature=5.0, top_k=1)
    assert all(sample(logits, p, [], torch.Generator().manual_seed(s)) == int(logits.argmax()) for s in range(20))


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    p = SamplingParams(temperature=1.0, top_p=0.7)
    seen = {sample(logits, p, [], torch.Generator().manual_seed(s)) for s in range(200)}
    assert seen == {0, 1}


def test_seed_repeats_and_temperature_spreads():
    logits = torch.zeros(50)
    p = SamplingParams(temperature=1.0, seed=7)
    a = [sample(logits, p, [], g) for g in [p.generator()] * 10]
    b = [sample(logits, p, [], g) for g in [p.generator()] * 10]
    assert a == b and len(set(a)) > 3


def test_repetition_penalty_demotes_seen_tokens():
    logits = torch.tensor([2.0, 1.9, 0.0])
    assert sample(logits, SamplingParams(repetition_penalty=1.5), [0], None) == 1
    assert sample(logits, SamplingParams(), [0], None) == 0


def test_only_plain_greedy_rows_take_the_argmax_as_it_comes():
    """Runner.picks (the native stack's argmax) stands for sample() only where greedy reads nothing
    else: a penalty, a temperature or a grammar samples from the logits themselves."""
    logits = torch.tensor([2.0, 1.9, 0.0])
    plain = SamplingParams()
    assert plain.is_argmax and sample(logits, plain, [0], None) == int(logits.argmax())
    for p in (SamplingParams(repetition_penalty=1.5), SamplingParams(grammar=object()),
              SamplingParams(temperature=1.0, top_k=1)):
        assert not p.is_argmax
    assert sample(logits, SamplingParams(repetition_penalty=1.5), [0], None) != int(logits.argmax())
