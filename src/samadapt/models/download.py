"""Resumable, checksummed downloads of plain files: the original releases (Meta's ``.pth``).

Files of Hugging Face repositories go through ``huggingface_hub`` (:mod:`samadapt.models.hub`);
this small downloader serves the original releases, which are plain files on a web server.
A file is streamed into ``<dest>.part`` next to its destination. An interrupted download
leaves the part behind and the next call resumes it with an HTTP ``Range`` request. The
finished file is hashed (over every byte, resumed prefix included) and only then renamed to
``dest`` with :func:`os.replace`, so ``dest`` never exists half-written.

Expected digests are given by the caller: a sha256 and/or an md5, each in full or as a prefix
of at least 6 hex digits, as at the end of Meta's SAM names (``sam_vit_b_01ec64.pth``: the
first digits of the file's md5). These functions are called explicitly, never from constructors.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from samadapt._io import move_into_place
from samadapt.errors import DownloadError, InputError

__all__ = ["download_file", "fetch_official"]

_HEX_PREFIX = re.compile(r"[0-9a-f]{6,64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


class _RestartFromZero(Exception):
    """The part file cannot be resumed (the server disagrees about its size)."""


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 30.0,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    verify_existing: bool = False,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous attempt and checking its digests.

    If ``dest`` already exists it is returned without any request (re-hashed first when
    ``verify_existing`` is true and a digest is given). Otherwise the body is streamed into
    ``<dest>.part``; an existing part is resumed with ``Range: bytes=<size>-`` (a 206
    appends, a 200 restarts from zero, a 416 means the part is already complete).
    Redirects are followed. The finished file is verified and then atomically renamed.

    Args:
        url: ``http://`` or ``https://`` URL of the file.
        dest: Final path of the file; its folder is created.
        sha256: Expected sha256, all 64 hex digits or a prefix of at least 6.
        md5: Expected md5, all 32 hex digits or a prefix of at least 6 (Meta's SAM names end
            with one). Without either digest, the file is not checked.
        timeout: Seconds allowed for connecting and for each read or write.
        progress: Show a progress bar (bytes, speed, time left) on stderr when the size
            is known.
        chunk_size: Bytes buffered per file write and per read while hashing.
        verify_existing: Re-hash an existing ``dest`` against the digests.

    Returns:
        ``dest``.

    Raises:
        InputError: ``url``, a digest, ``timeout`` or ``chunk_size`` is malformed.
        DownloadError: The network or server failed (the ``.part`` is kept for a later
            resume), or a digest did not match (the ``.part`` is deleted; an existing
            ``dest`` checked with ``verify_existing`` is left in place).
    """
    dest = Path(dest)
    given = (("sha256", _normalize(sha256, "sha256", 64)), ("md5", _normalize(md5, "md5", 32)))
    expected = {name: d for name, d in given if d is not None}
    if not url.startswith(("http://", "https://")):
        raise InputError(f"Download URL {url!r} is not http(s); give an http:// or https:// URL.")
    if not timeout > 0:
        raise InputError(f"timeout={timeout!r} is not positive; give the seconds to wait, e.g. 30.")
    if chunk_size < 1:
        raise InputError(
            f"chunk_size={chunk_size!r} is not positive; give a byte count, e.g. 1 << 20."
        )

    if dest.exists():
        if verify_existing and expected:
            wrong = _mismatch(dest, expected, chunk_size)
            if wrong:
                raise DownloadError(f"Existing file {dest} has {wrong}; delete it and run the download again.")
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with httpx.Client(
            follow_redirects=True,
            timeout=httpx.Timeout(timeout),
            # Ranges are byte offsets into the stored file, so ask for it unencoded.
            headers={"Accept-Encoding": "identity", "User-Agent": "samadapt"},
        ) as client:
            try:
                _fetch(client, url, part, dest.name, progress, chunk_size)
            except _RestartFromZero:
                part.unlink(missing_ok=True)
                _fetch(client, url, part, dest.name, progress, chunk_size)
    except httpx.TimeoutException as exc:
        raise DownloadError(_offline_message(url, f"no answer within {timeout:g} s", dest)) from exc
    except httpx.HTTPStatusError as exc:
        response = exc.response
        reason = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
        raise DownloadError(_offline_message(url, reason, dest)) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise DownloadError(_offline_message(url, reason, dest)) from exc

    wrong = _mismatch(part, expected, chunk_size)
    if wrong:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"Downloaded {dest.name} from {url} has {wrong}, so it was deleted; run the download again, "
            "and if it fails the same way the file on the server differs from the recorded checksum."
        )
    move_into_place(part, dest)
    return dest


def fetch_official(name: str, *, progress: bool = True) -> Path:
    """Download the original release of a registry model (Meta's ``.pth`` / ``.pt``) into samadapt's folder.

    The file lands in ``$SAMADAPT_HOME/models/official/`` and is checked against every digest
    the registry records for it, and against the digest its own name carries.

    Raises:
        ModelNotFoundError: unknown name, or a model with no original release.
        DownloadError: as :func:`download_file`.
    """
    from samadapt._home import models_dir
    from samadapt.errors import ModelNotFoundError
    from samadapt.models.registry import get_spec

    spec = get_spec(name)
    release = spec.official
    if release is None:
        raise ModelNotFoundError(f"{name} has no original release to download; use `samadapt models fetch {name}`")
    md5 = release.md5
    if release.name_digest == "md5" and md5 is None:
        md5 = Path(release.file).stem.rsplit("_", 1)[-1]
    return download_file(release.url, models_dir() / "official" / release.file, sha256=release.sha256, md5=md5,
                         progress=progress, verify_existing=True)


def _fetch(client: httpx.Client, url: str, part: Path, label: str, progress: bool, chunk_size: int) -> None:
    """Stream ``url`` into ``part``, resuming it."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and offset:
            _, _, total = _parse_content_range(response.headers.get("Content-Range"))
            if total is not None and total != offset:
                raise _RestartFromZero
            return
        response.raise_for_status()
        if response.status_code == 206 and offset:
            start, _, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise _RestartFromZero
            if total is None:
                total = _content_length(response)
                total = None if total is None else offset + total
            mode = "ab"
        else:
            # A 200 (server ignored Range) or a first request: start from zero.
            offset, total, mode = 0, _content_length(response), "wb"
        with open(part, mode, buffering=chunk_size) as out, _progress_bar(
            progress, label, total, offset
        ) as advance:
            # Chunks are written as they arrive (not re-chunked), so an interruption
            # keeps every byte received and the resume starts exactly after it.
            for chunk in response.iter_bytes():
                out.write(chunk)
                advance(len(chunk))
        size = part.stat().st_size
        if total is not None and size != total:
            raise httpx.ReadError(f"the connection ended after {size} of {total} bytes")


def _offline_message(url: str, reason: str, dest: Path) -> str:
    return (
        f"Could not download {url} ({reason}); no network? download the file yourself and put "
        f"it at {dest}, keeping any {dest.name}.part next to it so a later run can resume."
    )


def _normalize(digest: str | None, algorithm: str, length: int) -> str | None:
    if digest is None:
        return None
    value = digest.strip().lower()
    if not _HEX_PREFIX.fullmatch(value) or len(value) > length:
        raise InputError(
            f"{algorithm}={digest!r} is not a hex digest; give the {length} hex digits or a prefix of at least 6."
        )
    return value


def _mismatch(path: Path, expected: dict[str, str], chunk_size: int) -> str:
    """'' when ``path`` has every expected digest (a prefix is enough), else what it has instead."""
    if not expected:
        return ""
    hashers = {name: hashlib.new(name) for name in expected}
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            for h in hashers.values():
                h.update(block)
    wrong = [f"{name} {hashers[name].hexdigest()} but {want} was expected"
             for name, want in expected.items() if not hashers[name].hexdigest().startswith(want)]
    return "; ".join(wrong)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``(start, end, total)`` of ``bytes a-b/n`` or ``bytes */n``; None where unknown."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        return None, None, None
    start, end, total = match.groups()
    return (
        None if start is None else int(start),
        None if end is None else int(end),
        None if total in (None, "*") else int(total),
    )


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


@contextmanager
def _progress_bar(
    enabled: bool, label: str, total: int | None, done: int
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(nbytes)``; draws a rich bar on stderr only when enabled and sized."""
    if not enabled or total is None:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from samadapt.progress import progress_bar

    bar = progress_bar(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    with bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda n: bar.advance(task, n)
