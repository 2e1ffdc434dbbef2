"""``samadapt models``: list, fetch, check, convert and build models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column, Table

from samadapt.cli.console import stderr, stdout
from samadapt.cli.options import DeviceOpt, RuntimeOpt, choice, encoder_runtime
from samadapt.errors import InputError

if TYPE_CHECKING:
    from samadapt.models.registry import DetectorFamily

app = typer.Typer(help="List, fetch, convert and build models.", no_args_is_help=True)


@app.command("list")
def models_list() -> None:
    """Show the registry: names, families, sizes, and where each model's files were found."""
    from samadapt.models.hub import hf_hub_cache
    from samadapt.models.loading import cached_model_dir, locate
    from samadapt.models.registry import REGISTRY

    places = {"samadapt": "samadapt cache", "hf-cache": "HF cache", "missing": "missing"}
    table = Table("name", "family", "size", "found", Column("repository / folder", overflow="fold"))
    for spec in REGISTRY.values():
        place, folder = locate(spec.name)
        table.add_row(spec.name, spec.family, f"{spec.size_mb} MB", places[place], str(folder or spec.repo_id))
    stdout.print(table, soft_wrap=True)
    stdout.print(f"samadapt cache: {cached_model_dir('').parent}\nHF cache: {hf_hub_cache()}", highlight=False)


@app.command("fetch")
def models_fetch(
    name: Annotated[str, typer.Argument(help="Registry name.")],
    official: Annotated[bool, typer.Option("--official", help="Fetch the original release (Meta's .pth / .pt, "
                                           "SAM-HQ's .pth) instead of the Hugging Face repository; it is "
                                           "converted when loaded.")] = False,
) -> None:
    """Fetch a registry model: into the Hugging Face cache (verified), or its original release with --official."""
    if official:
        from samadapt.models.download import fetch_official

        path = fetch_official(name)
        stdout.print(f"{name}'s original release is {path}; load it with --model {path}", highlight=False,
                     soft_wrap=True)
        return
    from samadapt.models.loading import fetch, locate

    place, _ = locate(name)
    folder = fetch(name)
    note = {"samadapt": "already in samadapt's folder", "hf-cache": "already in the Hugging Face cache"}.get(place, "")
    stdout.print(f"{name} is in {folder}" + (f" ({note})" if note else ""), highlight=False, soft_wrap=True)


@app.command("check")
def models_check(
    name: Annotated[str, typer.Argument(help="Registry name, model folder or Meta .pth / .pt file.")],
    device: DeviceOpt = "cpu",
    runtime: RuntimeOpt = "auto",
) -> None:
    """Load a model, encode and decode one generated image, and compare its files with the published ones.

    Exits 1 when anything mismatches (a digest, the architecture, the outputs).
    """
    from samadapt.models.check import check_model

    report = check_model(name, device=device, runtime=encoder_runtime(runtime, None))
    table = Table("", Column("", overflow="fold"))
    table.add_row("model", report.name)
    table.add_row("weights", str(report.weights_file))
    table.add_row("sha256", report.weights_sha256)
    table.add_row("weights are", report.provenance)
    if report.input_size:
        table.add_row("family", report.family)
        table.add_row("input size", f"{report.input_size} px")
        table.add_row("runtime", report.runtime)
        table.add_row("seconds per image", f"{report.seconds_per_image:.2f} (encoder, this machine)")
    else:
        table.add_row("run", "not run: the files differ from the published ones")
    stdout.print(table, soft_wrap=True)
    for problem in report.problems:
        stderr.print(f"[bold red]mismatch:[/] {problem}", highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)
    stdout.print("check passed")


@app.command("convert")
def models_convert(
    checkpoint: Annotated[Path, typer.Argument(help="Official Meta SAM .pth file.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the transformers layout to.")],
) -> None:
    """Convert an official Meta SAM .pth checkpoint to the transformers layout."""
    from samadapt.models.convert import convert_meta_checkpoint

    if not checkpoint.is_file():
        raise InputError(f"checkpoint not found: {checkpoint}")
    stdout.print(f"wrote {convert_meta_checkpoint(checkpoint, out_dir)}")


#: Detector families of ``models tiny --family`` (the issue's names) and the family each writes.
DETECTOR_TINY: dict[str, DetectorFamily] = {"grounding-dino": "grounding-dino", "owlv2": "owlv2"}
TINY_FAMILIES = ("sam", "sam2", "sam-hq", "sam3", "edgetam", *DETECTOR_TINY)


@app.command("tiny")
def models_tiny(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the model to.")],
    family: Annotated[str, typer.Option("--family", help=f"{', '.join(TINY_FAMILIES)}.",
                                        callback=choice("--family", TINY_FAMILIES))] = "sam",
    seed: Annotated[int, typer.Option(help="Random seed of the weights.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Write a tiny random-initialised model or detector (for tests and offline smoke tests)."""
    if family in DETECTOR_TINY:
        from samadapt.text.tiny_detectors import save_tiny_detector

        save_tiny_detector(out_dir, DETECTOR_TINY[family], seed=seed, overwrite=overwrite)
        stdout.print(f"wrote a tiny random {family} detector to {out_dir} (its boxes mean nothing)")
        return
    from samadapt.models.tiny import save_tiny_model

    save_tiny_model(out_dir, family, seed=seed, overwrite=overwrite)  # type: ignore[arg-type]
    stdout.print(f"wrote a tiny random {family} model to {out_dir} (its masks mean nothing)")
