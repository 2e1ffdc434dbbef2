"""``samadapt info`` and ``samadapt demo``: what this installation runs with, and a first run end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from samadapt.cli.console import stdout
from samadapt.cli.options import ModelOpt, PrecisionOpt, RuntimeOpt, encoder_runtime

#: How prompts are decoded, where more is to be said than the default line (samadapt's batched pass in the
#: encoder's precision). EdgeTAM's decoder is SAM 2's and takes that pass with nothing more to say.
PROMPT_DECODER = {
    "sam3": "samadapt's batched pass through SAM 3's tracker (Sam3TrackerModel, SAM 2's decoder) on the tracker's "
            "features of the cached embedding, in the encoder runtime's precision (transformers' own call, one "
            "object at a time, for mask prompts and decoders with adapter layers)",
}

#: How a family answers ``--text``, where it reads text itself.
TEXT_PROMPTS = {"sam3": "SAM 3's concept model on the cached embedding (one embedding serves points, boxes and "
                        "phrases; no detector)"}


def info(
    model: Annotated[str, typer.Option("--model", "-m", help="Model whose encoder runtime to show "
                                       "(registry name or folder; not loaded).")] = "sam-vit-base",
    runtime: RuntimeOpt = "auto",
    precision: PrecisionOpt = None,
) -> None:
    """Show versions, the CPU, the encoder runtime chosen for it, threads, and where files go."""
    from types import SimpleNamespace

    import torch

    from samadapt import __version__
    from samadapt._home import samadapt_home
    from samadapt.models.accel import sam_decoder
    from samadapt.models.accel.speed import cpu_info, resolve
    from samadapt.models.loading import family_and_size
    from samadapt.versions import dependency_versions

    family, size = family_and_size(model)
    rt = resolve(encoder_runtime(runtime, precision), family, size)
    table = Table("", "")
    table.add_row("samadapt", __version__)
    for dep in dependency_versions():
        if dep.installed is not None:
            note = "" if dep.in_range else f"  [bold yellow](outside the tested range {dep.tested})[/]"
            table.add_row(dep.name, dep.installed + note)
    table.add_row("CPU capability", cpu_info().describe())
    table.add_row("encoder runtime", f"{rt.tag} for {model} ({size} px)")
    table.add_row("why", "; ".join(rt.reasons) or "as asked")
    decoder_precision = sam_decoder.precision_for(SimpleNamespace(runtime=rt))  # follows the encoder's precision
    table.add_row("prompt decoder", PROMPT_DECODER.get(family, f"samadapt's batched pass in {decoder_precision} "
                                    "(transformers' own call for mask prompts and decoders with adapter layers)"))
    table.add_row("text prompts", TEXT_PROMPTS.get(family, "through a detector (--detector grounding-dino-tiny, "
                                                           "owlv2-base ...) whose boxes the prompt decoder segments"))
    table.add_row("threads", f"{rt.threads} for the encoder (torch now: {torch.get_num_threads()})")
    table.add_row("CUDA", "yes" if torch.cuda.is_available() else "no")
    table.add_row("home", str(samadapt_home()))
    stdout.print(table)


def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the demo's outputs.")] = Path("demo-output"),
    model: ModelOpt = "sam-vit-base",
) -> None:
    """Run the main job end to end on a generated Mars-like GeoTIFF."""
    from samadapt.demo import run_demo

    run_demo(out_dir, model=model, console=stdout)
