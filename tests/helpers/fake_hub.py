"""A local stand-in for the Hugging Face hub, answering as ``huggingface_hub.hf_hub_download`` expects.

Two servers on 127.0.0.1: the hub answers ``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` with
``X-Repo-Commit`` and an ``ETag`` (a small file's git blob sha1), and for a large (LFS) file a
302 carrying ``X-Linked-Etag`` (its sha256) and ``X-Linked-Size`` to a second server on another
port, the "CDN", which serves the bytes and honours ``Range``. No ``X-Xet-*`` header is ever
sent, so the plain HTTP path is used. Errors carry ``X-Error-Code`` / ``X-Error-Message``, the
only thing a client reads of a HEAD's error.

Tests steer it through attributes: ``branches`` (the revisions it has, by default main),
``token`` (a gated repository: without ``Bearer <token>``
the answer is 401 GatedRepo), ``plain_401``, ``drop_at`` (close the connection once after that
many bytes of an LFS body), ``corrupt`` (serve same-size wrong bytes); ``log`` records
``(server, method, path, range, authorization)`` of every request.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from helpers.hf_cache import LFS_SUFFIXES, etag_of

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: FakeHub, role: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub, self.role = hub, role

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up mid-body is part of the tests


class FakeHub:
    """Serves ``repos`` ({repo_id: {file name: bytes}}) until the context exits."""

    def __init__(self, repos: Mapping[str, Mapping[str, bytes]]) -> None:
        self.repos = {repo: dict(files) for repo, files in repos.items()}
        self.token: str | None = None
        self.plain_401 = False
        self.branches: set[str] = {"main"}
        self.drop_at: int | None = None
        self.corrupt = False
        self.log: list[tuple[str, str, str, str | None, str | None]] = []
        self.lock = threading.Lock()
        self._servers = [_Server(self, "hub"), _Server(self, "cdn")]
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)

    def requests(self, server: str = "hub", method: str | None = None) -> list[tuple[str, str | None]]:
        """(path, range) of the requests one server received, of one method or all."""
        return [(p, r) for s, m, p, r, _ in self.log if s == server and method in (None, m)]

    def __enter__(self) -> FakeHub:
        for server in self._servers:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        hub, path = self.server.hub, unquote(urlsplit(self.path).path)
        with hub.lock:
            hub.log.append((self.server.role, self.command, path, self.headers.get("Range"),
                            self.headers.get("Authorization")))
        if self.server.role == "cdn":
            for files in hub.repos.values():
                for name, data in files.items():
                    if path == f"/lfs/{etag_of(name, data)}":
                        return self._body(data, {}, head, lfs=True)
            return self._send(404, {}, head)
        if path == "/api/agent-harnesses":
            return self._send(200, {"Content-Type": "application/json"}, head, b'{"standardEnvVars":[],"harnesses":{}}')
        # the revision is one quoted segment (refs/pr/1 arrives as refs%2Fpr%2F1)
        raw_repo, _, raw_rest = urlsplit(self.path).path.lstrip("/").partition("/resolve/")
        repo_id = unquote(raw_repo).strip("/")
        raw_revision, _, raw_name = raw_rest.partition("/")
        revision, name = unquote(raw_revision), unquote(raw_name)
        if repo_id not in hub.repos:
            return self._error(404, "RepoNotFound", "Repository not found", head)
        if hub.plain_401:
            return self._send(401, {}, head)
        if hub.token is not None and self.headers.get("Authorization") != f"Bearer {hub.token}":
            return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted.", head)
        if revision not in (*hub.branches, COMMIT):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        data = hub.repos[repo_id].get(name)
        if data is None:
            return self._error(404, "EntryNotFound", f"{name} does not exist", head, {"X-Repo-Commit": COMMIT})
        etag = etag_of(name, data)
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'}
        if name.endswith(LFS_SUFFIXES):
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data)),
                            "Location": f"{hub.cdn_url}/lfs/{etag}"})
            return self._send(302, headers, head)
        return self._body(data, headers, head, lfs=False)

    def _error(self, status: int, code: str, message: str, head: bool, extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json",
                   **(extra or {})}
        self._send(status, headers, head, json.dumps({"error": message}).encode())

    def _send(self, status: int, headers: dict[str, str], head: bool, body: bytes = b"") -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _body(self, data: bytes, headers: dict[str, str], head: bool, lfs: bool) -> None:
        hub = self.server.hub
        if lfs and hub.corrupt:
            data = hashlib.sha256(data).digest() * (len(data) // 32) + data[: len(data) % 32]
        start, status = 0, 200
        ranged = (self.headers.get("Range") or "").removeprefix("bytes=").split("-")[0]
        if ranged.isdigit() and not head:
            start, status = int(ranged), 206
            headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        body = data[start:]
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if head:
            return
        with hub.lock:
            cut, hub.drop_at = (hub.drop_at, None) if lfs else (None, hub.drop_at)
        if cut is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[: max(0, cut - start)])
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
