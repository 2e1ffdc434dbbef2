"""``samadapt serve``: prompted segmentation on a web map, over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from samadapt.cli.console import stderr, stdout, warn_untrusted
from samadapt.cli.options import (
    BoxThresholdOpt,
    DeviceOpt,
    ModelOpt,
    PrecisionOpt,
    RuntimeOpt,
    TextThresholdOpt,
    encoder_runtime,
)

#: Addresses only this machine can reach; any other gets a note about the token.
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    model: ModelOpt = "sam-vit-base",
    adapter: Annotated[Path | None, typer.Option("--adapter",
                                                 help="Adapter folder: enables POST /map (class polygons).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; the default only accepts this "
                                      "machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port; 0 picks a free one.")] = 8000,
    config: Annotated[Path | None, typer.Option("--config", help="TOML or JSON service settings (sources, limits, "
                                                "token).")] = None,
    source: Annotated[list[str] | None, typer.Option("--source", help="NAME=file.tif or "
                                                     "NAME=https://host/{z}/{x}/{y}.png (repeatable).")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="Embedding reuse: grid (cells of the model input) or "
                                             "view (per view, as SamGIS).")] = None,
    device: DeviceOpt = "cpu",
    runtime: RuntimeOpt = "auto",
    precision: PrecisionOpt = None,
    detector: Annotated[str | None, typer.Option(
        "--detector", help="Answer text prompts with this detector: grounding-dino-tiny, grounding-dino-base, "
        "owlv2-base or a detector folder (SAM 3 reads text itself and needs none).")] = None,
    box_threshold: BoxThresholdOpt = None,
    text_threshold: TextThresholdOpt = None,
    parent_pid: Annotated[int | None, typer.Option(
        "--parent-pid", help="Stop when this process ends (for programs that start the server, e.g. the QGIS "
        "plugin).")] = None,
) -> None:
    """Serve prompted segmentation on a web map: SamGIS-compatible POST /segment and a browser page."""
    from samadapt.service.server import build_service, run

    service = build_service(model, adapter=adapter, config=config, sources=source or (), mode=mode, device=device,
                            runtime=encoder_runtime(runtime, precision), detector=detector,
                            box_threshold=box_threshold, text_threshold=text_threshold)
    warn_untrusted(service.state.loaded.trusted)
    if host not in LOOPBACK:
        stderr.print(f"[bold yellow]NOTE: listening on {host}: other machines can reach this service; "
                     "set a token (SAMADAPT_TOKEN) unless the network is trusted.[/]")

    def ready(url: str) -> None:
        stdout.print(f"samadapt serving on {url}  (page: {url}/, API docs: {url}/docs); Ctrl+C to stop",
                     highlight=False)

    run(service, host=host, port=port, on_ready=ready, parent_pid=parent_pid)
