"""``samadapt train``, ``evaluate`` and ``learning-curve``: adapt SAM to a dataset and score the result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from samadapt.cli.console import stderr, stdout, warn_untrusted
from samadapt.cli.options import (
    BandsOpt,
    DeviceOpt,
    EvalDatasetOpt,
    MethodOpt,
    ModelOpt,
    OptionOpt,
    SelectOpt,
    band_list,
    method_options,
    parse_ints,
)
from samadapt.errors import InputError


def train_cmd(
    dataset_dir: Annotated[Path | None, typer.Argument(help="Dataset folder (images/, masks/, splits.json).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Adapter folder to write.")] = None,
    method: MethodOpt = "domain-decoder",
    help_options: Annotated[bool, typer.Option("--help-options", help="List the --option settings of --method "
                                               "(types, defaults, meaning) and exit.")] = False,
    class_name: Annotated[str | None, typer.Option("--class", help="Train one foreground class (id or name) "
                                                   "against the rest. mask-decoder on multi-class data without it "
                                                   "trains one adapter per class, in OUT/<class>/.")] = None,
    model: ModelOpt = "sam-vit-base",
    labels: Annotated[int | None, typer.Option("--labels",
                                               help="Train on the first N images of a seeded shuffle.")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 20,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of split, budget and training.")] = 0,
    patience: Annotated[int | None, typer.Option(help="Stop after N epochs without improvement.")] = None,
    monitor: Annotated[str, typer.Option(help="Validation metric picking the best epoch "
                                         "(miou, f1_macro, loss).")] = "miou",
    select: SelectOpt = "best",
    eval_dataset: EvalDatasetOpt = None,
    bands: BandsOpt = None,
    unfreeze: Annotated[bool, typer.Option("--unfreeze",
                                           help="lora: train the whole SAM, not only the adapters.")] = False,
    prompt: Annotated[str | None, typer.Option(help="mask-decoder: prompts generated from masks: box, point, "
                                               "points.")] = None,
    multimask: Annotated[str | None, typer.Option(help="mask-decoder: loss on the best or the mean of 3 "
                                                  "masks.")] = None,
    rank: Annotated[int | None, typer.Option(help="lora: rank of the adapters.")] = None,
    option: OptionOpt = None,
    mixed_precision: Annotated[str, typer.Option(help="no, bf16 or fp16.")] = "no",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out after an interruption.")] = False,
    keep_checkpoints: Annotated[bool, typer.Option("--keep-checkpoints", help="Keep the run folder (.OUT.run/, "
                                                   "last epoch's checkpoint) after a finished training.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    device: DeviceOpt = "cpu",
) -> None:
    """Adapt SAM to a dataset with one of its methods; writes a small adapter folder."""
    from samadapt._io import check_replaceable
    from samadapt.data.dataset import SegDataset
    from samadapt.methods import describe_options, validate_options
    from samadapt.train.adapter import is_adapter_folder
    from samadapt.train.learner import training_targets

    if help_options:
        stdout.print(describe_options(method), highlight=False, soft_wrap=True)
        return
    if dataset_dir is None or out is None:
        raise InputError("train needs a DATASET folder and --out ADAPTER_FOLDER (or --help-options)")
    opts = method_options(option)
    for key, value, only in (("unfreeze", unfreeze or None, "lora"), ("rank", rank, "lora"),
                             ("prompt", prompt, "mask-decoder"), ("multimask", multimask, "mask-decoder")):
        if value is not None:
            if method != only:
                raise InputError(f"--{key} applies to the {only} method, not {method}")
            opts[key] = value
    validate_options(method, opts)
    targets = training_targets(SegDataset.open(dataset_dir), method, out, class_name)
    if class_name is None and targets[0][0] is not None:
        stdout.print(f"{method} predicts one class; training one adapter per class: "
                     + ", ".join(str(t) for _, t in targets), highlight=False, soft_wrap=True)
    for _, folder in targets:  # before any training: nothing of the user's is ever replaced
        check_replaceable(folder, overwrite=overwrite or resume, kind="adapter", owned=is_adapter_folder)
    for class_id, folder in targets:
        fit: dict[str, Any] = dict(epochs=epochs, lr=lr, batch_size=batch_size, resume=resume, patience=patience,
                                   monitor=monitor, select=select, mixed_precision=mixed_precision)
        _train_one(dataset_dir, folder, method, model, labels, band_list(bands), seed, device,
                   eval_dataset, class_id, opts, keep_checkpoints, fit)


def _train_one(dataset_dir: Path, out: Path, method: str, model: str, labels: int | None,
               bands: tuple[int, ...] | None, seed: int, device: str, eval_dataset: Path | None,
               class_id: int | None, opts: dict[str, Any], keep_checkpoints: bool, fit: dict[str, Any]) -> None:
    import shutil

    from samadapt.train.learner import Learner

    learner = Learner(dataset_dir, method=method, model=model, labels=labels, bands=bands, seed=seed, device=device,
                      eval_data=eval_dataset, class_id=class_id, **opts)
    if learner.method.uses_sam_weights:
        warn_untrusted(learner.base.trusted)
    else:
        size = learner.base.preprocessing.size
        side = learner.method.output_side
        stderr.print(f"{method} does not use SAM's weights: it trains from scratch on each image resized as SAM's "
                     f"input ({size} px) and runs at {side} x {side} px", highlight=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    run_dir = out.with_name(f".{out.name}.run")
    select = fit["select"]
    try:
        result = learner.fit(fit.pop("epochs"), out_dir=run_dir, **fit)
        learner.save(out, overwrite=True)
    except BaseException:  # a kill, Ctrl-C, a full disk: keep what --resume can use, and only that
        if any((run_dir / "checkpoints").glob("*.pt")):
            stderr.print(f"note: {run_dir} keeps the last finished epoch; run the same command with --resume to go on",
                         highlight=False, soft_wrap=True)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if not keep_checkpoints:  # the adapter holds the weights, the log and the plot; the run folder is spent
        shutil.rmtree(run_dir, ignore_errors=True)
    kept = next(r for r in result.history if r["epoch"] == result.best_epoch)
    which = "last epoch" if select == "last" else "best epoch"
    what = "" if class_id is None else f" (class {learner.classes[1]} against the rest)"
    stdout.print(
        f"trained {method}{what} on {len(learner.train_stems)} images; kept the {which}, {result.best_epoch + 1} "
        f"(val mIoU {kept.get('val_miou', float('nan')):.3f}); adapter in {out}; its test split "
        f"({len(learner.test_stems)} images) is what `samadapt evaluate {out} DATASET` scores",
        highlight=False, soft_wrap=True,
    )


def evaluate_cmd(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder from `samadapt train`.")],
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset folder with masks.")],
    split: Annotated[str | None, typer.Option(help="train, val, test or all of DATASET; default: the adapter's "
                                              "own test split, as recorded when it was trained.")] = None,
    allow_train_images: Annotated[bool, typer.Option("--allow-train-images", help="Score images the adapter was "
                                                     "trained on instead of refusing them.")] = False,
    oracle_prompts: Annotated[bool, typer.Option("--oracle-prompts", help="Prompted methods build their prompts "
                                                 "from the masks being scored (outputs say oracle).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    overlays: Annotated[Path | None, typer.Option(help="Folder for overlay PNGs of a few predictions.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Base model (default: the adapter's).")] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Score an adapter on images it did not train on: mIoU, precision / recall / F1, accuracy, objects."""
    import json

    from samadapt.train.evaluation import evaluate_adapter
    from samadapt.train.metrics import COUNT_FIELDS, SCALAR_FIELDS

    if overlays is not None:
        from samadapt._io import check_writable

        check_writable([overlays / "overlay.png"], flag="--overlays")  # before the scoring, not after
    report = evaluate_adapter(adapter, dataset_dir, split=split, allow_train_images=allow_train_images,
                              oracle_prompts=oracle_prompts, model=model, device=device)
    metrics = report.metrics
    ad_classes = report.adapter.classes
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        oracle = " [bold red](oracle prompts from the scored masks)[/]" if report.oracle else ""
        table = Table("metric", "value",
                      title=f"{report.method} on {len(report.image_ids)} images: {report.split}{oracle}")
        scores = metrics.as_dict()
        for key in (*SCALAR_FIELDS, *COUNT_FIELDS):
            value = scores[key]
            table.add_row(key, "undefined" if value is None else f"{value:.4f}" if isinstance(value, float)
                          else str(value))
        for c, v in enumerate(metrics.iou):
            table.add_row(f"IoU class {c} ({ad_classes.get(c, c)})", f"{v:.4f}")
        stdout.print(table)
        if report.comparison is not None:
            cmp = Table("model", "foreground IoU", title="U-Net alone, SAM alone and adapted SAM on the same images")
            for key, label in (("unet", "U-Net alone"), ("sam", "SAM alone"), ("adapted", "adapted SAM")):
                cmp.add_row(label, f"{report.comparison[key]:.4f}")
            stdout.print(cmp)
        if report.train_images_scored:
            stderr.print(f"[bold yellow]note:[/] {len(report.train_images_scored)} of these images trained the "
                         "adapter", highlight=False)
        for note in report.notes:
            stderr.print(f"note: {note}", highlight=False, soft_wrap=True)
    if overlays is not None:
        from samadapt.data.dataset import SegDataset
        from samadapt.imagery.overlay import overlay, save_png
        from samadapt.train.learner import load_samples

        ad = report.adapter
        for s in load_samples(SegDataset.open(dataset_dir), report.image_ids[:4], ad.bands):
            pred = ad.predict_sample(s)
            masks = np.stack([pred.labels == c for c in range(1, ad.method.num_classes)])
            save_png(overlays / f"{s.stem}.png", overlay(s.pixels[:, :, :3], masks))
        stderr.print(f"overlays in {overlays}")


def learning_curve_cmd(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset folder (images/, masks/, splits.json).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the CSV, plot, report and runs.")],
    method: MethodOpt = "domain-decoder",
    compare_methods: Annotated[str | None, typer.Option(help="Comma-separated methods to run on the same "
                                                        "splits.")] = None,
    model: ModelOpt = "sam-vit-base",
    sizes: Annotated[str, typer.Option(help="Label budgets.")] = "5,10,15,20,25,50",
    seeds: Annotated[int, typer.Option(help="Seeds per budget.")] = 3,
    epochs: Annotated[int, typer.Option(help="Epochs per run.")] = 20,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    select: SelectOpt = "best",
    eval_dataset: EvalDatasetOpt = None,
    oracle_prompts: Annotated[bool, typer.Option("--oracle-prompts", help="Prompted methods are scored with prompts "
                                                 "built from the test masks (report.md says oracle).")] = False,
    keep_checkpoints: Annotated[bool, typer.Option("--keep-checkpoints", help="Keep each run's last-epoch "
                                                   "checkpoint in OUT/runs/.")] = False,
    bands: BandsOpt = None,
    option: OptionOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Train on growing label budgets over several seeds; CSV, plot and report.md of every metric against N."""
    import csv

    from samadapt.train.curves import METRICS, learning_curve, summarise

    methods = [m.strip() for m in compare_methods.split(",")] if compare_methods else [method]
    path = learning_curve(dataset_dir, out_dir, methods=methods, model=model, sizes=parse_ints(sizes, "--sizes"),
                          seeds=seeds, epochs=epochs, lr=lr, bands=band_list(bands), device=device,
                          method_options=method_options(option), eval_dataset=eval_dataset, select=select,
                          oracle_prompts=oracle_prompts, keep_checkpoints=keep_checkpoints, log=stderr.print)
    with open(path) as f:
        rows = [{**r, **{k: float(r[k]) for k in METRICS}, "labels": int(r["labels"])} for r in csv.DictReader(f)]
    oracle = " [bold red](oracle prompts from the test masks)[/]" if oracle_prompts else ""
    table = Table("method", "labels", "mIoU mean ± sd (n)", "F1 macro mean ± sd (n)", title=f"test split{oracle}")
    miou, f1 = summarise(rows, "miou"), summarise(rows, "f1_macro")
    missing = []
    for m in miou:
        for a, b in zip(miou[m], f1[m], strict=False):
            table.add_row(m, str(a.labels), f"{a.mean:.3f} ± {a.sd:.3f} ({a.n})", f"{b.mean:.3f} ± {b.sd:.3f} ({b.n})")
            if a.missing:
                missing.append(f"{m} n={a.labels}: seeds {', '.join(map(str, a.missing))}")
    stdout.print(table)
    if missing:
        stderr.print(f"[bold yellow]note:[/] runs without a mIoU, left out of the means: {'; '.join(missing)}",
                     highlight=False)
    stdout.print(f"wrote {path}, {path.with_suffix('.png')} and {path.with_name('report.md')}",
                 highlight=False, soft_wrap=True)
