"""Tests for samadapt.models.download (plain files: the original releases) against a local HTTP server."""

from __future__ import annotations

import hashlib
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from samadapt.errors import DownloadError, InputError
from samadapt.models import registry
from samadapt.models.download import download_file, fetch_official

BODY = random.Random(0).randbytes(300_000)
BODY_SHA = hashlib.sha256(BODY).hexdigest()
BODY_MD5 = hashlib.md5(BODY).hexdigest()


@dataclass
class Served:
    """One file the test server serves, and how it misbehaves."""

    body: bytes
    ignore_range: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    drop_after: int | None = None  # first request only: announce all, send this many, close
    delay: float = 0.0


@dataclass
class Request:
    path: str
    range: str | None


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, Served] = {}
        self.redirects: dict[str, tuple[str, dict[str, str]]] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        range_header = self.headers.get("Range")
        with srv.lock:
            srv.requests.append(Request(self.path, range_header))
            served = srv.files.get(self.path)
            drop_after = served.drop_after if served else None
            if served is not None:
                served.drop_after = None
        if self.path in srv.redirects:
            target, extra = srv.redirects[self.path]
            self.send_response(302)
            self.send_header("Location", target)
            for key, value in extra.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if served is None:
            self.send_error(404, "Not Found")
            return
        time.sleep(served.delay)
        body, status, size = served.body, 200, len(served.body)
        headers = {"Content-Type": "application/octet-stream", **served.headers}
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not served.ignore_range:
            start = int(match.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, body = 206, body[start:]
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if drop_after is not None:
                self.wfile.write(body[:drop_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)
        except ConnectionError:
            pass  # the client gave up (timeout test); nothing to report


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx honours proxy variables; requests to 127.0.0.1 must not leave the machine."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


# --- download_file ----------------------------------------------------------------------


def test_plain_download_with_full_sha256(server: FileServer, tmp_path: Path) -> None:
    server.files["/m.bin"] = Served(BODY)
    dest = tmp_path / "sub" / "m.bin"
    out = download_file(server.url("/m.bin"), dest, sha256=BODY_SHA.upper(), progress=False)
    assert out == dest
    assert dest.read_bytes() == BODY
    assert not _part(dest).exists()
    assert [r.range for r in server.requests] == [None]


def test_prefix_sha256_like_meta_checkpoint_names(server: FileServer, tmp_path: Path) -> None:
    server.files["/sam_vit_b.pth"] = Served(BODY)
    dest = tmp_path / "sam_vit_b.pth"
    download_file(server.url("/sam_vit_b.pth"), dest, sha256=BODY_SHA[:6], progress=False)
    assert dest.read_bytes() == BODY


def test_sha256_mismatch_leaves_nothing(server: FileServer, tmp_path: Path) -> None:
    server.files["/m.bin"] = Served(BODY)
    dest = tmp_path / "m.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadError, match=rf"m\.bin.*{BODY_SHA}.*{wrong}"):
        download_file(server.url("/m.bin"), dest, sha256=wrong, progress=False)
    assert not dest.exists()
    assert not _part(dest).exists()


def test_interrupted_download_resumes_from_part(server: FileServer, tmp_path: Path) -> None:
    server.files["/m.bin"] = Served(BODY, drop_after=120_000)
    dest = tmp_path / "m.bin"
    with pytest.raises(DownloadError, match=re.escape(str(dest))):
        download_file(server.url("/m.bin"), dest, sha256=BODY_SHA, progress=False, chunk_size=4096)
    assert not dest.exists()
    assert _part(dest).read_bytes() == BODY[:120_000]

    download_file(server.url("/m.bin"), dest, sha256=BODY_SHA, progress=False, chunk_size=4096)
    assert dest.read_bytes() == BODY
    assert not _part(dest).exists()
    assert [r.range for r in server.requests] == [None, "bytes=120000-"]


def test_server_ignoring_range_restarts_from_zero(server: FileServer, tmp_path: Path) -> None:
    server.files["/m.bin"] = Served(BODY, ignore_range=True)
    dest = tmp_path / "m.bin"
    _part(dest).write_bytes(b"garbage that must not stay in front")
    download_file(server.url("/m.bin"), dest, sha256=BODY_SHA, progress=False)
    assert dest.read_bytes() == BODY
    assert server.requests[0].range == f"bytes={len(b'garbage that must not stay in front')}-"


def test_complete_part_answered_416_is_verified_and_kept(
    server: FileServer, tmp_path: Path
) -> None:
    server.files["/m.bin"] = Served(BODY)
    dest = tmp_path / "m.bin"
    _part(dest).write_bytes(BODY)
    download_file(server.url("/m.bin"), dest, sha256=BODY_SHA, progress=False)
    assert dest.read_bytes() == BODY
    assert [r.range for r in server.requests] == [f"bytes={len(BODY)}-"]


def test_part_longer_than_file_restarts(server: FileServer, tmp_path: Path) -> None:
    server.files["/m.bin"] = Served(BODY)
    dest = tmp_path / "m.bin"
    _part(dest).write_bytes(BODY + b"extra")
    download_file(server.url("/m.bin"), dest, progress=False)
    assert dest.read_bytes() == BODY
    assert [r.range for r in server.requests] == [f"bytes={len(BODY) + 5}-", None]


def test_md5_prefix_as_in_meta_sam_names(server: FileServer, tmp_path: Path) -> None:
    """Meta's SAM names end with the first hex digits of the file's md5, not its sha256."""
    server.files["/sam_vit_b.pth"] = Served(BODY)
    dest = tmp_path / f"sam_vit_b_{BODY_MD5[:6]}.pth"
    download_file(server.url("/sam_vit_b.pth"), dest, md5=BODY_MD5[:6], progress=False)
    assert dest.read_bytes() == BODY
    with pytest.raises(DownloadError, match=f"md5 {BODY_MD5} but {BODY_SHA[:6]} was expected"):
        download_file(server.url("/sam_vit_b.pth"), tmp_path / "again.pth", md5=BODY_SHA[:6], progress=False)
    assert not (tmp_path / "again.pth").exists() and not _part(tmp_path / "again.pth").exists()


def test_both_digests_must_match(server: FileServer, tmp_path: Path) -> None:
    server.files["/m.bin"] = Served(BODY)
    download_file(server.url("/m.bin"), tmp_path / "ok.bin", sha256=BODY_SHA, md5=BODY_MD5, progress=False)
    with pytest.raises(DownloadError, match="md5"):
        download_file(server.url("/m.bin"), tmp_path / "bad.bin", sha256=BODY_SHA, md5="0" * 32, progress=False)


def test_redirect_is_followed(server: FileServer, tmp_path: Path) -> None:
    server.files["/cdn/m.bin"] = Served(BODY)
    server.redirects["/dl/m.bin"] = (server.url("/cdn/m.bin"), {})
    download_file(server.url("/dl/m.bin"), tmp_path / "m.bin", sha256=BODY_SHA, progress=False)
    assert [r.path for r in server.requests] == ["/dl/m.bin", "/cdn/m.bin"]


def test_fetch_official_checks_the_recorded_digests(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    spec = registry.get_spec("sam-vit-base")
    assert spec.official is not None and spec.official.name_digest == "md5"
    served = replace(spec.official, url=server.url("/sam_vit_b.pth"), md5=None, sha256=None,
                     file=f"sam_vit_b_{BODY_MD5[:6]}.pth")
    monkeypatch.setitem(registry.REGISTRY, "sam-vit-base", replace(spec, official=served))
    server.files["/sam_vit_b.pth"] = Served(BODY)
    path = fetch_official("sam-vit-base", progress=False)
    assert path.read_bytes() == BODY and path.name == served.file
    assert fetch_official("sam-vit-base", progress=False) == path  # verified again, not fetched again
    assert len(server.requests) == 1

    wrong = replace(served, file="sam_vit_b_abcdef.pth")
    monkeypatch.setitem(registry.REGISTRY, "sam-vit-base", replace(spec, official=wrong))
    with pytest.raises(DownloadError, match="md5 .* but abcdef was expected"):
        fetch_official("sam-vit-base", progress=False)
    assert not path.with_name("sam_vit_b_abcdef.pth").exists()


def test_not_found_names_destination(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "missing.bin"
    with pytest.raises(DownloadError, match=rf"404.*no network\?.*{re.escape(str(dest))}"):
        download_file(server.url("/missing.bin"), dest, progress=False)
    assert not dest.exists()


def test_closed_port_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "m.bin"
    start = time.monotonic()
    with pytest.raises(DownloadError, match=re.escape(str(dest))):
        download_file(f"http://127.0.0.1:{port}/m.bin", dest, progress=False, timeout=5)
    assert time.monotonic() - start < 3
    assert not dest.exists()


def test_slow_server_times_out(server: FileServer, tmp_path: Path) -> None:
    server.files["/slow.bin"] = Served(BODY, delay=1.0)
    with pytest.raises(DownloadError, match=r"no answer within 0\.2 s"):
        download_file(server.url("/slow.bin"), tmp_path / "slow.bin", progress=False, timeout=0.2)


def test_existing_dest_makes_no_request(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "m.bin"
    dest.write_bytes(b"already here")
    assert download_file(server.url("/m.bin"), dest, sha256="0" * 64, progress=False) == dest
    assert server.requests == []
    with pytest.raises(DownloadError, match="delete it"):
        download_file(server.url("/m.bin"), dest, sha256="0" * 64, verify_existing=True)
    assert dest.read_bytes() == b"already here"
    good = hashlib.sha256(b"already here").hexdigest()
    download_file(server.url("/m.bin"), dest, sha256=good, verify_existing=True)
    assert server.requests == []


@pytest.mark.parametrize("bad", ["xyz123", "abc12", "0" * 65, ""])
def test_malformed_sha256_rejected(bad: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="sha256"):
        download_file("http://127.0.0.1:9/x", tmp_path / "x", sha256=bad, progress=False)


def test_progress_bar_only_when_asked(
    server: FileServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    server.files["/m.bin"] = Served(BODY)
    download_file(server.url("/m.bin"), tmp_path / "quiet.bin", progress=False)
    quiet = capfd.readouterr()
    assert quiet.out == "" and quiet.err == ""
    download_file(server.url("/m.bin"), tmp_path / "loud.bin", progress=True)
    loud = capfd.readouterr()
    assert loud.out == ""
    assert "loud.bin" in loud.err
