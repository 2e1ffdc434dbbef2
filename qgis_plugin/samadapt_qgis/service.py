"""``samadapt serve`` for one raster, in the background, and the HTTP calls the plugin makes to it.

The server listens on 127.0.0.1 on a free port, with a random bearer token so that no other
program on the machine can use it. It is started with ``--mode grid``: the raster is encoded in
cells of the model's input size as clicks reach them, and every later click in a cell reuses its
encoding. Every server the plugin starts is stopped when the plugin unloads or QGIS quits
(:func:`stop_all`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import urllib.error
import urllib.request
from collections import deque
from typing import Any

from .runner import command_env, popen, stop_process

#: How the server announces its address on standard output.
READY = re.compile(r"serving on (http://[0-9.]+:\d+)")
#: Name of the served raster in the service's requests.
SOURCE_NAME = "layer"

_RUNNING: set[ServiceProcess] = set()
_LOCK = threading.Lock()


class ServiceError(RuntimeError):
    """The service could not be started or reached, or it refused a request (its sentence)."""


class ServiceProcess:
    """``samadapt serve --source layer=<raster>`` running in the background.

    Args:
        executable: the samadapt program.
        raster: path (or GDAL path / URL) of the raster to serve.
        model: registry name, model folder or .pth file.
        adapter: optional adapter folder (enables class maps of the view).
        device: torch device of the server.
        detector: optional detector (grounding-dino-tiny, owlv2-base, a folder) answering text prompts.
    """

    def __init__(self, executable: str, raster: str, model: str, adapter: str = "", device: str = "cpu",
                 detector: str = "") -> None:
        self.executable, self.raster, self.model, self.adapter, self.device = executable, raster, model, adapter, device
        self.detector = detector
        self.token = secrets.token_urlsafe(24)
        self.url: str | None = None
        self.log: deque[str] = deque(maxlen=200)
        self.proc: Any = None
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def args(self) -> list[str]:
        """The command line of the server."""
        args = [self.executable, "serve", "--model", self.model, "--source", f"{SOURCE_NAME}={self.raster}",
                "--host", "127.0.0.1", "--port", "0", "--mode", "grid", "--device", self.device,
                "--parent-pid", str(os.getpid())]  # it stops with QGIS even if QGIS crashes
        if self.adapter:
            args += ["--adapter", self.adapter]
        if self.detector:
            args += ["--detector", self.detector]
        return args

    def start(self) -> ServiceProcess:
        """Start the server and return at once; :meth:`wait_ready` waits for its address."""
        if self.proc is not None:
            return self
        self.proc = popen(self.args, env=command_env({"SAMADAPT_TOKEN": self.token}), merge_output=True)
        with _LOCK:
            _RUNNING.add(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, ""):
            line = raw.rstrip("\n")
            self.log.append(line)
            found = READY.search(line)
            if found and not self._ready.is_set():
                self.url = found.group(1)
                self._ready.set()
        self._ready.set()  # the process ended: wake anyone waiting

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout_s: float = 600.0) -> str:
        """The server's base URL, once it listens.

        Raises:
            ServiceError: it exited first (with its error sentence) or did not start in time.
        """
        if self.proc is None:
            raise ServiceError("the samadapt server was not started")
        self._ready.wait(timeout_s)
        if self.url is None or not self.running:
            if self.running:
                raise ServiceError(f"samadapt serve did not start within {timeout_s:.0f} s")
            from .runner import error_sentence

            raise ServiceError(f"samadapt serve stopped: {error_sentence(self.log)}")
        return self.url

    def stop(self) -> None:
        """Stop the server (terminate, then kill after a grace period)."""
        if self.proc is not None:
            stop_process(self.proc)
            for stream in (self.proc.stdout,):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
        with _LOCK:
            _RUNNING.discard(self)

    # -- HTTP ------------------------------------------------------------------------------------

    def request(self, method: str, path: str, payload: dict[str, Any] | None = None,
                timeout_s: float = 600.0) -> dict[str, Any]:
        """One JSON request to the server; its JSON answer.

        Raises:
            ServiceError: the server answered an error (its sentence) or could not be reached.
        """
        url = self.wait_ready(timeout_s) + path
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
            "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as response:  # noqa: S310 - 127.0.0.1 only
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read().decode("utf-8")).get("error") or str(exc)
            except ValueError:
                message = str(exc)
            raise ServiceError(message) from None
        except (urllib.error.URLError, OSError) as exc:
            if not self.running:
                from .runner import error_sentence

                raise ServiceError(f"samadapt serve stopped: {error_sentence(self.log)}") from None
            raise ServiceError(f"cannot reach the samadapt server at {self.url}: {exc}") from None

    def source(self) -> dict[str, Any]:
        """What the server says of the raster it serves: body, lng/lat CRS, bounds."""
        answer = self.request("GET", "/sources")
        for item in answer.get("sources", []):
            if item.get("name") == SOURCE_NAME:
                return item
        raise ServiceError("the samadapt server does not serve the layer")

    def model_info(self) -> dict[str, Any]:
        """``GET /models``: the model (name, family, input size) and the adapter."""
        return self.request("GET", "/models")

    def segment(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``POST /segment``: GeoJSON polygons of the prompted object in lng/lat of the body."""
        return self.request("POST", "/segment", payload)


def running() -> list[ServiceProcess]:
    """The servers the plugin started that have not been stopped."""
    with _LOCK:
        return list(_RUNNING)


def stop_all() -> None:
    """Stop every server the plugin started (plugin unload, QGIS quitting)."""
    for server in running():
        server.stop()
