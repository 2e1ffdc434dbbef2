"""Resumable, checksummed downloads of model files.

A file is streamed into ``<dest>.part`` next to its destination. An interrupted download
leaves the part behind and the next call resumes it with an HTTP ``Range`` request. The
finished file is hashed (sha256, over every byte, resumed prefix included) and only then
renamed to ``dest`` with :func:`os.replace`, so ``dest`` never exists half-written.

The expected digest is either given by the caller (the full 64 hex digits, or a prefix of
at least 6, as at the end of Meta's checkpoint names such as ``sam_vit_b_01ec64.pth``) or
taken from the server: Hugging Face reports an LFS file's sha256 in ``X-Linked-Etag``.

These functions are the only place samadapt talks to a model hub; they are called
explicitly, never from constructors.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import httpx

from samadapt._io import write_json
from samadapt.errors import DownloadError, InputError

__all__ = ["download_file", "download_hf_model", "hf_endpoint", "hf_file_url"]

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
COMPLETE_MARKER = ".complete"

_FULL_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEX_PREFIX = re.compile(r"[0-9a-f]{6,64}")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


class _RestartFromZero(Exception):
    """The part file cannot be resumed (the server disagrees about its size)."""


def hf_endpoint() -> str:
    """Return the base URL of the Hugging Face hub to download from.

    ``$SAMADAPT_HF_ENDPOINT`` wins over ``$HF_ENDPOINT`` (the variable huggingface_hub
    reads, so a mirror configured for it also serves samadapt); empty values are ignored.

    Returns:
        The endpoint without a trailing slash, by default ``"https://huggingface.co"``.
    """
    for name in ("SAMADAPT_HF_ENDPOINT", "HF_ENDPOINT"):
        value = os.environ.get(name, "").strip()
        if value:
            return value.rstrip("/")
    return DEFAULT_HF_ENDPOINT


def hf_file_url(repo_id: str, filename: str, revision: str = "main") -> str:
    """Return the download URL of one file of a Hugging Face model repository.

    Args:
        repo_id: Repository id such as ``"facebook/sam-vit-base"``.
        filename: Path of the file inside the repository, with ``/`` separators.
        revision: Branch, tag or commit hash; ``/`` in it (``refs/pr/1``) is escaped.

    Returns:
        ``f"{hf_endpoint()}/{repo_id}/resolve/{revision}/{filename}"``, percent-encoded.
    """
    return (
        f"{hf_endpoint()}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename, safe='/')}"
    )


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    timeout: float = 30.0,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    verify_existing: bool = False,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous attempt and checking its sha256.

    If ``dest`` already exists it is returned without any request (re-hashed first when
    ``verify_existing`` is true and a digest is given). Otherwise the body is streamed into
    ``<dest>.part``; an existing part is resumed with ``Range: bytes=<size>-`` (a 206
    appends, a 200 restarts from zero, a 416 means the part is already complete).
    Redirects are followed. The finished file is verified and then atomically renamed.

    Args:
        url: ``http://`` or ``https://`` URL of the file.
        dest: Final path of the file; its folder is created.
        sha256: Expected digest, all 64 hex digits or a prefix of at least 6. When None,
            a 64-hex ``X-Linked-Etag`` or ``ETag`` sent by the server is used instead
            (Hugging Face sends an LFS file's sha256 there); without either, no check.
        timeout: Seconds allowed for connecting and for each read or write.
        progress: Show a progress bar (bytes, speed, time left) on stderr when the size
            is known.
        chunk_size: Bytes buffered per file write and per read while hashing.
        verify_existing: Re-hash an existing ``dest`` against ``sha256``.

    Returns:
        ``dest``.

    Raises:
        InputError: ``url``, ``sha256``, ``timeout`` or ``chunk_size`` is malformed.
        DownloadError: The network or server failed (the ``.part`` is kept for a later
            resume), or the digest did not match (the ``.part`` is deleted; an existing
            ``dest`` checked with ``verify_existing`` is left in place).
    """
    dest = Path(dest)
    expected = _normalize_sha256(sha256)
    if not url.startswith(("http://", "https://")):
        raise InputError(f"Download URL {url!r} is not http(s); give an http:// or https:// URL.")
    if not timeout > 0:
        raise InputError(f"timeout={timeout!r} is not positive; give the seconds to wait, e.g. 30.")
    if chunk_size < 1:
        raise InputError(
            f"chunk_size={chunk_size!r} is not positive; give a byte count, e.g. 1 << 20."
        )

    if dest.exists():
        if verify_existing and expected is not None:
            actual = _sha256_of(dest, chunk_size)
            if not actual.startswith(expected):
                raise DownloadError(
                    f"Existing file {dest} has sha256 {actual} but {expected} was expected; "
                    "delete it and run the download again."
                )
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
                header_digest = _fetch(client, url, part, dest.name, progress, chunk_size)
            except _RestartFromZero:
                part.unlink(missing_ok=True)
                header_digest = _fetch(client, url, part, dest.name, progress, chunk_size)
    except httpx.TimeoutException as exc:
        raise DownloadError(_offline_message(url, f"no answer within {timeout:g} s", dest)) from exc
    except httpx.HTTPStatusError as exc:
        response = exc.response
        reason = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
        raise DownloadError(_offline_message(url, reason, dest)) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise DownloadError(_offline_message(url, reason, dest)) from exc

    expected = expected if expected is not None else header_digest
    if expected is not None:
        actual = _sha256_of(part, chunk_size)
        if not actual.startswith(expected):
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"Downloaded {dest.name} from {url} has sha256 {actual} but {expected} was "
                "expected, so it was deleted; run the download again, and if it fails the same "
                "way the file on the server differs from the recorded checksum."
            )
    os.replace(part, dest)
    return dest


def download_hf_model(
    repo_id: str,
    dest_dir: Path,
    *,
    files: Sequence[str] = ("config.json", "model.safetensors"),
    sha256: Mapping[str, str] | None = None,
    revision: str = "main",
    progress: bool = True,
) -> Path:
    """Download files of a Hugging Face model repository into ``dest_dir``.

    Each file goes through :func:`download_file` (resumable, verified). When every file is
    in place a marker ``dest_dir/.complete`` listing them is written atomically; a later
    call asking for files the marker lists returns at once without any request.

    Args:
        repo_id: Repository id such as ``"facebook/sam-vit-base"``.
        dest_dir: Folder to download into; created if missing.
        files: Paths inside the repository to fetch, with ``/`` separators.
        sha256: Optional expected digest (full or prefix of >= 6 hex) per file name; files
            not listed are checked against the digest the hub reports, if any.
        revision: Branch, tag or commit hash.
        progress: Show a progress bar per file on stderr.

    Returns:
        ``dest_dir``.

    Raises:
        InputError: ``repo_id``, ``files`` or ``sha256`` is malformed.
        DownloadError: A file could not be downloaded or verified; files already finished
            stay in ``dest_dir`` but the folder is not marked complete.
    """
    dest_dir = Path(dest_dir)
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise InputError(
            f"Hugging Face repo id {repo_id!r} is malformed; "
            "give 'owner/name', e.g. 'facebook/sam-vit-base'."
        )
    if isinstance(files, str):
        raise InputError(
            f"files={files!r} is a single string; give a list of file names, e.g. [{files!r}]."
        )
    wanted = list(dict.fromkeys(files))
    if not wanted:
        raise InputError("files is empty; name at least one file of the repository to download.")
    for name in wanted:
        pure = PurePosixPath(name)
        bad = not name or pure.is_absolute() or ".." in pure.parts or "\\" in name
        if bad or name == COMPLETE_MARKER:
            raise InputError(
                f"File name {name!r} is not a relative path inside the repository; "
                "give names like 'model.safetensors' or 'subfolder/config.json'."
            )
    digests = dict(sha256 or {})
    unknown = sorted(set(digests) - set(wanted))
    if unknown:
        raise InputError(
            f"sha256 is given for {unknown} which are not in files {wanted}; "
            "fix the names or add them to files."
        )

    marker = dest_dir / COMPLETE_MARKER
    if set(wanted) <= set(_marked_files(marker)):
        return dest_dir

    for name in wanted:
        download_file(
            hf_file_url(repo_id, name, revision),
            dest_dir / name,
            sha256=digests.get(name),
            progress=progress,
        )
    listed = sorted(set(_marked_files(marker)) | set(wanted))
    record = {"repo_id": repo_id, "revision": revision, "files": listed}
    write_json(marker, record)
    return dest_dir


def _fetch(
    client: httpx.Client, url: str, part: Path, label: str, progress: bool, chunk_size: int
) -> str | None:
    """Stream ``url`` into ``part``, resuming it; return the digest the server reported."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and offset:
            _, _, total = _parse_content_range(response.headers.get("Content-Range"))
            if total is not None and total != offset:
                raise _RestartFromZero
            return _digest_from_headers(response)
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
        return _digest_from_headers(response)


def _offline_message(url: str, reason: str, dest: Path) -> str:
    return (
        f"Could not download {url} ({reason}); no network? download the file yourself and put "
        f"it at {dest}, keeping any {dest.name}.part next to it so a later run can resume."
    )


def _normalize_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _HEX_PREFIX.fullmatch(value):
        raise InputError(
            f"sha256={sha256!r} is not a hex digest; "
            "give the 64 hex digits or a prefix of at least 6."
        )
    return value


def _digest_from_headers(response: httpx.Response) -> str | None:
    """First 64-hex ``X-Linked-Etag``, else ``ETag``, over the redirect chain."""
    chain = [*response.history, response]
    for name in ("X-Linked-Etag", "ETag"):
        for resp in chain:
            value = resp.headers.get(name, "").strip()
            if value.startswith("W/"):
                value = value[2:]
            value = value.strip('"').lower()
            if _FULL_SHA256.fullmatch(value):
                return value
    return None


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


def _sha256_of(path: Path, chunk_size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def _marked_files(marker: Path) -> list[str]:
    """Files a ``.complete`` marker lists; empty if absent or unreadable."""
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, list):
        return []
    present = [f for f in files if isinstance(f, str) and (marker.parent / f).is_file()]
    return present if len(present) == len(files) else []


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
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
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
