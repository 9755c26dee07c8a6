"""KV retention policies (kv/policy.py, kv/retention.py): one attention layer of a tiny random model
(GQA and MLA) run through the runner under each policy, against plain softmax attention over
exactly the positions the policy should keep, computed here; blocks going back to the pool; a
policy row beside a full row; the prefix cache; bad policy strings."""
import json
import types

import pytest
import torch
from torch import nn

import hymoe
from hymoe.cli import main
from hymoe.engine.generate import generate
from hymoe.engine.runner import Runner
from hymoe.engine.sampler import SamplingParams
from hymoe.engine.scheduler import Scheduler
from hymoe.errors import HymoeError
from hymoe.kv.policy import HeavyHitters, Policy, SinkWindow, parse_policy

BS = 4  # positions per block: sequences of 40 span many, so blocks are freed and entries compacted
CHUNKS = [11, 5, 5, 3] + [1] * 16  # prefill chunks, then decode steps: 40 positions


class OneLayer(nn.Module):
    """A runner's model that is one attention layer: token id t's input is row t of a random
    table, and the 'logits' are the layer's output [B, T, H]."""

    def __init__(self, attn: nn.Module, rope, cfg, vocab: int):
        super().__init__()
        self.attn, self.rope, self.cfg = attn, rope, cfg
        self.inputs = torch.randn(vocab, cfg.hidden_size, generator=torch.Generator().manual_seed(3))
        self.layers = [types.SimpleNamespace(self_attn=attn)]

    def cache_entries(self):
        return [self.attn.cache_entries()]

    def layer_devices(self):
        return [torch.device("cpu")]

    def forward(self, ids, step, cache):
        x = self.inputs[ids]  # [B, T, H]
        return self.attn(x, step, cache.layers[0], self.rope.cos_sin(step.positions, x.dtype))

    def head(self, hidden):
        return hidden.float()


def _qkv_gqa(attn, rope, x):
    """Plain queries, keys, values of x [L, H], rotated at positions 0..L-1: [N, L, D], [N, L, D], [N, L, D]."""
    n, g, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q, k, v = attn.q_proj(x).view(-1, n, d), attn.k_proj(x).view(-1, g, d), attn.v_proj(x).view(-1, g, d)
    if attn.is_qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    cos_sin = rope.cos_sin(torch.arange(len(x))[None], x.dtype)
    q, k = rope.apply(q[None], *cos_sin)[0], rope.apply(k[None], *cos_sin)[0]
    rep = n // g
    return q.transpose(0, 1), k.repeat_interleave(rep, 1).transpose(0, 1), v.repeat_interleave(rep, 1).transpose(0, 1)


def _qkv_mla(attn, rope, x, kv_b):
    """MLA without absorption: keys [k_nope | k_rot] and values expanded from the latent per head by
    kv_b (transformers' linear: on the CPU in float32 hymoe's lives in the native per-head products)."""
    n, r = attn.num_heads, attn.rank
    q = attn.q_b_proj(attn.q_a_layernorm(attn.q_a_proj(x))) if attn.is_q_lora else attn.q_proj(x)
    q_nope, q_rot = q.view(-1, n, attn.nope_dim + attn.rope_dim).split([attn.nope_dim, attn.rope_dim], -1)
    latent, k_rot = attn.kv_a_proj_with_mqa(x).split([r, attn.rope_dim], -1)
    latent = attn.kv_a_layernorm(latent)  # [L, R]
    cos_sin = rope.cos_sin(torch.arange(len(x))[None], x.dtype)
    q_rot = rope.apply(q_rot[None], *cos_sin)[0]
    k_rot = rope.apply(k_rot[None, :, None], *cos_sin)[0, :, 0]  # [L, Dr]
    kv = kv_b(latent).view(-1, n, attn.nope_dim + attn.v_dim)
    k_nope, v = kv.split([attn.nope_dim, attn.v_dim], -1)
    k = torch.cat((k_nope, k_rot[:, None].expand(-1, n, -1)), -1)
    return torch.cat((q_nope, q_rot), -1).transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)


def _reference(attn, rope, x, policy: Policy, kv_b=None) -> torch.Tensor:
    """Output [L, H] of x [L, H] read in CHUNKS, each query attending its own chunk (causally) and
    what the policy keeps of the positions before it, decided here after every chunk."""
    q, k, v = _qkv_mla(attn, rope, x, kv_b) if kv_b is not None else _qkv_gqa(attn, rope, x)  # [N, L, *]
    scale = attn.scale if kv_b is not None else attn.head_dim ** -0.5
    kept, mass, outs, start = [], {}, [], 0
    for n in CHUNKS:
        for p in range(start, start + n):
            seen = torch.tensor(kept + list(range(start, p + 1)))
            probs = ((q[:, p:p + 1] @ k[:, seen].transpose(1, 2)) * scale).softmax(-1)  # [N, 1, |seen|]
            outs.append((probs @ v[:, seen])[:, 0].reshape(-1))
            for pos, w in zip(seen.tolist(), probs.sum((0, 1)).tolist()):
                mass[pos] = mass.get(pos, 0.0) + w
        start += n
        kept = _keep(policy, kept + list(range(start - n, start)), mass)
    return attn.o_proj(torch.stack(outs))


def _keep(policy: Policy, live: list[int], mass: dict) -> list[int]:
    """The policy's rule written out: StreamingLLM's sinks and window, H2O's recent half and heavy rest."""
    if isinstance(policy, SinkWindow):
        return [p for p in live if p < policy.sink or p > live[-1] - policy.window]
    if isinstance(policy, HeavyHitters) and len(live) > policy.budget:
        recent = live[len(live) - policy.budget // 2:]
        older = sorted(live[:len(live) - len(recent)], key=lambda p: -mass[p])
        return sorted(older[:policy.budget - len(recent)]) + recent
    return live


def _run(runner: Runner, rows_ids: list[list[int]]) -> list[torch.Tensor]:
    """Every row's outputs, the rows read together in CHUNKS."""
    outs, start = [[] for _ in rows_ids], 0
    for n in CHUNKS:
        got = runner.forward(list(range(len(rows_ids))), [ids[start:start + n] for ids in rows_ids],
                             [start] * len(rows_ids), is_all_logits=True)  # [B, n, H]
        for b in range(len(rows_ids)):
            outs[b].append(got[b])
        start += n
    return [torch.cat(o) for o in outs]


@pytest.mark.parametrize("name", ["qwen3_moe", "deepseek_v3"])
@pytest.mark.parametrize("policy", ["sink-window:3,6", "sink-window:0,9", "h2o:10"])
def test_a_policy_row_beside_a_full_row_matches_attention_over_the_kept_positions(tiny_model, name, policy):
    """Row 0 under the policy, row 1 full, in the same passes; each against the reference."""
    model_dir, hf = tiny_model(name)
    llm = hymoe.load(model_dir, dtype="float32", progress=False, experts="torch")
    attn = llm.model.layers[0].self_attn
    one = OneLayer(attn, llm.model.rope, llm.config, 256)
    runner = Runner(one, 2, 64, torch.float32, block_size=BS, kv_policy=policy)
    runner.retention.set_policy(1, Policy())
    ids = torch.randint(0, 256, (2, sum(CHUNKS)), generator=torch.Generator().manual_seed(5)).tolist()
    got = _run(runner, ids)
    kv_b = hf.model.layers[0].self_attn.kv_b_proj if name.startswith("deepseek") else None
    with torch.no_grad():
        want = [_reference(attn, one.rope, one.inputs[ids[0]], parse_policy(policy), kv_b),
                _reference(attn, one.rope, one.inputs[ids[1]], Policy(), kv_b)]
    for b in range(2):
        scale = want[b].abs().max().item()
        assert (got[b] - want[b]).abs().max().item() <= 1e-4 * max(1.0, scale), (b, policy)
    # the policy row holds its kept positions and at most a block of holes, in blocks it alone holds
    held = runner.retention.held(0)
    assert sum(p >= 0 for p in held.pos) <= 10 and len(held.pos) - sum(p >= 0 for p in held.pos) < BS
    assert len(runner.blocks.table(0)) == -(-len(held.pos) // BS) < len(runner.blocks.table(1)) == 10


def _reference_quest(attn, rope, x, blocks: int) -> torch.Tensor:
    """Quest over x [L, H] (GQA): query p attends its own block of BS positions (up to p) and the
    blocks - 1 earlier ones with the highest bound sum_heads sum_d max(q_d * max_k k_d, q_d * min_k k_d)."""
    q, k, v = _qkv_gqa(attn, rope, x)  # [N, L, D]
    outs = []
    for p in range(len(x)):
        own = p // BS
        bound = [torch.maximum(q[:, p] * k[:, j * BS:(j + 1) * BS].amax(1),
                               q[:, p] * k[:, j * BS:(j + 1) * BS].amin(1)).sum().item() for j in range(own)]
        best = sorted(range(own), key=lambda j: -bound[j])[:blocks - 1] + [own]
        seen = torch.tensor([i for j in sorted(best) for i in range(j * BS, min((j + 1) * BS, p + 1))])
        probs = ((q[:, p:p + 1] @ k[:, seen].transpose(1, 2)) * attn.head_dim ** -0.5).softmax(-1)
        outs.append((probs @ v[:, seen])[:, 0].reshape(-1))
    return attn.o_proj(torch.stack(outs))


def test_topk_blocks_matches_quest_over_the_chosen_blocks(tiny_model):
    """topk-blocks:3 beside a full row: each query reads 3 of up to 10 blocks; nothing is evicted."""
    model_dir, _ = tiny_model("qwen3_moe")
    llm = hymoe.load(model_dir, dtype="float32", progress=False, experts="torch")
    attn = llm.model.layers[0].self_attn
    one = OneLayer(attn, llm.model.rope, llm.config, 256)
    runner = Runner(one, 2, 64, torch.float32, block_size=BS, kv_policy="topk-blocks:3")
    runner.retention.set_policy(1, Policy())
    ids = torch.randint(0, 256, (2, sum(CHUNKS)), generator=torch.Generator().manual_seed(6)).tolist()
    got = _run(runner, ids)
    with torch.no_grad():
        want = [_reference_quest(attn, one.rope, one.inputs[ids[0]], 3),
                _reference(attn, one.rope, one.inputs[ids[1]], Policy())]
    for b in range(2):
        assert (got[b] - want[b]).abs().max().item() <= 1e-4 * max(1.0, want[b].abs().max().item()), b
    assert len(runner.blocks.table(0)) == 10 and runner.retention.held(0).pos == list(range(40))


def test_blocks_go_back_to_the_pool(tiny_model):
    """sink-window:2,5 over 40 positions in blocks of 4: the row ends holding 3 blocks at most,
    the others are free again, and no block is registered for prefix sharing."""
    model_dir, _ = tiny_model("qwen3_moe")
    llm = hymoe.load(model_dir, dtype="float32", progress=False, experts="torch")
    one = OneLayer(llm.model.layers[0].self_attn, llm.model.rope, llm.config, 256)
    runner = Runner(one, 1, 64, torch.float32, block_size=BS, kv_policy="sink-window:2,5")
    _run(runner, [list(range(40))])
    assert len(runner.blocks.table(0)) <= 3 and runner.blocks.available == runner.blocks.num_blocks - 3
    assert runner.retention.held(0).kept_blocks <= 3 and not runner.blocks.by_key


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from hymoe.default_model import ensure_default_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        return hymoe.load(ensure_default_model(), dtype="float32", progress=False, max_context=128, kv_block_size=8)


def test_a_policy_that_keeps_everything_equals_full(demo, tiny_model):
    """Budgets larger than the sequence: the policy path (slots, masks, mass, sliding windows and the
    native GQA kernel set aside) gives full's logits."""
    sliding = hymoe.load(tiny_model("mixtral_sliding_window")[0], dtype="float32", progress=False, kv_block_size=4)
    for llm in (demo, sliding):
        ids = torch.randint(0, 256, (30,), generator=torch.Generator().manual_seed(2)).tolist()
        want = llm.runner(1, 64).all_logits([0], [ids], 7)[0]
        for policy in ("sink-window:0,100", "h2o:100", "topk-blocks:100"):
            got = llm.runner(1, 64, kv_policy=policy).all_logits([0], [ids], 7)[0]
            assert (got - want).abs().max().item() <= 1e-4


def test_the_prefix_cache_stays_correct_beside_policy_rows(demo):
    """A full row registers its prompt; a policy row with the same prompt takes none of it and
    registers nothing; a later full sequence reuses only the full row's blocks and decodes as alone."""
    prompt = demo.tokenizer.encode("And God said, Let there be light: and there was light. And God saw the light")
    params = SamplingParams(max_new_tokens=12, is_eos_ignored=True)
    sched = Scheduler(demo.runner(3, demo.max_context))
    sched.runner.retention.set_policy(1, SinkWindow(4, 12))
    first, policy_row = demo.sequence(prompt, params), demo.sequence(prompt, params)
    sched.add(first)
    sched.step()
    sched.add(policy_row)
    for _ in range(4):
        sched.step()
        mine = sched.blocks.table(policy_row.slot)
        assert all(sched.blocks.keys[b] is None for b in mine) and not set(mine) & set(sched.blocks.table(0))
    sched.run()
    assert policy_row.slot == 1 and policy_row.reused == 0
    alone = demo.runner(1, demo.max_context, kv_policy="sink-window:4,12")
    assert policy_row.token_ids == generate(alone, [prompt], params, demo.eos_ids)[0][0].token_ids
    later = demo.sequence(prompt + [17], params)
    sched.add(later)
    sched.run()
    assert later.slot == 2 and later.reused == (len(prompt) // 8) * 8 > 0
    assert later.token_ids == demo.generate(prompt + [17], max_new_tokens=12, is_eos_ignored=True)


@pytest.mark.parametrize("bad", ["sink-window:0,-1", "h2o:abc", "h2o:1", "sink-window:4", "topk-blocks:0", "lru:8", ""])
def test_bad_policies_are_refused_in_one_line(bad, capsys):
    with pytest.raises(HymoeError, match="--kv-policy"):
        parse_policy(bad)
    assert main(["generate", "--prompt", "x", "--kv-policy", bad]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hymoe: error: --kv-policy") and "\n" not in err


def test_eval_kv_scores_both_caches_on_the_same_windows(capsys, tmp_path, monkeypatch):
    """A policy that keeps all is full (same perplexity, all top-1s agree, same bytes); one that
    keeps 16 of 64 positions holds fewer bytes."""
    from hymoe.default_model import ensure_default_model

    text = (ensure_default_model() / "heldout.txt").read_text()[:600]
    (tmp_path / "t.txt").write_text(text)
    out = {}
    for policy in ("h2o:64", "sink-window:4,12"):
        assert main(["eval", "kv", "--policy", policy, "--text", str(tmp_path / "t.txt"), "--context", "64",
                     "--chunk", "16", "--kv-block-size", "8", "--dtype", "float32", "--json"]) == 0
        out[policy] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    same, small = out["h2o:64"], out["sink-window:4,12"]
    assert set(same) >= {"policy", "context", "ppl_full", "ppl_policy", "top1_agreement", "kv_bytes_full",
                         "kv_bytes_policy"}
    assert abs(same["ppl_policy"] - same["ppl_full"]) <= 1e-3 * same["ppl_full"] and same["top1_agreement"] == 1.0
    assert same["kv_bytes_policy"] == same["kv_bytes_full"] == small["kv_bytes_full"]
    assert small["kv_bytes_policy"] <= small["kv_bytes_full"] * 5 // 8 and small["ppl_full"] == same["ppl_full"]


def test_bench_context_reports_the_blocks_a_policy_row_held(tiny_model, capsys):
    """A 200-token prompt read in one pass holds 4 blocks of 64 at its most; sink-window:8,24 then
    keeps 32 positions, one block, through decoding."""
    d = tiny_model("deepseek_v3")[0]
    assert main(["bench", "context", str(d), "--tokens", "200", "--gen-tokens", "3", "--dtype", "float32",
                 "--kv-policy", "sink-window:8,24", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])[0]
    block = row["kv_bytes_per_token"] * 64
    assert row["kv_policy"] == "sink-window:8,24" and row["kv_bytes"] == 4 * block and row["kv_bytes_kept"] == block
