"""The command line as a user runs it: a subprocess, its exit code, its last line."""
import json
import subprocess
import sys

import pytest


def hymoe(*args, stdin=None, env=None):
    return subprocess.run([sys.executable, "-m", "hymoe.cli", *map(str, args)], capture_output=True,
                          text=True, input=stdin, timeout=300, env=env)


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    import os

    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache"))}


def test_generate_json_on_default_model(cache_env):
    r = hymoe("generate", "--prompt", "The experts", "--max-new-tokens", 8, "--ignore-eos", "--json", env=cache_env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out) >= {"text", "token_ids", "prompt_tokens", "prefill_tokens_per_s", "decode_tokens_per_s"}
    assert len(out["token_ids"]) == 8 and out["prompt_tokens"] > 0 and out["decode_tokens_per_s"] > 0


def test_generate_greedy_is_deterministic_and_seeded_sampling_repeats(tiny_model):
    d = tiny_model("qwen3_moe")[0]
    runs = [json.loads(hymoe("generate", d, "--prompt-ids", "5,6,7", "--max-new-tokens", 6, "--json",
                             "--ignore-eos", *extra).stdout.splitlines()[-1])["token_ids"]
            for extra in ([], [], ["--temperature", "1", "--seed", "3"], ["--temperature", "1", "--seed", "3"])]
    assert runs[0] == runs[1] and runs[2] == runs[3]


@pytest.mark.parametrize("args, message", [
    (["generate", "/no/such/dir", "--prompt", "hi"], "no such file or directory"),
    (["generate", "{tiny}", "--prompt", "hi"], "no tokenizer"),
    (["generate", "{tiny}", "--prompt-ids", "1,x"], "comma-separated integers"),
    (["generate", "{tiny}", "--prompt-ids", "1,2,3", "--max-context", "2"], "context holds 2"),
    (["generate", "{tiny}", "--prompt-ids", "1,99999"], "outside the vocabulary"),
    (["generate", "{tiny}", "--prompt-ids", "1", "--dtype", "int3"], "unknown dtype"),
    (["bench", "experts", "--format", "Q8_1"], "no benchmark weights for format Q8_1"),
    (["bench", "experts", "--shape", "llama-7b"], "unknown shape"),
    (["bench", "experts", "--tune", "bogus=3"], "unknown kernel tuning value 'bogus'"),
    (["bench", "experts", "--tune", "3"], "NAME=VALUE"),
    (["serve", "--port", "80000"], "a TCP port is 1 to 65535"),
    (["serve", "--port", "{busy}"], "cannot listen on 127.0.0.1"),
    (["convert", "{tiny}", "/no/such/dir/out.gguf"], "does not exist"),
    (["generate", "{tiny}", "--prompt-ids", "1", "--threads", "0"], "--threads 0: at least 1"),
])
def test_bad_input_is_one_line_and_nonzero(tiny_model, args, message):
    import socket

    d = tiny_model("mixtral")[0]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        r = hymoe(*[a.replace("{tiny}", str(d)).replace("{busy}", port) for a in args])
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr


def test_debug_shows_the_traceback():
    r = hymoe("generate", "/no/such/dir", "--prompt", "hi", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_chat_streams_keeps_history_and_resets(cache_env):
    r = hymoe("chat", "--max-new-tokens", 4, stdin="hello\nagain\n/reset\nonce more\n/exit\n", env=cache_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("> ") >= 4 and "(conversation cleared)" in r.stdout


def test_bench_serve_shared_prefix_reuses_the_prefix(cache_env):
    r = hymoe("bench", "serve", "--shared-prefix", 128, "--json", env=cache_env)  # two whole KV blocks
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["cached_tokens"] == 128 and set(row) >= {"ttft_first_ms", "ttft_second_ms", "ttft_ratio"}


def test_bench_context_reports_mla_kv_bytes_per_length(tiny_model):
    """KV per position is MLA's (R + Dr) x layers x dtype; lengths come back in ascending order."""
    d = tiny_model("deepseek_v3")[0]
    r = hymoe("bench", "context", d, "--tokens", "200,40", "--gen-tokens", 3, "--dtype", "float32", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    per_token = (32 + 8) * 3 * 4  # kv_lora_rank + qk_rope_head_dim, 3 layers, float32 cache
    assert [row["tokens"] for row in rows] == [40, 200]
    for row in rows:
        assert row["kv_bytes_per_token"] == per_token and row["kv_bytes"] == per_token * (row["tokens"] + 3)
        assert row["prefill_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0
        assert row["peak_rss_bytes"] >= row["rss_after_load_bytes"] > 0


def test_bench_context_refuses_lengths_past_the_context(tiny_model):
    d = tiny_model("deepseek_v3")[0]
    r = hymoe("bench", "context", d, "--tokens", "600")
    assert r.returncode != 0 and "context holds 512" in r.stderr and "Traceback" not in r.stderr


def test_bench_serve_soak_reports_memory_and_no_lost_request(cache_env):
    r = hymoe("bench", "serve", "--soak", 12, "--users", 2, "--json", env=cache_env)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["requests"] > 0 and row["failed"] == 0 and row["lost"] == 0 and row["slots_held_at_end"] == 0
    assert len(row["rss_samples"]) >= 2 and all(s["rss_bytes"] > 0 for s in row["rss_samples"])
    assert isinstance(row["rss_growth_after_warmup"], float)
