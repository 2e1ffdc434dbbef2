"""Check a dataset folder before training on it: what is there, and what is wrong.

:func:`check_dataset` never stops at the first problem; it reads every image header and
every mask and returns a :class:`DatasetReport` listing each problem with its stem, a kind
(a stable identifier, see :data:`ERROR_KINDS` and :data:`WARNING_KINDS`) and a one-sentence
message saying how to fix it. :func:`format_report` renders the report as rich tables.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rich.console import Group, RenderableType
from rich.table import Table

from samadapt.data.dataset import (
    CLASSES_FILE,
    DEFAULT_CLASSES,
    IGNORE_INDEX,
    IMAGES_DIR,
    SPLITS_FILE,
    SegDataset,
    dataset_files,
    load_classes,
    load_splits,
    read_mask_file,
    require_dataset_dir,
)
from samadapt.data.yolo import LABEL_SUFFIX, parse_yolo_file, read_yolo_mask
from samadapt.errors import InputError, InputFileError

WARNING_KINDS = frozenset({"image-without-mask", "empty-mask", "transform-mismatch"})
"""Problems that do not stop training: unlabelled images, masks with no class pixel, masks
whose georeferencing differs from their image's."""
ERROR_KINDS = frozenset(
    {
        "mask-without-image", "size-mismatch", "unreadable-image", "unreadable-mask", "unknown-class",
        "multi-band-mask", "bad-mask-dtype", "unknown-split-stem", "duplicate-split-stem",
        "duplicate-stem", "bad-metadata",
    }
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset.

    Attributes:
        stem: the sample concerned, or "" for the dataset as a whole (e.g. ``splits.json``).
        kind: a stable identifier from :data:`ERROR_KINDS` or :data:`WARNING_KINDS`.
        message: one sentence naming the file and how to fix it.
    """

    stem: str
    kind: str
    message: str

    @property
    def is_error(self) -> bool:
        """False for warnings (see :data:`WARNING_KINDS`)."""
        return self.kind not in WARNING_KINDS


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found.

    Attributes:
        root: the dataset folder.
        n_images: number of images (by stem).
        n_masks: number of masks (by stem, including masks without an image).
        classes: the classes checked against (``classes.json``, the default, or range(num_classes)).
        problems: everything found wrong: whole-dataset and split problems first, then by stem.
        class_pixels: class id -> pixel count over all readable masks (ignore excluded).
        class_images: class id -> number of masks containing that id (ignore excluded).
        ignore_pixels: pixels marked ignore (255) over all masks.
        sizes: (H, W) of each readable image -> how many images have it.
        splits: split name -> number of stems listed.
    """

    root: Path
    n_images: int = 0
    n_masks: int = 0
    classes: dict[int, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    class_pixels: dict[int, int] = field(default_factory=dict)
    class_images: dict[int, int] = field(default_factory=dict)
    ignore_pixels: int = 0
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    splits: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        """Problems that make the dataset unusable as it is."""
        return [p for p in self.problems if p.is_error]

    @property
    def warnings(self) -> list[Problem]:
        """Problems worth knowing about that do not stop training."""
        return [p for p in self.problems if not p.is_error]

    @property
    def ok(self) -> bool:
        """True when there is no error-level problem (warnings allowed)."""
        return not self.errors


def _open_header(path: Path) -> tuple[int, int, Affine | None]:
    """(height, width, transform or None) of a raster, decoding a thumbnail.

    The thumbnail read makes a truncated or corrupt file fail here rather than in training.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            src.read(1, out_shape=(min(src.height, 32), min(src.width, 32)))
            transform = None if src.transform == Affine.identity() else src.transform
            return src.height, src.width, transform


def check_dataset(root: str | Path, *, num_classes: int | None = None) -> DatasetReport:
    """Check a dataset folder and gather its statistics.

    Class ids are checked against ``classes.json`` (or the default ``{0, 1}`` when absent) and,
    when given, ``num_classes``: with ``classes.json`` an id must be named there and be below
    ``num_classes``; without it, ``num_classes`` alone decides.

    Args:
        root: the dataset folder.
        num_classes: the number of classes a model will be trained with, or None.

    Returns:
        The report; ``report.ok`` is False when an error-level problem was found.

    Raises:
        InputFileError: ``root`` does not exist, is a file, or has no ``images/`` folder.
        InputError: ``num_classes`` is below 1 or above 255.
    """
    root = Path(root)
    require_dataset_dir(root)
    if num_classes is not None and not 1 <= num_classes <= IGNORE_INDEX:
        raise InputError(f"num_classes={num_classes!r} is not allowed; give 1 to {IGNORE_INDEX}")
    report = DatasetReport(root=root)
    problems = report.problems
    files = dataset_files(root)  # images/ + masks/, a YOLO folder or a Roboflow export root
    images, masks = files.images, files.masks
    for folder, found in ((files.images_dir, images), (files.masks_dir, masks)):
        for stem, paths in found.items():
            if len(paths) > 1:
                names = ", ".join(p.name for p in paths)
                problems.append(Problem(stem, "duplicate-stem", f"{folder} holds {names} for one stem; keep one"))
    report.n_images, report.n_masks = len(images), len(masks)

    classes: dict[int, str] | None
    try:
        classes = load_classes(root) or files.classes
    except (InputError, InputFileError) as exc:
        problems.append(Problem("", "bad-metadata", str(exc)))
        classes = None
    known, known_from = _known_classes(classes, num_classes)
    report.classes = (
        {c: n for c, n in classes.items() if c in known} if classes is not None
        else {c: DEFAULT_CLASSES.get(c, f"class {c}") for c in sorted(known)}
    )
    _check_splits(root, set(images), report, files.splits)

    pixels: Counter[int] = Counter()
    containing: Counter[int] = Counter()
    for stem in sorted(images.keys() | masks.keys()):
        image_paths, mask_paths = images.get(stem), masks.get(stem)
        header = None
        if image_paths:
            try:
                header = _open_header(image_paths[0])
                report.sizes[(header[0], header[1])] += 1
            except RasterioError as exc:
                message = f"{image_paths[0]} does not open ({exc}); replace or remove it"
                problems.append(Problem(stem, "unreadable-image", message))
        if not mask_paths:
            name = image_paths[0].name if image_paths else stem
            message = f"{name} has no mask in {files.masks_dir.name}/; it is unlabelled"
            problems.append(Problem(stem, "image-without-mask", message))
            continue
        mask_path = mask_paths[0]
        if not image_paths:
            message = f"{mask_path} has no image {IMAGES_DIR}/{stem}.*; add it or remove the mask"
            problems.append(Problem(stem, "mask-without-image", message))
        if mask_path.suffix.lower() == LABEL_SUFFIX:
            counts = _check_yolo(stem, mask_path, image_paths[0] if header and image_paths else None, known,
                                 known_from, problems)
        else:
            counts = _check_mask(stem, mask_path, header, known, known_from, problems)
        if counts is None:
            continue
        report.ignore_pixels += int(counts[IGNORE_INDEX])
        present = [int(i) for i in np.flatnonzero(counts[:IGNORE_INDEX])]
        for class_id in present:
            pixels[class_id] += int(counts[class_id])
            containing[class_id] += 1
        if not any(c != 0 for c in present):
            message = f"{mask_path.name} has only background/ignore pixels; check it is the right mask"
            problems.append(Problem(stem, "empty-mask", message))
    report.class_pixels = dict(sorted(pixels.items()))
    report.class_images = dict(sorted(containing.items()))
    return report


def _known_classes(classes: dict[int, str] | None, num_classes: int | None) -> tuple[set[int], str]:
    """The class ids a mask may hold, and what says so (for messages); see :func:`check_dataset`."""
    below = f" below num_classes={num_classes}" if num_classes is not None else ""
    if classes is not None:
        return {c for c in classes if num_classes is None or c < num_classes}, f"{CLASSES_FILE}{below}"
    if num_classes is not None:
        return set(range(num_classes)), f"num_classes={num_classes} ({CLASSES_FILE} is absent)"
    return set(DEFAULT_CLASSES), f"the default classes 0, 1 ({CLASSES_FILE} is absent)"


def require_fitting_masks(dataset: SegDataset, stems: list[str]) -> None:
    """Refuse, before any work, a mask that :func:`check_dataset` reports as an error.

    For tools that read masks as given (annotation prompts, mode comparison): each mask of
    ``stems`` must match its image's size and hold only class ids the dataset's classes name
    (255 = ignore is allowed), as ``samadapt data check`` requires. Unlabelled stems are skipped.

    Raises:
        InputError: naming the first mask at fault and how to fix it.
        InputFileError: an image or mask does not open, or a mask is not one band of integers.
    """
    known, known_from = _known_classes(load_classes(dataset.root), None)
    for stem in stems:
        path = dataset.mask_path(stem)
        if path is None:
            continue
        image = dataset.image_path(stem)
        try:
            size = _open_header(image)[:2]
        except RasterioError as exc:
            raise InputFileError(f"image {image} does not open ({exc}); replace or remove it") from None
        problems: list[Problem] = []
        _check_labels(stem, path, read_mask_file(path), size, known, known_from, problems, full_path=True)
        if problems:
            raise InputError(problems[0].message)


def _check_mask(
    stem: str,
    path: Path,
    image_header: tuple[int, int, Affine | None] | None,
    known: set[int],
    known_from: str,
    problems: list[Problem],
) -> np.ndarray | None:
    """Per-value pixel counts (length 256) of a usable mask, recording its problems; None if unusable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                count, height, width = src.count, src.height, src.width
                transform = None if src.transform == Affine.identity() else src.transform
                data = src.read(1)
    except RasterioError as exc:
        problems.append(Problem(stem, "unreadable-mask", f"mask {path} does not open ({exc}); replace or remove it"))
        return None
    if count != 1:
        message = f"mask {path.name} has {count} bands; save one band of class ids (0-254, 255 = ignore)"
        problems.append(Problem(stem, "multi-band-mask", message))
        return None
    if data.dtype.kind not in "biu":
        message = f"mask {path.name} is {data.dtype}; save integer class ids (uint8)"
        problems.append(Problem(stem, "bad-mask-dtype", message))
        return None
    image_size = None
    if image_header is not None:
        image_size = image_header[:2]
        expected = image_header[2]
        moved = transform is not None and expected is not None and not transform.almost_equals(expected)
        if image_size == (height, width) and moved:
            message = f"mask {path.name} and its image have different geotransforms; the mask may be misplaced"
            problems.append(Problem(stem, "transform-mismatch", message))
    return _check_labels(stem, path, data, image_size, known, known_from, problems)


def _check_labels(
    stem: str,
    path: Path,
    data: np.ndarray,
    image_size: tuple[int, int] | None,
    known: set[int],
    known_from: str,
    problems: list[Problem],
    *,
    full_path: bool = False,
) -> np.ndarray | None:
    """Per-value pixel counts (length 256) of a mask's (H, W) values, recording a size that is not
    ``image_size`` and ids outside ``known``; None if a value lies outside 0..255.

    Messages name the mask by file name, or by ``path`` when ``full_path``.
    """
    name = path if full_path else path.name
    if image_size is not None and data.shape != tuple(image_size):
        problems.append(
            Problem(
                stem, "size-mismatch",
                f"mask {name} is {data.shape[0]} x {data.shape[1]} (rows x cols) but its image is "
                f"{image_size[0]} x {image_size[1]}; masks must cover their image pixel for pixel",
            )
        )
    values = data.ravel().astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > IGNORE_INDEX):
        message = f"mask {name} holds values {values.min()}..{values.max()}; class ids must be 0-254, 255 = ignore"
        problems.append(Problem(stem, "unknown-class", message))
        return None
    counts = np.bincount(values, minlength=IGNORE_INDEX + 1)
    unknown = [i for i in np.flatnonzero(counts[:IGNORE_INDEX]).tolist() if i not in known]
    if unknown:
        problems.append(
            Problem(
                stem, "unknown-class",
                f"mask {name} holds class id(s) {', '.join(map(str, unknown))}, unknown to {known_from}; "
                f"name them in {CLASSES_FILE} or fix the mask",
            )
        )
    return counts


def _check_yolo(stem: str, path: Path, image: Path | None, known: set[int], known_from: str,
                problems: list[Problem]) -> np.ndarray | None:
    """Per-value pixel counts of a YOLO label file rasterised on its image's grid; None if unusable."""
    if image is None:  # no readable image: the lines alone are checked, on a nominal grid
        try:
            parse_yolo_file(path, 1, 1)
        except (InputError, InputFileError) as exc:
            problems.append(Problem(stem, "unreadable-mask", str(exc)))
        return None
    try:
        data = read_yolo_mask(path, image)
    except (InputError, InputFileError) as exc:
        problems.append(Problem(stem, "unreadable-mask", str(exc)))
        return None
    return _check_labels(stem, path, data, None, known, known_from, problems)


def _check_splits(root: Path, stems: set[str], report: DatasetReport, given: dict[str, list[str]]) -> None:
    try:
        splits = load_splits(root) or given
    except (InputError, InputFileError) as exc:
        report.problems.append(Problem("", "bad-metadata", str(exc)))
        return
    report.splits = {name: len(members) for name, members in splits.items()}
    owner: dict[str, str] = {}
    for name, members in splits.items():
        for stem in members:
            if stem not in stems:
                message = f"split {name!r} of {SPLITS_FILE} lists {stem!r}, which has no image; remove it"
                report.problems.append(Problem(stem, "unknown-split-stem", message))
            if stem in owner:
                report.problems.append(
                    Problem(
                        stem, "duplicate-split-stem",
                        f"{stem!r} is in split {owner[stem]!r} and in {name!r} of {SPLITS_FILE}; keep it in one split",
                    )
                )
            else:
                owner[stem] = name


def format_report(report: DatasetReport, *, max_problems: int = 50) -> RenderableType:
    """Render a report as rich tables: summary, classes, image sizes, problems.

    Args:
        report: from :func:`check_dataset`.
        max_problems: list at most this many problems (errors first); the rest are counted.

    Returns:
        A renderable for ``rich.console.Console.print``.
    """
    summary = Table(title=f"dataset {report.root}", show_header=False)
    summary.add_column("what")
    summary.add_column("value")
    summary.add_row("images", str(report.n_images))
    summary.add_row("masks", str(report.n_masks))
    summary.add_row("splits", ", ".join(f"{k}: {v}" for k, v in report.splits.items()) or "none")
    summary.add_row("ignore pixels", f"{report.ignore_pixels:,}")
    status = "[green]ok[/green]" if report.ok else f"[red]{len(report.errors)} error(s)[/red]"
    summary.add_row("status", f"{status}, {len(report.warnings)} warning(s)")

    classes = Table(title="classes")
    for name in ("id", "name", "pixels", "share", "masks"):
        classes.add_column(name, justify="right" if name != "name" else "left")
    total = sum(report.class_pixels.values()) or 1
    for class_id in sorted(set(report.classes) | set(report.class_pixels)):
        name = report.classes.get(class_id, "[red]unknown[/red]")
        n = report.class_pixels.get(class_id, 0)
        images = str(report.class_images.get(class_id, 0))
        classes.add_row(str(class_id), name, f"{n:,}", f"{100 * n / total:.2f}%", images)

    sizes = Table(title="image sizes")
    sizes.add_column("rows x cols")
    sizes.add_column("images", justify="right")
    for (h, w), n in report.sizes.most_common():
        sizes.add_row(f"{h} x {w}", str(n))

    parts: list[RenderableType] = [summary, classes, sizes]
    if report.problems:
        table = Table(title="problems")
        for name in ("level", "stem", "kind", "message"):
            table.add_column(name)
        ordered = report.errors + report.warnings
        for p in ordered[:max_problems]:
            level = "[red]error[/red]" if p.is_error else "[yellow]warning[/yellow]"
            table.add_row(level, p.stem, p.kind, p.message)
        if len(ordered) > max_problems:
            table.add_row("", "", "", f"... and {len(ordered) - max_problems} more")
        parts.append(table)
    return Group(*parts)
