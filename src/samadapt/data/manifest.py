"""Folders samadapt writes whole (datasets, pseudo-labels, comparisons) and how it knows them again.

Each such folder is written through :func:`samadapt._io.atomic_dir` and gets a
``samadapt.json`` listing every file in it with its size. ``--overwrite`` may replace an
existing folder only when it still holds those files alone, at those sizes, under the same
kind: a user's own dataset, a file added to a built one or a pseudo-label corrected by hand
makes the folder the user's, and it is refused rather than deleted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from samadapt import __version__
from samadapt._io import atomic_dir, check_replaceable
from samadapt.errors import OutputExistsError

MANIFEST = "samadapt.json"
#: Kinds of folder, as messages name them ("... replaces only a previous dataset").
DATASET = "dataset"
PSEUDO_LABELS = "pseudo-labelled dataset"
MODE_COMPARISON = "prompt-mode comparison"


def _files(folder: Path) -> dict[str, int]:
    """Every entry below ``folder`` but the manifest (symbolic links to folders included, not
    followed), as its path relative to ``folder`` with ``/`` -> size in bytes."""
    found: dict[str, int] = {}
    for top, dirs, files in os.walk(folder):
        base = Path(top)
        links = [d for d in dirs if (base / d).is_symlink()]
        for name in files + links:
            path = base / name
            found[path.relative_to(folder).as_posix()] = path.lstat().st_size
    found.pop(MANIFEST, None)
    return found


def write_manifest(folder: Path, kind: str) -> Path:
    """Write ``folder/samadapt.json`` recording ``kind`` and every file now in ``folder``."""
    doc = {"samadapt_version": __version__, "kind": kind, "files": dict(sorted(_files(folder).items()))}
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path


def _changed(folder: Path, kind: str) -> list[str] | None:
    """Files of ``folder`` added or changed since samadapt wrote it as ``kind``; None when its
    manifest is missing, unreadable or of another kind."""
    try:
        doc = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("kind") != kind or not isinstance(doc.get("files"), dict):
        return None
    written = doc["files"]
    return sorted(name for name, size in _files(Path(folder)).items() if written.get(name) != size)


def is_written_folder(folder: Path, kind: str) -> bool:
    """True when ``folder`` holds a ``kind`` samadapt wrote, and nothing added or changed since."""
    return _changed(folder, kind) == []


def check_output_folder(out_dir: Path, *, kind: str, overwrite: bool) -> None:
    """Refuse, before any work, an output folder :func:`output_folder` would refuse.

    Raises:
        OutputExistsError: ``out_dir`` holds files samadapt did not write as ``kind`` (files
            added to or changed in a previous one included), or a previous ``kind`` and
            ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    changed = _changed(out_dir, kind) if out_dir.is_dir() else None
    if changed:
        shown = ", ".join(changed[:3]) + (", …" if len(changed) > 3 else "")
        raise OutputExistsError(
            f"{out_dir} holds a {kind} samadapt wrote, but files were added to it or changed since ({shown}); move "
            f"them out or choose a new or empty folder: --overwrite replaces only what samadapt wrote"
        )
    check_replaceable(out_dir, overwrite=overwrite, kind=kind, owned=lambda f: is_written_folder(f, kind))


@contextmanager
def output_folder(out_dir: Path, *, kind: str, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it gets its manifest and replaces ``out_dir``.

    A failed or interrupted write leaves ``out_dir`` as it was.

    Args:
        out_dir: the folder to write.
        kind: one of :data:`DATASET`, :data:`PSEUDO_LABELS`, :data:`MODE_COMPARISON`.
        overwrite: replace an ``out_dir`` that holds a previous ``kind`` samadapt wrote, unchanged.

    Raises:
        OutputExistsError: ``out_dir`` holds anything else, or a previous ``kind`` without ``overwrite``.
    """
    check_output_folder(out_dir, kind=kind, overwrite=overwrite)
    with atomic_dir(Path(out_dir), overwrite=overwrite, kind=kind,
                    owned=lambda f: is_written_folder(f, kind)) as tmp:
        yield tmp
        write_manifest(tmp, kind)
