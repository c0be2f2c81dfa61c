"""A Hugging Face hub cache written by hand, file for file as `hf download` leaves it:

    <cache>/models--<org>--<name>/blobs/<sha256>                 the file contents
    <cache>/models--<org>--<name>/snapshots/<commit>/<path>      relative symlinks to blobs
    <cache>/models--<org>--<name>/refs/main                      the commit (no newline)

so that tests can put tiny models in a temporary cache and load them by id, offline,
through the same code (`from_pretrained(id, local_files_only=True)`) that loads a real
checkpoint. `huggingface_hub.scan_cache_dir` reads the result as a valid cache.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def save_to_hub_cache(directory: Path | str, repo_id: str, cache_dir: Path | str,
                      skip: tuple[str, ...] = ()) -> Path:
    """Put every file of `directory` (a `save_pretrained` output) into `cache_dir` as
    revision `main` of model `repo_id`; files whose relative path ends with one of `skip`
    are left out (a partial download). Returns the snapshot directory."""
    from huggingface_hub.file_download import repo_folder_name

    directory = Path(directory)
    repo = Path(cache_dir) / repo_folder_name(repo_id=repo_id, repo_type="model")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not str(p).endswith(skip))
    commit = _commit_of(directory, files)
    snapshot = repo / "snapshots" / commit
    for path in files:
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / path.relative_to(directory)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def _commit_of(directory: Path, files: list[Path]) -> str:
    """A 40-hex commit id derived from the files, as a git commit would be."""
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def use_hub_cache(monkeypatch, cache_dir: Path | str) -> Path:
    """Make this process read `cache_dir` as its Hugging Face hub cache, as HF_HUB_CACHE
    would at start-up (huggingface_hub reads the variable once, when it is imported)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    return Path(cache_dir)


def write_files(directory: Path | str, files: dict[str, bytes | int | dict]) -> Path:
    """A model directory from {relative path: bytes, a size (a sparse file of that many
    bytes), or a dict (written as JSON)}."""
    import json

    directory = Path(directory)
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            path.write_text(json.dumps(content))
        elif isinstance(content, int):
            with path.open("wb") as file:
                file.truncate(content)
        else:
            path.write_bytes(content)
    return directory
