"""Digests of weights files: the sha256 samadapt computes, and the one the Hugging Face hub published.

Both the hub client (which checks each download) and the loader (which keys embedding caches
by the weights' digest) need them, so they live here, below both.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from samadapt._home import samadapt_home
from samadapt._io import atomic_file

__all__ = ["file_sha256", "published_sha256"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered under ``$SAMADAPT_HOME/digests`` by its real path, size and mtime.

    The record is kept in samadapt's own folder, never beside the file: model folders may be
    read-only or belong to the Hugging Face cache, which other tools manage.

    Args:
        path: the file; a symbolic link is followed.

    Returns:
        The digest as 64 lowercase hex digits.
    """
    real = Path(path).resolve()
    st = real.stat()
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    record = samadapt_home() / "digests" / hashlib.sha256(str(real).encode()).hexdigest()[:32]
    try:
        saved_stamp, digest = record.read_text().split()
        if saved_stamp == stamp and len(digest) == 64:
            return digest
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(record) as tmp:
            tmp.write_text(f"{stamp} {digest}\n")
    except OSError:
        pass  # an unwritable home only costs hashing again next time
    return digest


def published_sha256(path: Path) -> str | None:
    """The sha256 the hub published for a file of the Hugging Face cache, or None.

    An LFS file's snapshot entry links to a blob named by its sha256 (what the hub sent as its
    ``X-Linked-Etag``); a file outside that layout, or a small file (named by its git sha1),
    has no such record.
    """
    name = Path(path).resolve().name
    return name if Path(path).is_symlink() and _SHA256.fullmatch(name) else None
