"""Atomic writes shared by every module that creates folders or figures."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from samadapt.errors import InputError, OutputExistsError


def check_writable(paths: list[Path], *, flag: str = "--out") -> None:
    """Refuse, before any work, outputs that could not all be written: the same path given twice,
    or a folder (or the nearest existing one above it) that this user cannot write to.

    Checking every output first means a failure never leaves some outputs written and others not.

    Raises:
        OutputExistsError: a path is given twice.
        InputError: a folder is not writable.
    """
    seen: set[Path] = set()
    for path in paths:
        key = Path(os.path.abspath(path))
        if key in seen:
            raise OutputExistsError(f"{flag} {path} is given twice; give each output once")
        seen.add(key)
        folder = key.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"{flag} {path} cannot be written: {folder} is not a folder this user may write to")


def check_replaceable(out_dir: Path, *, overwrite: bool, kind: str, owned: Callable[[Path], bool]) -> None:
    """Refuse an output folder whose replacement would lose something samadapt did not write.

    A missing or empty folder is fine. A folder holding a previous ``kind`` (``owned`` says
    so) may be replaced with ``overwrite``. Anything else (a user's files, another artefact)
    is never replaced, ``overwrite`` or not.

    Raises:
        OutputExistsError: naming the folder, what it holds and what to do.
    """
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} is a file, not a folder for the {kind}; choose another path")
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return
    if not owned(out_dir):
        shown = ", ".join(entries[:4]) + (", …" if len(entries) > 4 else "")
        raise OutputExistsError(
            f"{out_dir} holds files samadapt did not write as a {kind} ({shown}); choose a new or empty folder: "
            f"--overwrite replaces only a previous {kind}"
        )
    if not overwrite:
        raise OutputExistsError(f"{out_dir} exists; pass --overwrite to replace the {kind} it holds")


@contextmanager
def atomic_dir(out_dir: Path, *, overwrite: bool = False, kind: str = "output folder",
               owned: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``out_dir`` in one rename.

    Args:
        out_dir: the folder to write.
        overwrite: replace an existing ``out_dir`` that ``owned`` recognises as a previous ``kind``.
        kind: what the folder holds, for messages.
        owned: tells whether an existing folder holds only a previous ``kind``; None: only a
            missing or empty folder may be written.

    Raises:
        OutputExistsError: see :func:`check_replaceable`.
    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir, overwrite=overwrite, kind=kind, owned=owned or (lambda _: False))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result gets the user's umask
        yield tmp
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
            os.replace(out_dir, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def save_figure(fig: Any, path: Path, *, dpi: int = 90) -> Path:
    """Save a matplotlib figure to a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_json(path: Path, doc: Any, *, overwrite: bool = True) -> Path:
    """Write ``doc`` as indented JSON through a temporary file renamed over ``path``.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
