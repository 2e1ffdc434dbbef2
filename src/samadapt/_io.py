"""Atomic writes shared by every module that creates folders or figures."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from samadapt.errors import InputError, OutputExistsError, SamadaptError


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
        folder = _nearest_existing(key.parent)
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"{flag} {path} cannot be written: {folder} is not a folder this user may write to")


def _nearest_existing(folder: Path) -> Path:
    """``folder`` itself, or the nearest folder above it that exists (the one a write would create
    the rest under)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


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


def move_into_place(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` in one step (same file system), replacing a file at ``dst``.

    The one rename in samadapt: every atomic write ends here, so a reader sees the old ``dst``
    or the new one, never a part.
    """
    os.replace(src, dst)


@contextmanager
def atomic_dir(out_dir: Path, *, overwrite: bool = False, kind: str = "output folder",
               owned: Callable[[Path], bool] | None = None, keep_if_present: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``out_dir`` in one rename.

    Args:
        out_dir: the folder to write.
        overwrite: replace an existing ``out_dir`` that ``owned`` recognises as a previous ``kind``.
        kind: what the folder holds, for messages.
        owned: tells whether an existing folder holds only a previous ``kind``; None: only a
            missing or empty folder may be written.
        keep_if_present: when ``out_dir`` appears while the folder is being written (another
            process wrote the same thing), keep it and drop this one.

    Raises:
        OutputExistsError: see :func:`check_replaceable`.
    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir, overwrite=overwrite, kind=kind, owned=owned or (lambda _: False))
    tmp: Path | None = None
    try:
        with writing(out_dir):
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result gets the user's umask
            yield tmp
            if out_dir.exists() and keep_if_present:
                return  # another process finished the same folder first: theirs stays, ours goes
            if out_dir.exists():
                old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
                move_into_place(out_dir, old)
                shutil.rmtree(old, ignore_errors=True)
            try:
                move_into_place(tmp, out_dir)
            except OSError:
                if not (keep_if_present and out_dir.is_dir()):
                    raise
    except OSError as e:
        temp_prefix = str(out_dir.parent / f".{out_dir.name}.")
        if isinstance(e, SamadaptError) or not str(e.filename or "").startswith(temp_prefix):
            raise
        raise OSError(e.errno, e.strerror, str(out_dir)) from e  # name the folder asked for, not its temp
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def new_folder(folder: Path) -> Iterator[Path]:
    """Create ``folder`` (and missing parents) for the work inside; afterwards, remove the folders
    this call created that are still empty, so a command that wrote nothing leaves no trace."""
    folder = Path(folder)
    created: list[Path] = []
    probe = Path(os.path.abspath(folder))
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        for made in created:  # deepest first
            try:
                made.rmdir()
            except OSError:
                break


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def check_target(path: Path, *, overwrite: bool) -> None:
    """Refuse an output file that exists (unless ``overwrite``) or is a folder.

    Raises:
        OutputExistsError: naming ``path`` and what to do.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; give a file name for the output")


#: Files SQLite (GeoPackage) may leave beside a database whose write failed half way.
_JOURNALS = ("-journal", "-wal", "-shm")


@contextmanager
def atomic_file(path: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); on success it replaces ``path`` in
    one rename. Missing parent folders are created. On any failure the temporary file (and any
    SQLite journal beside it) is removed and ``path`` is as it was; a failure of the operating
    system is raised as an ``OSError`` naming ``path`` (GDAL and OGR report a full disk in their
    own words).

    Args:
        path: the file to write.
        overwrite: replace an existing ``path``; False refuses it before anything is written.

    Raises:
        OutputExistsError: see :func:`check_target`.
    """
    path = Path(path)
    check_target(path, overwrite=overwrite)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            move_into_place(tmp, path)
    finally:
        for leftover in (tmp, *(tmp.with_name(tmp.name + s) for s in _JOURNALS)):
            leftover.unlink(missing_ok=True)


def save_figure(fig: Any, path: Path, *, dpi: int = 90) -> Path:
    """Save a matplotlib figure to a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def write_json(path: Path, doc: Any, *, overwrite: bool = True) -> Path:
    """Write ``doc`` as indented JSON through a temporary file renamed over ``path``.

    Raises:
        OutputExistsError: see :func:`check_target`.
    """
    path = Path(path)
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    return path


#: Below this many free bytes, a write that failed for a reason its library does not name is
#: taken to have failed because the disk is full.
NEARLY_FULL_BYTES = 1 << 20

_ERRNO_IN_TEXT = (
    (re.compile(r"os error (\d+)|errno (\d+)|\[Errno (\d+)\]", re.I), None),
    (re.compile(r"no space left on device|disk full|file too large", re.I), errno.ENOSPC),
    (re.compile(r"read-only file system", re.I), errno.EROFS),
    (re.compile(r"permission denied", re.I), errno.EACCES),
)


def errno_of(exc: BaseException, path: Path | None = None) -> int | None:
    """The operating-system error behind a library's failure to write, if one can be told.

    safetensors, torch, GDAL and OGR wrap a failed ``write`` in their own exceptions, some with
    the errno in their text, some with nothing at all; for those, a folder with almost no free
    space is taken as the cause.
    """
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    text = str(exc)
    for pattern, code in _ERRNO_IN_TEXT:
        match = pattern.search(text)
        if match:
            return code if code is not None else int(next(g for g in match.groups() if g))
    if path is not None:
        try:
            if shutil.disk_usage(_nearest_existing(Path(os.path.abspath(path)).parent)).free < NEARLY_FULL_BYTES:
                return errno.ENOSPC
        except OSError:
            pass
    return None


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Re-raise any failure to write ``path`` that comes from the operating system as an
    ``OSError`` naming ``path``, whichever library raised it, so the CLI can say one sentence.

    Failures with no operating-system cause (a bug, a bad value) pass through unchanged.
    """
    try:
        yield
    except OSError as e:
        if e.filename is None and not isinstance(e, SamadaptError):
            raise OSError(e.errno or errno.EIO, e.strerror or str(e), str(path)) from e
        raise
    except SamadaptError:
        raise
    except Exception as e:
        code = errno_of(e, path)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from e


def describe_os_error(exc: OSError) -> str:
    """One sentence for an operating-system failure: what happened to which path, and what to do."""
    path = exc.filename or ""
    code = exc.errno
    if code == errno.ENOSPC or code == errno.EDQUOT:
        return f"the disk holding {path} is full; free some space or write to another folder"
    if code == errno.EROFS:
        return f"cannot write {path}: it is on a read-only file system; write to another folder"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied for {path}; choose a folder this user may write to"
    if code == errno.ENOENT:
        return f"{path} does not exist" if path else f"a file does not exist ({exc.strerror or exc})"
    if code == errno.EISDIR:
        return f"{path} is a folder where a file was expected; remove it or choose another path"
    if code == errno.ENOTDIR:
        return f"a part of {path} is a file where a folder was expected"
    reason = exc.strerror or str(exc)
    return f"{path}: {reason}" if path else reason
