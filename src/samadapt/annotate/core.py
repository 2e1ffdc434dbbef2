"""Annotate a dataset by prompting SAM, and compare prompt modes against ground truth.

The Mars pits paper (section 2.2) annotates with three prompt modes: ``auto`` (the automatic
point-grid mode; each region takes the automatic mask with the highest predicted IoU among
those that overlap it), ``point`` (a point inside each region) and ``box`` (the region's
bounding box).
Regions come from ground-truth masks or from an expert's boxes or points. The result is a
dataset in samadapt's format whose masks are SAM's pseudo-labels, with a ``sources.csv``
recording which prompt produced each object.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from samadapt._io import atomic_file, write_json
from samadapt.annotate.experts import ExpertLabels, ExpertObject
from samadapt.errors import InputError
from samadapt.imagery.read import GeoImage
from samadapt.predict.automatic import AutomaticOptions
from samadapt.predict.result import SegmentationResult
from samadapt.predict.segmenter import Segmenter
from samadapt.prompts.types import IGNORE, ObjectPrompt

if TYPE_CHECKING:
    from samadapt.data.dataset import SegDataset

#: How an image is annotated: the automatic point grid, or one prompt per region of the
#: :data:`~samadapt.prompts.types.PromptMode` of that name.
Mode = Literal["box", "point", "auto"]
MODES: tuple[Mode, ...] = ("auto", "point", "box")


@dataclass
class ObjectRecord:
    """Where one annotated object came from (one row of ``sources.csv``)."""

    stem: str
    object: int
    class_id: int
    mode: str
    source: str
    score: float
    pixels: int


@dataclass
class ImageAnnotation:
    """One image's pseudo-label (H, W) uint8 and the records of its objects."""

    stem: str
    labels: np.ndarray
    records: list[ObjectRecord] = field(default_factory=list)
    everything: SegmentationResult | None = None


def regions_from_mask(mask: np.ndarray, mode: Mode, seed: int = 0) -> list[tuple[ObjectPrompt, int, np.ndarray]]:
    """Per connected region of each class of a ground-truth mask: its prompt, class and region.

    Box mode prompts with the region's tight box, point mode with its deepest interior point
    (the distance-transform maximum, which lies inside even for rings), auto mode keeps the
    region for matching against automatic masks.
    """
    from samadapt.prompts.sampling import interior_point, regions, tight_box

    out = []
    for class_id in sorted(int(c) for c in np.unique(mask) if c not in (0, IGNORE)):
        for region in regions(mask, class_id=class_id):
            if mode == "box":
                prompt = ObjectPrompt(box=tight_box(region))
            else:
                x, y = interior_point(region)
                prompt = ObjectPrompt(points=np.array([[x, y]]), labels=np.array([1]))
            out.append((prompt, class_id, region))
    return out


def expert_region(obj: ExpertObject, shape: tuple[int, int]) -> np.ndarray:
    """The area an expert marked: the box's pixels, or the pixels at the points."""
    region = np.zeros(shape, dtype=bool)
    p = obj.prompt
    if p.box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in p.box)
        region[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    for x, y in p.points[p.labels == 1]:
        region[min(int(y), shape[0] - 1), min(int(x), shape[1] - 1)] = True
    return region


def pick_automatic(region: np.ndarray, everything: SegmentationResult) -> int | None:
    """Index of the automatic mask for ``region``: the highest predicted IoU among the masks that
    cover the region's deepest interior point.

    A mask that merely touches the region (a large background mask sharing one pixel with it,
    say) is not a candidate; None when no mask covers that point.
    """
    from samadapt.prompts.sampling import interior_point

    if not region.any():
        return None
    x, y = interior_point(region)
    row, col = int(y), int(x)
    best, best_score = None, -np.inf
    for i, (m, s) in enumerate(zip(everything.masks, everything.scores, strict=False)):
        if s > best_score and m[row, col]:
            best, best_score = i, float(s)
    return best


def annotate_image(
    segmenter: Segmenter,
    image: GeoImage,
    stem: str,
    objects: list[tuple[ObjectPrompt, int, np.ndarray]],
    mode: Mode,
    *,
    auto_options: AutomaticOptions | None = None,
    everything: SegmentationResult | None = None,
) -> ImageAnnotation:
    """Pseudo-label one image from its objects' prompts (or regions, in auto mode).

    Larger objects are painted first so a small object inside a large one stays visible;
    nodata pixels are 255 (ignore).
    """
    shape = (image.height, image.width)
    masks: list[np.ndarray] = []
    records: list[ObjectRecord] = []
    if mode == "auto":
        if everything is None:
            everything = segmenter.segment_everything(image, auto_options or AutomaticOptions())
        for k, (_, class_id, region) in enumerate(objects):
            i = pick_automatic(region, everything)
            m = everything.masks[i] if i is not None else np.zeros(shape, bool)
            masks.append(m)
            score = float(everything.scores[i]) if i is not None else float("nan")
            records.append(ObjectRecord(stem, k, class_id, mode, f"auto:{i}" if i is not None else "none", score, 0))
    elif objects:
        result = segmenter.segment(image, [o[0] for o in objects], multimask=(mode == "point"))
        for k, ((_, class_id, _), m, s) in enumerate(zip(objects, result.masks, result.scores, strict=False)):
            masks.append(m)
            records.append(ObjectRecord(stem, k, class_id, mode, mode, float(s), 0))
    labels = np.zeros(shape, dtype=np.uint8)
    for k in sorted(range(len(masks)), key=lambda j: -int(masks[j].sum())):
        labels[masks[k]] = objects[k][1]
    for rec, m in zip(records, masks, strict=False):
        rec.pixels = int(m.sum())
    labels[~image.valid] = IGNORE
    return ImageAnnotation(stem, labels, records, everything)


def check_out_dir(out_dir: Path, *, overwrite: bool, compare: bool = False) -> None:
    """Refuse, before a model loads, an ``--out`` that :func:`annotate_dataset` (or, with
    ``compare``, :func:`~samadapt.annotate.compare.compare_modes`) would refuse.

    Raises:
        OutputExistsError: ``out_dir`` holds files samadapt did not write as that output, or a
            previous one and ``overwrite`` is False.
    """
    from samadapt.data.manifest import MODE_COMPARISON, PSEUDO_LABELS, check_output_folder

    check_output_folder(out_dir, kind=MODE_COMPARISON if compare else PSEUDO_LABELS, overwrite=overwrite)


def require_ground_truth(dataset: SegDataset, stems: list[str]) -> None:
    """Refuse, before any prompting, images without a mask and masks ``samadapt data check``
    rejects (another size than their image, class ids ``classes.json`` does not name).

    Raises:
        InputError: naming the image or mask at fault.
    """
    from samadapt.data.check import require_fitting_masks

    unlabelled = [s for s in stems if dataset.mask_path(s) is None]
    if unlabelled:
        raise InputError(f"image {unlabelled[0]!r} has no ground-truth mask; give expert labels (--labels) instead")
    require_fitting_masks(dataset, stems)


def write_label_mask(folder: Path, stem: str, labels: np.ndarray, image: GeoImage) -> Path:
    """Write a label mask for ``stem``: a GeoTIFF beside a georeferenced image, else a PNG."""
    from samadapt.mapping.outputs import write_mask_geotiff, write_mask_png

    if image.georeferenced:
        return write_mask_geotiff(folder / f"{stem}.tif", labels, crs=image.crs, transform=image.transform,
                                  valid=None, overwrite=True)
    return write_mask_png(folder / f"{stem}.png", labels, overwrite=True)


def _write_records(path: Path, records: list[ObjectRecord]) -> None:
    """``sources.csv``: one row per object; ``instance_id`` numbers an image's objects 1..N (``object`` + 1)."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "object", "instance_id", "class", "mode", "source", "score", "pixels"])
        for r in records:
            w.writerow([r.stem, r.object, r.object + 1, r.class_id, r.mode, r.source, f"{r.score:.4f}", r.pixels])


@dataclass
class AnnotateSummary:
    """What :func:`annotate_dataset` wrote."""

    out_dir: Path
    images: int
    objects: int
    empty_objects: int
    source: str


def objects_for_images(
    dataset: object, stems: list[str], mode: Mode, experts: ExpertLabels | None, seed: int
) -> Callable[[str, GeoImage], list[tuple[ObjectPrompt, int, np.ndarray]]]:
    """A function giving each image's (prompt, class, region) list from experts or ground truth."""

    def for_image(stem: str, image: GeoImage) -> list[tuple[ObjectPrompt, int, np.ndarray]]:
        if experts is not None:
            shape = (image.height, image.width)
            return [(o.prompt, o.class_id, expert_region(o, shape)) for o in experts.objects.get(stem, [])]
        if dataset.mask_path(stem) is None:  # type: ignore[attr-defined]
            raise InputError(f"image {stem!r} has no ground-truth mask; give expert labels (--labels) instead")
        return regions_from_mask(dataset.read_mask(stem), mode, seed)  # type: ignore[attr-defined]

    return for_image


def annotate_dataset(
    dataset_dir: Path,
    out_dir: Path,
    *,
    segmenter: Segmenter,
    mode: Mode = "box",
    experts: ExpertLabels | None = None,
    split: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    auto_options: AutomaticOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
    coco: bool = False,
) -> AnnotateSummary:
    """Write a dataset whose masks are SAM pseudo-labels from ``mode`` prompts.

    Args:
        dataset_dir: a dataset folder (``images/``, optional ``masks/``).
        out_dir: folder to write (images copied, masks written, ``sources.csv``, ``samadapt.json``).
        segmenter: the model to prompt.
        mode: "box", "point" or "auto".
        experts: expert prompts per image; when None, prompts come from ground-truth masks.
        split: annotate only this split.
        seed: seed of any random choice.
        overwrite: replace an ``out_dir`` holding a previous annotation samadapt wrote (unchanged
            since); a folder holding anything else is refused, ``overwrite`` or not.
        auto_options: settings of the automatic mode.
        progress: called with (done, total) after each image.
        coco: also write the pseudo-labels as COCO ``annotations.json`` (see :mod:`samadapt.data.coco`).

    Raises:
        InputError: an unknown mode or split; without ``experts``, an image without a mask or a
            mask ``samadapt data check`` rejects (its size, or class ids ``classes.json`` lacks).
        OutputExistsError: see :func:`check_out_dir`.
    """
    from samadapt.data.dataset import SegDataset

    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    dataset = SegDataset.open(dataset_dir)
    stems = dataset.stems(split)
    check_out_dir(Path(out_dir), overwrite=overwrite)
    if experts is None:
        require_ground_truth(dataset, stems)
    get_objects = objects_for_images(dataset, stems, mode, experts, seed)
    classes = dict(dataset.classes)
    if experts is not None and experts.class_names:
        classes = {0: "background", **experts.class_names}
    for obj in (o for objs in (experts.objects.values() if experts else ()) for o in objs):
        # every class an expert names gets a name, as YOLO folders without data.yaml name it
        classes.setdefault(obj.class_id, f"class {obj.class_id - 1}" if experts and experts.kind == "yolo"
                           else f"class {obj.class_id}")
    return write_pseudo_labels(
        dataset, stems, Path(out_dir),
        lambda stem, image: annotate_image(segmenter, image, stem, get_objects(stem, image), mode,
                                           auto_options=auto_options),
        classes, source=experts.kind if experts else "ground truth", overwrite=overwrite, progress=progress,
        coco=coco)


def write_pseudo_labels(
    dataset: SegDataset,
    stems: list[str],
    out_dir: Path,
    annotate_one: Callable[[str, GeoImage], ImageAnnotation],
    classes: dict[int, str],
    *,
    source: str,
    overwrite: bool,
    progress: Callable[[int, int], None] | None,
    more: Callable[[Path], object] | None = None,
    coco: bool = False,
) -> AnnotateSummary:
    """Write a pseudo-label dataset: each image copied, its mask from ``annotate_one``, ``classes.json``,
    ``splits.json`` (when the source has one), ``sources.csv`` and the manifest, all or nothing.

    Args:
        annotate_one: (stem, image) -> the image's annotation.
        classes: class id -> name.
        source: what the prompts came from, for the summary.
        more: writes further files into the folder being assembled.
        coco: also write ``annotations.json``, the masks as COCO objects (:func:`samadapt.data.coco.export_coco`).

    Every class id a mask holds is named in ``classes.json`` (``"class k"`` when ``classes`` lacks it),
    so ``samadapt data check`` accepts the folder.
    """
    from samadapt.data.manifest import PSEUDO_LABELS, output_folder

    records: list[ObjectRecord] = []
    used: set[int] = set()
    with output_folder(out_dir, kind=PSEUDO_LABELS, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for n, stem in enumerate(stems, start=1):
            image = dataset.read_image(stem)
            ann = annotate_one(stem, image)
            src = dataset.image_path(stem)
            shutil.copy2(src, tmp / "images" / src.name)
            write_label_mask(tmp / "masks", stem, ann.labels, image)
            used.update(int(v) for v in np.unique(ann.labels) if v != IGNORE)
            records.extend(ann.records)
            if progress:
                progress(n, len(stems))
        named = {**{k: f"class {k}" for k in used}, **classes}
        write_json(tmp / "classes.json", {str(k): v for k, v in sorted(named.items())})
        if dataset.splits:
            write_json(tmp / "splits.json", {k: [s for s in v if s in stems] for k, v in dataset.splits.items()})
        _write_records(tmp / "sources.csv", records)
        if more is not None:
            more(tmp)
        if coco:
            from samadapt.data.coco import export_coco

            export_coco(tmp, tmp / "annotations.json")
    return AnnotateSummary(out_dir=out_dir, images=len(stems), objects=len(records),
                           empty_objects=sum(r.pixels == 0 for r in records), source=source)
