"""Start the service: settings + model + adapter -> app -> uvicorn on a local address.

``samadapt serve`` calls :func:`build_service` and :func:`run`. The server listens on
127.0.0.1 unless told otherwise; port 0 picks a free port, and the URL printed is the one
actually bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from samadapt.errors import InputError, MissingDependencyError

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from samadapt.models.accel.speed import RuntimeOptions
    from samadapt.service.settings import EmbeddingMode

#: Servers started by :func:`run` and still running, so embedding code (and tests) can stop them.
RUNNING: list[uvicorn.Server] = []


def build_service(model: str, *, adapter: str | os.PathLike[str] | None = None,
                  config: str | os.PathLike[str] | None = None, sources: Sequence[str] = (),
                  mode: str | None = None, device: str = "cpu",
                  runtime: RuntimeOptions | str | None = None, detector: str | None = None,
                  box_threshold: float | None = None, text_threshold: float | None = None) -> FastAPI:
    """Load the settings, the model (once), the adapter and the detector, and build the app.

    Args:
        model: registry name, model folder or Meta ``.pth`` file.
        adapter: adapter folder enabling ``POST /map``.
        config: TOML / JSON settings file (default: ``SAMADAPT_SERVICE_CONFIG`` if set).
        sources: extra ``NAME=file.tif`` or ``NAME=https://host/{z}/{x}/{y}.png`` sources; the
            first becomes the page's default source.
        mode: ``grid`` or ``view``, overriding the settings' ``embedding_mode``.
        device: torch device.
        runtime: encoder runtime (``RuntimeOptions`` or a spec like "bf16"); None picks "auto".
        detector: detector name or folder answering text prompts on a model that cannot read
            text, overriding the settings' ``detector`` (SAM 3 needs none).
        box_threshold: text prompts' minimum object score, overriding the settings.
        text_threshold: text prompts' minimum phrase score (GroundingDINO), overriding the settings.

    Returns:
        The FastAPI app.

    Raises:
        MissingDependencyError: FastAPI or uvicorn is not installed.
        InputError: a bad option or setting.
        ModelNotFoundError: the model or detector does not resolve.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise MissingDependencyError("the service needs FastAPI and uvicorn: pip install 'samadapt[service]'") from None
    from samadapt.predict.segmenter import Segmenter
    from samadapt.service.app import create_app
    from samadapt.service.settings import add_sources, load_settings
    from samadapt.service.text import open_text_prompts

    settings = load_settings(config)
    if sources:
        settings = add_sources(settings, list(sources))
        first = sources[0].partition("=")[0].strip()
        settings = dataclasses.replace(settings, default_source=first)
    if mode is not None:
        if mode not in ("grid", "view"):
            raise InputError(f"--mode must be grid or view, got {mode!r}")
        settings = dataclasses.replace(settings, embedding_mode=cast("EmbeddingMode", mode))  # checked above
    if detector is not None:
        settings = dataclasses.replace(settings, detector=detector)
    if box_threshold is not None:
        settings = dataclasses.replace(settings, box_threshold=box_threshold)
    if text_threshold is not None:
        settings = dataclasses.replace(settings, text_threshold=text_threshold)
    segmenter = Segmenter(model, device=device, runtime=runtime)
    loaded = segmenter.loaded
    ad = None
    if adapter is not None:
        from samadapt.train.adapter import load_adapter

        ad = load_adapter(adapter, base=loaded, device=device)
    text = open_text_prompts(settings, loaded.family, device)
    return create_app(settings, segmenter, ad, text=text)


def _bound_url(server: uvicorn.Server, host: str) -> str:
    port = server.servers[0].sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def process_alive(pid: int) -> bool:
    """True while process ``pid`` exists (POSIX: signal 0; Windows: its handle is not yet signalled)."""
    if sys.platform == "win32":
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x00100000 | 0x1000, False, pid)  # SYNCHRONIZE | QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        try:
            return bool(kernel32.WaitForSingleObject(handle, 0) == 0x102)  # WAIT_TIMEOUT: still running
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


async def _stop_with(server: uvicorn.Server, pid: int, every_s: float = 1.0) -> None:
    """Ask ``server`` to shut down once process ``pid`` has ended."""
    while process_alive(pid):
        await asyncio.sleep(every_s)
    server.should_exit = True


def run(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000,
        on_ready: Callable[[str], None] | None = None, parent_pid: int | None = None) -> None:
    """Serve ``app`` with uvicorn until interrupted; ``on_ready`` gets the bound URL once listening.

    ``parent_pid``: also stop (gracefully) when that process ends, so a server started by another
    program (the QGIS plugin) does not outlive it even when that program crashes.
    """
    import uvicorn

    if not 0 <= port <= 65535:
        raise InputError(f"--port must be 0-65535 (0 = any free port), got {port}")
    if parent_pid is not None and (parent_pid <= 0 or not process_alive(parent_pid)):
        raise InputError(f"--parent-pid {parent_pid}: no such process; give the id of the running program the "
                         "server should stop with")
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=5, timeout_keep_alive=5)
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.ensure_future(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started and on_ready is not None:
            on_ready(_bound_url(server, host))
        watch = asyncio.ensure_future(_stop_with(server, parent_pid)) if parent_pid is not None else None
        await task
        if watch is not None:
            watch.cancel()

    RUNNING.append(server)
    try:
        asyncio.run(main())
    except SystemExit:  # uvicorn exits when it cannot bind
        if server.started:
            raise
    finally:
        RUNNING.remove(server)
    if not server.started:
        raise InputError(f"could not listen on {host}:{port}; is the port in use? try another --port")
