"""A Hugging Face hub cache laid out as ``huggingface_hub`` writes it, for tests that must not download.

``models--owner--name/blobs/<etag>`` holds each file's bytes (an LFS file's etag is its sha256,
a small file's the git blob sha1), ``snapshots/<commit>/<file>`` links to its blob, and
``refs/main`` names the commit.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5")


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a file's bytes (the etag the hub sends for a file not in LFS)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def etag_of(name: str, data: bytes) -> str:
    """The etag the hub publishes for a file: sha256 for LFS files, git's sha1 otherwise."""
    return hashlib.sha256(data).hexdigest() if name.endswith(LFS_SUFFIXES) else git_blob_sha1(data)


def put_in_hf_cache(hub_cache: Path, repo_id: str, files: Iterable[Path], *, commit: str = "0" * 40,
                    ref: str | None = "main") -> Path:
    """Lay ``files`` out as the cached snapshot ``commit`` of ``repo_id``; return the snapshot folder.

    With ``ref=None`` no ``refs/`` is written (a cache copied by hand, snapshots alone).
    """
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for path in files:
        data = Path(path).read_bytes()
        blob = repo / "blobs" / etag_of(Path(path).name, data)
        blob.write_bytes(data)
        link = snapshot / Path(path).name
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, snapshot))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot
