"""Models named by hub repo id, found in a local Hugging Face cache laid out as huggingface_hub
lays it out (blobs, snapshots of symlinks, refs); nothing is downloaded."""
import hashlib
import json
import shutil
import subprocess
import sys

import pytest

from hymoe.errors import HymoeError
from hymoe.hub import cached_models, resolve
from hymoe.loader.open import open_model


def cache_repo(cache, repo: str, files: dict, commit: str = "a" * 40):
    """files: name in the snapshot -> source path. Returns the snapshot directory."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    for name, src in files.items():
        data = src.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub(tmp_path, tiny_model, gguf_model, monkeypatch):
    cache = tmp_path / "hub"
    d = tiny_model("qwen3_moe")[0]
    hf = cache_repo(cache, "acme/Tiny-MoE", {p.name: p for p in d.iterdir() if p.is_file()})
    gguf = gguf_model("qwen2_moe", "Q8_0")[1]
    cache_repo(cache, "acme/Tiny-MoE-GGUF", {"tiny-Q8_0.gguf": gguf, "q4/tiny-Q4_K_M-00001-of-00002.gguf": gguf,
                                           "q4/tiny-Q4_K_M-00002-of-00002.gguf": gguf}, commit="b" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache, hf


def test_a_repo_id_opens_its_cached_snapshot(hub):
    cache, snapshot = hub
    assert resolve("acme/Tiny-MoE") == snapshot
    assert open_model("acme/Tiny-MoE").config.model_type == "qwen3_moe"


def test_a_gguf_repo_takes_a_quant_tag(hub):
    assert resolve("acme/Tiny-MoE-GGUF:q8_0").name == "tiny-Q8_0.gguf"
    assert resolve("acme/Tiny-MoE-GGUF:Q4_K_M").name == "tiny-Q4_K_M-00001-of-00002.gguf"  # a split: its first part
    with pytest.raises(HymoeError, match="2 GGUF files; name one"):
        resolve("acme/Tiny-MoE-GGUF")
    with pytest.raises(HymoeError, match="no GGUF file matching 'IQ1_S'.*tiny-Q8_0.gguf"):
        resolve("acme/Tiny-MoE-GGUF:IQ1_S")


def test_a_missing_repo_says_where_it_looked(hub):
    cache, _ = hub
    with pytest.raises(HymoeError, match=f"no acme/Nothing in the Hugging Face cache {cache}"):
        resolve("acme/Nothing")
    with pytest.raises(HymoeError, match="no such file or directory$"):
        resolve("/no/such/dir")


def test_list_shows_the_cached_models(hub):
    cache, _ = hub
    rows = {r["name"]: r for r in cached_models()}
    assert rows["acme/Tiny-MoE"]["kind"] == "hf" and rows["acme/Tiny-MoE"]["size_bytes"] > 0
    assert rows["acme/Tiny-MoE-GGUF"]["files"] == ["q4/tiny-Q4_K_M-00001-of-00002.gguf", "tiny-Q8_0.gguf"]
    env = {"HF_HUB_CACHE": str(cache), "PATH": "/usr/bin:/bin", "HOME": str(cache)}
    out = subprocess.run([sys.executable, "-m", "hymoe.cli", "list", "--json"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert {r["name"] for r in json.loads(out.stdout)} == {"acme/Tiny-MoE", "acme/Tiny-MoE-GGUF"}
    gen = subprocess.run([sys.executable, "-m", "hymoe.cli", "generate", "acme/Tiny-MoE", "--prompt-ids", "1,2,3",
                          "--max-new-tokens", "2", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert gen.returncode == 0, gen.stderr
    shutil.rmtree(cache / "models--acme--Tiny-MoE")
    gone = subprocess.run([sys.executable, "-m", "hymoe.cli", "generate", "acme/Tiny-MoE", "--prompt", "hi"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert gone.returncode == 1 and "in the Hugging Face cache" in gone.stderr and "Traceback" not in gone.stderr
