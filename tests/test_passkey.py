"""Passkey windows (eval/passkey.py) and `hymoe eval kv --passkeys`: a key hidden early in ordinary
text and asked for at the end, the guesses being the model's own next tokens under each cache."""
import json

import pytest

import hymoe
from hymoe.cli import main
from hymoe.errors import HymoeError
from hymoe.eval.kv import passkey_guesses
from hymoe.eval.passkey import Passkeys


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from hymoe.default_model import ensure_default_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        return hymoe.load(ensure_default_model(), dtype="float32", progress=False, max_context=256, kv_block_size=8)


@pytest.fixture(scope="module")
def text_ids(demo):
    from hymoe.default_model import ensure_default_model

    return demo.tokenizer.encode((ensure_default_model() / "heldout.txt").read_text()[:20000])


def test_a_window_hides_the_key_early_and_asks_for_it_at_the_end(demo, text_ids):
    keys = Passkeys(demo.tokenizer)
    assert len(set(keys.keys)) == 64
    for n, (w, at) in enumerate(keys.windows(text_ids, 200, 6)):
        key, fact = w[at], keys.fact(w[at])
        assert len(w) == 200 and key in keys.keys and w[-len(fact):] == fact
        assert w[at - len(keys.question):at] == keys.question and at == 200 - len(keys.end) - 1
        starts = [i for i in range(len(w) - len(fact)) if w[i:i + len(fact)] == fact]
        assert len(starts) == 1 and starts[0] + len(fact) <= 150  # in the first three quarters
        filled = set(range(starts[0], starts[0] + len(fact))) | set(range(200 - len(fact), 200))
        start = n * (len(text_ids) - 200) // 5
        assert all(w[i] == text_ids[start + i] for i in range(200) if i not in filled)
        word = demo.tokenizer.decode([key])
        assert demo.tokenizer.decode(w).count(f"The secret word is{word}.") == 2
    with pytest.raises(HymoeError, match="does not fit"):
        keys.window(text_ids[:20], keys.keys[0], 5)


def test_the_guesses_are_the_models_next_tokens_before_the_answer(demo, text_ids):
    """Read in chunks under full and under a policy that keeps everything, the guess is what one plain
    prefill of the window predicts at the position before the key."""
    tests = Passkeys(demo.tokenizer).windows(text_ids, 96, 3)
    expect = [int(demo.logits(w)[at - 1].argmax()) for w, at in tests]
    assert passkey_guesses(demo, tests, "full", chunk=16) == expect
    assert passkey_guesses(demo, tests, "h2o:128", chunk=16) == expect


def test_eval_kv_reports_passkeys(capsys, tmp_path):
    from hymoe.default_model import ensure_default_model

    (tmp_path / "t.txt").write_text((ensure_default_model() / "heldout.txt").read_text()[:3000])
    args = ["eval", "kv", "--policy", "sink-window:4,12", "--text", str(tmp_path / "t.txt"), "--context", "64",
            "--chunk", "16", "--kv-block-size", "8", "--dtype", "float32", "--json"]
    assert main(args + ["--passkeys", "5"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["passkeys"] == 5 and 0 <= out["passkey_full"] <= 1 and 0 <= out["passkey_policy"] <= 1
    assert main(args + ["--passkeys", "-1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hymoe: error: --passkeys") and "\n" not in err


def test_the_training_windows_carry_a_passkey_and_a_step_learns_it(demo, text_ids):
    """scripts/train_long_context.py: each window holds its key where the answer position says, and
    the answer's own loss makes steps on one batch learn it (far faster than the window's loss)."""
    import sys
    from pathlib import Path

    import torch
    from transformers import AutoTokenizer, DeepseekV3ForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from train_long_context import batch, stages, step

    from hymoe.default_model import ensure_default_model

    assert stages("256x16x500@1e-3,4096x1x20@3e-4") == [(256, 16, 500, 1e-3), (4096, 1, 20, 3e-4)]
    keys = Passkeys(AutoTokenizer.from_pretrained(str(ensure_default_model())))
    x, at = batch(torch.tensor(text_ids), keys, 128, 4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 128) and all(int(x[b, a]) in keys.keys for b, a in enumerate(at.tolist()))
    assert all(x[b, a - len(keys.question):a].tolist() == keys.question for b, a in enumerate(at.tolist()))
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM.from_pretrained(str(ensure_default_model()), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = step(model, x, at, opt, 1.0)[1]
    for _ in range(3):
        last = step(model, x, at, opt, 1.0)[1]
    assert last < first / 10  # 11.5 -> 0.13 here; the window's loss alone: 11.5 -> 4.0
