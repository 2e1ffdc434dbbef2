"""Model files from the Hugging Face hub, through ``huggingface_hub`` and the cache users share.

Registry models live in the Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``,
else ``~/.cache/huggingface/hub``), the same one transformers and every other tool use, so a
model another tool fetched is used with no network at all. ``huggingface_hub`` resumes
interrupted downloads (``blobs/<etag>.incomplete``), honours ``HF_ENDPOINT``, ``HF_TOKEN`` and
the proxy variables; samadapt adds a check that every weights file's sha256 equals the digest
the hub published for it (an LFS file's blob is named by its sha256), and removes a file that
does not match.

The environment is read at each call, not when ``huggingface_hub`` is imported, so
``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT`` set by a test or a
long-running service take effect.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from samadapt.errors import DownloadError, InputError, ModelNotFoundError
from samadapt.models.digest import file_sha256, published_sha256

__all__ = ["cached_snapshot", "download_hf_files", "hf_endpoint", "hf_hub_cache", "hf_offline"]

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
_SHA1 = re.compile(r"[0-9a-f]{40}")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_TRUE = {"1", "true", "yes", "on"}


def hf_endpoint() -> str:
    """The hub to download from: ``$SAMADAPT_HF_ENDPOINT``, else ``$HF_ENDPOINT``, else huggingface.co.

    Empty values are ignored; the result has no trailing slash.
    """
    for name in ("SAMADAPT_HF_ENDPOINT", "HF_ENDPOINT"):
        value = os.environ.get(name, "").strip()
        if value:
            return value.rstrip("/")
    return DEFAULT_HF_ENDPOINT


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, as ``huggingface_hub`` defines it from the environment."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def hf_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for no network at all."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def repo_cache_dir(repo_id: str) -> Path:
    """The folder of one model repository in the hub cache (``models--owner--name``)."""
    return hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))


def cached_snapshot(repo_id: str, files: Sequence[str], revision: str = "main") -> Path | None:
    """The snapshot folder of ``repo_id`` in the hub cache that holds every one of ``files``.

    Asks nothing of the network. The snapshot ``refs/<revision>`` points at comes first; a cache
    laid out by hand without refs (``snapshots/<rev>/`` alone) is accepted too, its most recently
    modified complete snapshot winning. Returns None when no snapshot holds every file.
    """
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(repo_id, name, cache_dir=hf_hub_cache(), revision=revision) for name in files]
    paths = [f for f in found if isinstance(f, str)]
    if len(paths) == len(found) and len({Path(f).parent for f in paths}) == 1:
        return Path(paths[0]).parent
    snapshots = repo_cache_dir(repo_id) / "snapshots"
    complete = [d for d in snapshots.glob("*") if d.is_dir() and all((d / name).is_file() for name in files)]
    return max(complete, key=lambda d: d.stat().st_mtime) if complete else None


def download_hf_files(
    repo_id: str,
    files: Sequence[str],
    *,
    revision: str = "main",
    sha256: dict[str, str] | None = None,
    progress: bool = True,
    also: Path | None = None,
) -> Path:
    """Fetch ``files`` of a model repository into the hub cache and return its snapshot folder.

    Files already cached are not fetched again; offline (``HF_HUB_OFFLINE=1``) only the cache
    is read. Each file whose blob is named by a sha256 (every LFS file), and each file given a
    digest in ``sha256``, is checked; a mismatch removes the file from the cache.

    Args:
        repo_id: ``owner/name`` of the repository.
        files: File names in the repository, e.g. ``["config.json", "model.safetensors"]``.
        revision: Branch, tag or commit.
        sha256: Digests to insist on, by file name (e.g. pinned in the registry).
        progress: Show ``huggingface_hub``'s progress bars on stderr.
        also: Another folder where the user may put the files by hand; named in errors.

    Returns:
        The snapshot folder holding every file.

    Raises:
        InputError: ``repo_id`` is malformed.
        ModelNotFoundError: offline and not cached; the message names the files and places.
        DownloadError: the hub refused (gated or private: set ``HF_TOKEN``), the network failed
            or a file's digest did not match.
    """
    from huggingface_hub import hf_hub_download

    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise InputError(f"Hugging Face repository id {repo_id!r} is malformed; give 'owner/name'")
    if hf_offline():
        folder = cached_snapshot(repo_id, files, revision)
        if folder is None:
            raise ModelNotFoundError(missing_message(repo_id, files, "HF_HUB_OFFLINE is set", also))
        return folder
    unreachable = _unresolvable_endpoint()
    if unreachable:
        raise DownloadError(missing_message(repo_id, files, unreachable, also))
    paths: list[Path] = []
    with _progress_bars(progress):
        for name in files:
            try:
                found = hf_hub_download(
                    repo_id, name, revision=revision, cache_dir=hf_hub_cache(), endpoint=hf_endpoint(),
                    library_name="samadapt",
                )
            except Exception as exc:  # huggingface_hub and its HTTP client raise many kinds; all end here
                raise DownloadError(_refusal(exc, repo_id, name, revision, files, also)) from exc
            path = Path(found)
            _verify(path, (sha256 or {}).get(name))
            paths.append(path)
    return paths[0].parent


def _unresolvable_endpoint() -> str:
    """Why the hub's host name cannot be resolved here ("" when it can, or a proxy will resolve it).

    huggingface_hub retries a failed connection for about 23 s; a host name that does not
    resolve means no network (or a mistyped ``HF_ENDPOINT``), which no retry mends.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                        "all_proxy")):
        return ""
    parts = urlsplit(hf_endpoint())
    try:
        socket.getaddrinfo(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    except (OSError, UnicodeError) as exc:
        return (f"the name {parts.hostname} does not resolve ({exc}): no network? "
                "set HF_HUB_OFFLINE=1 to use only the cache")
    return ""


def _refusal(exc: Exception, repo_id: str, name: str, revision: str, files: Sequence[str], also: Path | None) -> str:
    """One sentence for a failed ``hf_hub_download``: what the hub said and what to do about it."""
    import httpx2
    from huggingface_hub import errors as hf_errors

    endpoint = hf_endpoint()
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hf_errors.GatedRepoError):
        return (f"{repo_id} is a gated repository: accept its terms on {endpoint}/{repo_id}, then set HF_TOKEN "
                "to an access token of that account and run again")
    if isinstance(exc, hf_errors.HfHubHTTPError) and status in (401, 403):
        return (f"{endpoint} refused {repo_id} (HTTP {status}): it needs an access token; set HF_TOKEN to a token "
                "that may read it and run again")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return (f"{endpoint} has no repository {repo_id} that this account may read; if it is private or gated, "
                "set HF_TOKEN to an access token that may read it")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return f"{repo_id} has no revision {revision!r} at {endpoint}"
    if isinstance(exc, hf_errors.LocalEntryNotFoundError):
        return missing_message(repo_id, files, f"{endpoint} did not answer", also)
    if isinstance(exc, hf_errors.EntryNotFoundError):
        return f"{repo_id} at {endpoint} has no file {name!r}"
    if isinstance(exc, (httpx2.HTTPError, OSError)):
        return missing_message(repo_id, files, f"the transfer of {name} failed: {type(exc).__name__}: {exc}", also)
    raise exc


def _verify(path: Path, pinned: str | None) -> None:
    """Check a cached file against the digest its blob is named by, and a pinned one; remove it if wrong.

    ``huggingface_hub`` checks only sizes. An LFS file's blob is named by its sha256, a small
    file's by its git blob sha1: both are what the hub published for the file.
    """
    blob = path.resolve()
    published = published_sha256(path)
    if published or pinned:
        expected = [d.lower() for d in (pinned, published) if d]
        actual = file_sha256(path)
        wrong = next((d for d in expected if not actual.startswith(d)), None)
        label = "sha256"
    elif path.is_symlink() and _SHA1.fullmatch(blob.name):
        data = blob.read_bytes()
        actual = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        wrong = blob.name if actual != blob.name else None
        label = "git blob sha1"
    else:
        return
    if wrong is None:
        return
    for stale in (path, blob):
        stale.unlink(missing_ok=True)
    raise DownloadError(
        f"{path.name} downloaded from {hf_endpoint()} has {label} {actual}, not the published {wrong}; it was "
        "removed from the cache. Run again; if it fails the same way, the server or a proxy alters the file"
    )


def missing_message(repo_id: str, files: Sequence[str], reason: str, also: Path | None) -> str:
    """One sentence: why a repository's files cannot be had, which files, and every place to put them."""
    names = ", ".join(files)
    places = f"{repo_cache_dir(repo_id)}/snapshots/<revision>/ (the Hugging Face cache)"
    if also is not None:
        places = f"{also}/ (samadapt's folder, plain files) or " + places
    return f"cannot fetch {repo_id} ({reason}); put its files {names} in {places}, or fetch them with network access"


def _status(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return f"HTTP {code}" if code else type(exc).__name__


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if enabled and not was_disabled:
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()
