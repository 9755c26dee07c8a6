"""Models named as on the Hugging Face hub (`Qwen/Qwen3-30B-A3B`, `unsloth/DeepSeek-R1-GGUF:Q4_K_M`),
found in the local hub cache the way transformers and vLLM find them: $HF_HUB_CACHE, else
$HF_HOME/hub, else ~/.cache/huggingface/hub. hymoe downloads nothing.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from hymoe.errors import HymoeError

_SPLIT = re.compile(r"-(\d{5})-of-\d{5}\.gguf$")  # llama.cpp's split files: the first part names the model


def cache_dir() -> Path:
    if hub := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(hub)
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home) / "hub"


def gguf_files(snapshot: Path) -> list[Path]:
    """The model files of a snapshot: each .gguf, a split model by its first part."""
    return sorted(p for p in snapshot.rglob("*.gguf") if (m := _SPLIT.search(p.name)) is None or m.group(1) == "00001")


def _pick_gguf(name: str, snapshot: Path, tag: str) -> Path:
    files = gguf_files(snapshot)
    chosen = [p for p in files if tag.lower() in p.name.lower()] if tag else files
    if len(chosen) == 1:
        return chosen[0]
    listed = ", ".join(p.relative_to(snapshot).as_posix() for p in files) or "none"
    what = f"no GGUF file matching {tag!r}" if not chosen else f"{len(chosen)} GGUF files; name one with {name}:QUANT"
    raise HymoeError(f"{name}: {what} in {snapshot} (files: {listed})")


def resolve(name: str | Path) -> Path:
    """A path that exists, as given; else a hub repo id (with :QUANT for a GGUF repo) in the cache."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    repo, _, tag = str(name).partition(":")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise HymoeError(f"{name}: no such file or directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo, local_files_only=True, cache_dir=cache_dir()))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise HymoeError(f"{name}: no such file or directory, and no {repo} in the Hugging Face cache "
                         f"{cache_dir()} (hymoe downloads nothing: `hf download {repo}` fetches it)") from None
    if tag or not (snapshot / "config.json").is_file():
        return _pick_gguf(name, snapshot, tag)
    return snapshot


def cached_models() -> list[dict]:
    """Every model repo in the cache: its id, size on disk and what hymoe can open in it."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir())
    except CacheNotFound:
        return []
    rows = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            snapshot = Path(rev.snapshot_path)
            ggufs = gguf_files(snapshot)
            kind = "gguf" if ggufs else "hf" if (snapshot / "config.json").is_file() else None
            if kind:
                rows.append({"name": repo.repo_id, "kind": kind, "size_bytes": repo.size_on_disk,
                             "files": [p.relative_to(snapshot).as_posix() for p in ggufs], "path": str(snapshot),
                             "refs": sorted(rev.refs)})
    return rows
