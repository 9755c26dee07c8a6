"""Every family against Hugging Face transformers' own implementation (float32, eager attention)."""
import pytest
import torch

import hymoe
from hymoe.engine.sampler import SamplingParams
from hymoe.experts import native
from tiny_models import CONFIGS

NAMES = list(CONFIGS)


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(params=[(n, b) for n in NAMES for b in ("torch", "native")], ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request, tiny_model):
    """hymoe with each experts backend (the native one computes the float32 weights in place) and HF."""
    name, backend = request.param
    if backend == "native" and native.library() is None:
        pytest.skip("native kernels not built")
    model_dir, hf = tiny_model(name)
    llm = hymoe.load(model_dir, dtype="float32", progress=False, experts=backend)
    assert llm.experts_backend == backend
    return llm, hf


def test_prefill_logits_match_transformers(pair):
    ours, hf = pair
    ids = _ids(48, 1)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].float()
    got = ours.logits(ids)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-4


def test_chunked_prefill_matches_transformers_and_bounds_the_masks(pair, monkeypatch):
    """A prompt read 7 tokens per pass (LLM.logits, and generate through the scheduler) gives HF's
    logits, and no pass builds a mask for more than its chunk of the prompt."""
    from hymoe.kv.cache import Step

    ours, hf = pair
    ids = _ids(48, 1)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].float()
    widths, build = [], Step.build

    def recorded(positions, *a, **kw):  # positions [B, T]: T is the pass's width
        widths.append(positions.shape[1])
        return build(positions, *a, **kw)

    monkeypatch.setattr(Step, "build", staticmethod(recorded))
    monkeypatch.setattr(ours, "prefill_chunk", 7)
    got = ours.logits(ids)
    assert (got - ref).abs().max().item() <= 1e-4
    assert len(widths) == 7 and max(widths) == 7
    widths.clear()
    chunked = ours.generate(ids, max_new_tokens=4, is_eos_ignored=True)
    assert max(widths) == 7 and widths.count(7) == 6  # 6 chunks of 7 and one of 6, then 3 decode steps
    monkeypatch.setattr(ours, "prefill_chunk", 512)
    assert chunked == ours.generate(ids, max_new_tokens=4, is_eos_ignored=True)


def test_decode_with_cache_matches_transformers_decode(pair):
    ours, hf = pair
    ids = _ids(24, 2)
    prompt, rest = ids[:16], ids[16:]
    with torch.no_grad():
        out = hf(torch.tensor([prompt]), use_cache=True)
        cache, ref = out.past_key_values, [out.logits[0, -1]]
        for tok in rest:
            out = hf(torch.tensor([[tok]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            ref.append(out.logits[0, -1])
    runner = ours.runner(1, 64)
    got = [runner.forward([0], [prompt], [0])[0]]
    for pos, tok in enumerate(rest, start=len(prompt)):
        got.append(runner.forward([0], [[tok]], [pos])[0])
    assert (torch.stack(got) - torch.stack(ref).float()).abs().max().item() <= 1e-4


def test_greedy_32_tokens_identical_to_transformers(pair):
    ours, hf = pair
    prompt = _ids(10, 3)
    with torch.no_grad():
        ids = torch.tensor([prompt])
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    got = ours.generate(prompt, max_new_tokens=32, is_eos_ignored=True)
    assert len(got) == 32
    assert got == ref


def test_batch_of_unequal_prompts_equals_each_alone(pair):
    ours, _ = pair
    prompts = [_ids(5, 4), _ids(19, 5), _ids(11, 6), _ids(1, 7)]
    params = SamplingParams(max_new_tokens=12, is_eos_ignored=True)
    batch, _ = ours.generate_batch(prompts, params)
    for prompt, b in zip(prompts, batch):
        alone, _ = ours.generate_batch([prompt], params)
        assert b.token_ids == alone[0].token_ids
    # and the batched prefill logits themselves
    runner = ours.runner(len(prompts), 32)
    last = runner.forward(list(range(len(prompts))), prompts, [0] * len(prompts))
    for prompt, row in zip(prompts, last):
        assert (row - ours.logits(prompt)[-1]).abs().max().item() <= 1e-5


def test_bfloat16_stays_close_to_float32(tiny_model):
    model_dir, _ = tiny_model("deepseek_v3")
    ids = _ids(32, 8)
    f32 = hymoe.load(model_dir, dtype="float32", progress=False).logits(ids)
    bf16 = hymoe.load(model_dir, dtype="bfloat16", progress=False).logits(ids)
    assert bf16.dtype == torch.float32
    assert (bf16.argmax(-1) == f32.argmax(-1)).float().mean().item() >= 0.9


def test_quantized_native_experts_stay_close(tiny_model):
    """Q8_0 experts (int8 weights and activations) keep the top-1 of the float model almost everywhere."""
    if native.library() is None:
        pytest.skip("native kernels not built")
    model_dir, _ = tiny_model("qwen3_moe")
    ids = _ids(64, 9)
    ref = hymoe.load(model_dir, dtype="float32", progress=False, experts="torch").logits(ids)
    got = hymoe.load(model_dir, dtype="float32", progress=False, experts_format="Q8_0").logits(ids)
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean().item() >= 0.9
    assert (got - ref).abs().max().item() < 0.05 * ref.abs().max().item()
