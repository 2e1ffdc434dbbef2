"""Test helper: a local HTTP server of the files in a folder, with range requests, recorded.

    with serve_files(folder) as srv:
        srv.url("scene.tif")        # "http://127.0.0.1:PORT/scene.tif"
        srv.bytes_served            # sum of the body bytes sent so far
        srv.ranges                  # [(path, first, last), ...] of the range requests answered
        srv.fail = "403"            # or "404", "hang" (never answers), None
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass
class FileServer:
    """What a test sees of the server: its address, what it sent, and how it should fail."""

    root: Path
    port: int = 0
    fail: str | None = None
    ranges: list[tuple[str, int, int]] = field(default_factory=list)
    bytes_served: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def url(self, name: str) -> str:
        """The URL of a file under the served folder."""
        return f"http://127.0.0.1:{self.port}/{name}"


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _refuse(self) -> bool:
            if state.fail == "hang":
                state.stop.wait(30)
                return True
            if state.fail in ("403", "404"):
                self.send_error(int(state.fail))
                return True
            return False

        def _target(self) -> Path | None:
            path = (state.root / self.path.split("?", 1)[0].lstrip("/")).resolve()
            if state.root.resolve() not in path.parents or not path.is_file():
                self.send_error(404)
                return None
            return path

        def do_HEAD(self) -> None:  # noqa: N802
            if self._refuse():
                return
            path = self._target()
            if path is None:
                return
            self.send_response(200)
            self.send_header("Content-Length", str(path.stat().st_size))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            if self._refuse():
                return
            path = self._target()
            if path is None:
                return
            size = path.stat().st_size
            match = _RANGE.match(self.headers.get("Range", ""))
            with path.open("rb") as f:
                if match:
                    first = int(match.group(1))
                    last = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
                    f.seek(first)
                    body = f.read(max(0, last - first + 1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
                    with state.lock:
                        state.ranges.append((self.path, first, last))
                else:
                    body = f.read()
                    self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self.wfile.write(body)
            with state.lock:
                state.bytes_served += len(body)

    return Handler


@contextmanager
def serve_files(root: Path) -> Iterator[FileServer]:
    """Serve ``root`` on 127.0.0.1 (a free port) for the duration of the block."""
    state = FileServer(Path(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        time.sleep(0.01)
        server.shutdown()
        server.server_close()
