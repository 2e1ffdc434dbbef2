"""``make demo``: the main job end to end on a generated Mars-like GeoTIFF.

Today: generate the sample, prompt the model with a box around each pit, write the masks
as PNG, GeoTIFF and GeoPackage in Mars' own CRS, draw an overlay, and score the masks
against the known truth. Later stages (annotate, train, evaluate, map) join here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from samadapt._io import new_folder
from samadapt.errors import DownloadError, ModelNotFoundError
from samadapt.models.loading import LoadedModel, is_cached, load_model
from samadapt.models.registry import REGISTRY


def choose_model(ref: str, out_dir: Path, console: Console) -> LoadedModel:
    """Load ``ref``; a registry model that cannot be had falls back to a tiny random model."""
    if ref not in REGISTRY or is_cached(ref):
        return load_model(ref)
    try:
        return load_model(ref)
    except (DownloadError, ModelNotFoundError) as e:
        from samadapt.models.tiny import save_tiny_model

        console.print(
            f"[bold black on yellow] NO CHECKPOINT: {ref} is not cached and could not be downloaded; "
            "running with a tiny random-initialised model, so the masks below mean nothing. [/]"
        )
        console.print(f"  ({e})", highlight=False)
        tiny = out_dir / "tiny-sam"
        if not (tiny / "config.json").is_file():
            save_tiny_model(tiny, "sam", overwrite=True)
        return load_model(tiny)


def _annotate_step(out_dir: Path, segmenter: object, console: Console) -> dict[str, Path]:
    """Annotate a small Mars dataset three ways and compare with its ground truth (the Mars pits paper, 2.2)."""
    from samadapt.annotate import compare_modes
    from samadapt.sample import make_mars_dataset

    dataset = make_mars_dataset(out_dir / "mars_dataset", n_images=12, size=256)
    report = compare_modes(dataset, out_dir / "prompt_modes", segmenter=segmenter,  # type: ignore[arg-type]
                           figure_images=3, overwrite=True)
    table = Table("prompt mode", "mean IoU per image", "dataset mIoU", title="4. annotation: prompt modes vs truth")
    for mode, label in (("auto", "automatic"), ("point", "point"), ("box", "box")):
        table.add_row(label, f"{report.mean_iou(mode):.3f}", f"{report.miou[mode]:.3f}")
    console.print(table)
    return {"dataset": dataset, "modes_csv": report.csv_path, "modes_fig": report.figure_path}  # type: ignore[dict-item]


def _train_step(out_dir: Path, loaded: LoadedModel, dataset: Path, console: Console) -> dict[str, Path]:
    """Adapt with the domain decoder on the Mars tiles and score the held-out tile (the Mars pits paper)."""
    from samadapt.train.learner import Learner

    learner = Learner(dataset, method="domain-decoder", model=loaded, seed=0, width=64)
    learner.fit(15, lr=3e-3, out_dir=out_dir / "train_run", progress=False)
    metrics = learner.evaluate("test")
    adapter = learner.save(out_dir / "adapter", overwrite=True)
    table = Table("metric", "value", title=f"5. domain-decoder trained on {len(learner.train_stems)} tiles, test split")
    for k in ("miou", "accuracy", "f1_macro", "precision_macro", "recall_macro", "iou_fg", "object_f1"):
        value = getattr(metrics, k)
        table.add_row(k, "undefined" if value != value else f"{value:.3f}")
    console.print(table)
    return {"adapter": adapter, "training_plot": adapter / "training.png"}


def _map_step(out_dir: Path, adapter_dir: Path, loaded: LoadedModel, raster: Path, console: Console) -> dict[str, Path]:
    """Map the whole sample GeoTIFF with the trained adapter, tile by tile, in Mars' own CRS."""
    from samadapt.mapping.tiled import MapOptions, predict_raster
    from samadapt.train.adapter import load_adapter

    result = predict_raster(load_adapter(adapter_dir, base=loaded), raster, out_dir / "map",
                            MapOptions(probabilities=True, overwrite=True))
    console.print(f"[bold]6. map[/]: {result.tiles} tiles of {raster.name} -> "
                  + ", ".join(p.name for p in result.outputs.values()))
    return {f"map_{k}": v for k, v in result.outputs.items()}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def run_demo(out_dir: Path, *, model: str = "sam-vit-base", console: Console | None = None) -> dict[str, Path]:
    """Run the demo into ``out_dir`` and return the paths of its outputs."""
    console = console or Console()
    out_dir = Path(out_dir)
    with new_folder(out_dir):
        return _run_demo(out_dir, model, console)


#: Folders a demo run writes from scratch; an earlier run's are removed first (the tiny model stays).
DEMO_FOLDERS = ("mars_dataset", "prompt_modes", "train_run", "map")


def _clear_previous_run(out_dir: Path) -> None:
    """Remove the folders an earlier demo wrote in ``out_dir`` (known by its sample GeoTIFF), so a
    rerun, also of an older samadapt whose folders carry no manifest, starts clean."""
    import shutil

    if not (out_dir / "mars_sample.tif").is_file():
        return
    for name in DEMO_FOLDERS:
        if (out_dir / name).is_dir():
            shutil.rmtree(out_dir / name)


def _run_demo(out_dir: Path, model: str, console: Console) -> dict[str, Path]:
    from samadapt.imagery.overlay import overlay, save_png
    from samadapt.imagery.read import read_image
    from samadapt.mapping.outputs import write_segmentation
    from samadapt.predict.segmenter import Segmenter
    from samadapt.prompts.types import ObjectPrompt
    from samadapt.sample import make_mars_sample

    loaded = choose_model(model, out_dir, console)  # first: a bad --model leaves nothing behind
    _clear_previous_run(out_dir)
    sample = make_mars_sample(out_dir / "mars_sample.tif")
    console.print(f"[bold]1. sample[/]: {sample.path} ({len(sample.boxes)} pits, CRS IAU_2015:49910, Mars)")
    console.print(f"[bold]2. model[/]: {loaded.name} ({loaded.family}, input {loaded.preprocessing.size} px)")
    image = read_image(sample.path)
    segmenter = Segmenter(loaded)
    result = segmenter.segment(image, [ObjectPrompt(box=b) for b in sample.boxes], multimask=False)
    outputs: dict[str, Path] = {}
    for kind, name in (("polygons", "pits.gpkg"), ("geotiff", "pits.tif"), ("png", "pits.png")):
        outputs[kind] = write_segmentation(
            out_dir / name, result, crs=image.crs, transform=image.transform, valid=image.valid, overwrite=True
        )
    outputs["overlay"] = save_png(out_dir / "overlay.png", overlay(image.pixels, result.masks, boxes=sample.boxes))
    table = Table("pit", "box (x0,y0,x1,y1)", "predicted IoU", "IoU with truth", title="3. box-prompted masks")
    for i, (b, m, s) in enumerate(zip(sample.boxes, result.masks, result.scores, strict=False)):
        table.add_row(str(i), ",".join(f"{v:.0f}" for v in b), f"{s:.3f}", f"{_iou(m, sample.masks[i]):.3f}")
    console.print(table)
    outputs.update(_annotate_step(out_dir, segmenter, console))
    outputs.update(_train_step(out_dir, loaded, outputs["dataset"], console))
    outputs.update(_map_step(out_dir, outputs["adapter"], loaded, sample.path, console))
    if not result.trusted:
        console.print("[bold yellow]These masks come from a random-initialised model and mean nothing.[/]")
    console.print("[bold]outputs[/]:")
    for kind, path in outputs.items():
        console.print(f"  {kind:9s} {path}")
    console.print(f"[bold]next[/]: segment the sample on a web map: samadapt serve --model {loaded.name} "
                  f"--adapter {outputs['adapter']} --source mars={sample.path}", highlight=False, soft_wrap=True)
    return outputs
