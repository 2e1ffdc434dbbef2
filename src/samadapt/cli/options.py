"""Options several commands share, each validated once, by its callback.

A callback raises :class:`~samadapt.errors.InputError`, which ``main`` prints as one sentence
with exit code 2, as for every other mistake in a command line. Callbacks run while typer parses
the command line, so a bad value stops the command before any model loads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.models import OptionInfo

from samadapt.errors import InputError

if TYPE_CHECKING:
    from samadapt.imagery.read import GeoImage
    from samadapt.imagery.sources import RasterSource
    from samadapt.models.accel.speed import RuntimeOptions


def choice(flag: str, allowed: tuple[str, ...]) -> Callable[[str | None], str | None]:
    """A callback accepting one of ``allowed`` (or no value) for ``flag``."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in allowed:
            names = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
            raise InputError(f"{flag} must be {names}, got {value!r}")
        return value

    return check


def band_list(text: str | None) -> tuple[int, ...] | None:
    """The 1-based bands of a ``--bands`` value such as ``"4,3,2"``; None for no value (every band).

    Raises:
        InputError: if an item is not a whole number of at least 1.
    """
    from samadapt.imagery.stretch import parse_bands

    return parse_bands(text) if text else None


def _check_bands(value: str | None) -> str | None:
    band_list(value)
    return value


def _check_runtime(value: str) -> str:
    from samadapt.models.accel.speed import RuntimeOptions

    RuntimeOptions.parse(value)
    return value


def _check_batch_size(value: int) -> int:
    if value < 1:
        raise InputError(f"--batch-size must be at least 1, got {value}")
    return value


def batch_size_option(help: str) -> OptionInfo:
    """``--batch-size``, a whole number of at least 1; ``help`` says what one batch holds."""
    return typer.Option("--batch-size", help=help, callback=_check_batch_size)


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Registry name, model folder or Meta .pth file.")]
BandsOpt = Annotated[str | None, typer.Option("--bands", help="1-based bands to use, e.g. 4,3,2 (1 or 3 bands).",
                                              callback=_check_bands)]
AssetOpt = Annotated[str | None, typer.Option(
    "--asset", help="Asset of a STAC item source (default: 'visual', else its first GeoTIFF / COG asset).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1, mps.")]
RuntimeOpt = Annotated[str, typer.Option("--runtime", help="Encoder runtime: auto, or a comma list of fp32|bf16, "
                                         "fused|no-fused, compile, onnx, threads=N (see `samadapt info`).",
                                         callback=_check_runtime)]
PrecisionOpt = Annotated[str | None, typer.Option("--precision", help="Encoder precision: auto, fp32 or bf16 "
                                                  "(overrides --runtime).",
                                                  callback=choice("--precision", ("auto", "fp32", "bf16")))]
MethodOpt = Annotated[str, typer.Option("--method", help="domain-decoder, lora, mask-decoder, encoder-adapter, unet.")]
EvalDatasetOpt = Annotated[Path | None, typer.Option(
    "--eval-dataset", help="Score on this dataset's ground truth (its test split, or all of it when it has none; "
    "images used for training are left out by id), e.g. train on `annotate` pseudo-labels, test on the truth.")]
SelectOpt = Annotated[str, typer.Option("--select", help="Weights kept: best (by --monitor on the val split) or "
                                        "last (the Mars pits paper's 'no additional control').")]
OptionOpt = Annotated[list[str] | None, typer.Option("--option", help="Method setting key=value, e.g. rank=8.")]


def encoder_runtime(runtime: str, precision: str | None) -> RuntimeOptions:
    """The encoder's RuntimeOptions from ``--runtime`` and ``--precision`` (which wins), both already checked."""
    from dataclasses import replace

    from samadapt.models.accel.speed import RuntimeOptions

    opts = RuntimeOptions.parse(runtime)
    return opts if precision is None else replace(opts, precision=precision)  # type: ignore[arg-type]


def read(path: str | Path | RasterSource, bands: str | None, asset: str | None = None) -> GeoImage:
    """Read an image (file, URL, ``/vsi*`` path or STAC item) with the bands of ``--bands`` and ``--asset``."""
    from samadapt.imagery.read import read_image

    return read_image(path, bands=band_list(bands), asset=asset)


def parse_ints(text: str, flag: str) -> list[int]:
    """Comma-separated whole numbers, e.g. ``--sizes 5,10,20``."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{flag} takes comma-separated whole numbers, got {text!r}") from None


def method_options(values: list[str] | None) -> dict[str, object]:
    """``--option key=value`` pairs as keyword arguments: JSON values (numbers, true/false) are converted,
    ``-`` in keys becomes ``_``."""
    options: dict[str, object] = {}
    for item in values or []:
        if "=" not in item:
            raise InputError(f"--option takes key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            options[key.replace("-", "_")] = json.loads(raw)
        except ValueError:
            options[key.replace("-", "_")] = raw
    return options


def _check_threshold(value: float | None) -> float | None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise InputError(f"a threshold is a score between 0 and 1, got {value}")
    return value


TextOpt = Annotated[list[str] | None, typer.Option(
    "--text", help="Find objects by name, e.g. --text crater (repeatable; each phrase is one class). "
    "SAM 3 reads it; other models need --detector.")]
DetectorOpt = Annotated[str | None, typer.Option(
    "--detector", help="With --text: grounding-dino-tiny, grounding-dino-base, owlv2-base or a detector folder; "
    "it finds boxes that the model turns into masks (not with SAM 3).")]
BoxThresholdOpt = Annotated[float | None, typer.Option(
    "--box-threshold", help="With --text: minimum object score (GroundingDINO 0.35, OWLv2 0.1, SAM 3 0.3).",
    callback=_check_threshold)]
TextThresholdOpt = Annotated[float | None, typer.Option(
    "--text-threshold", help="With --text and GroundingDINO: minimum score of the phrase's words (0.25).",
    callback=_check_threshold)]
