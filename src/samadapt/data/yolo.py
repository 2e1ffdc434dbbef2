"""YOLO label folders as labelling tools (Roboflow, CVAT, Label Studio) export them, read as they are.

Two layouts are datasets without conversion:

- a YOLO folder: ``images/`` beside ``labels/`` (one ``<stem>.txt`` per image) and an optional
  ``data.yaml``;
- a Roboflow export root: ``data.yaml`` beside split folders ``train/``, ``valid/`` (or ``val/``)
  and ``test/``, each with ``images/`` and ``labels/``; it is one dataset whose splits are
  ``train``, ``val`` and ``test``.

A label line is ``class cx cy w h`` (a box) or ``class x1 y1 x2 y2 x3 y3 ...`` (a segmentation
polygon: more than five numbers), coordinates normalised to 0..1. YOLO class ``k`` is class
``k + 1`` (0 is background). As a mask, boxes are filled rectangles and polygons filled
polygons, painted largest first so a small object inside a large one stays visible.
This module reads no other part of :mod:`samadapt.data`, so the dataset module can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samadapt.errors import InputError, InputFileError

LABELS_DIR = "labels"
LABEL_SUFFIX = ".txt"
DATA_YAML = "data.yaml"
#: Split folder of a Roboflow export -> split name in ``splits.json`` terms.
SPLIT_FOLDERS = {"train": "train", "valid": "val", "val": "val", "test": "test"}


@dataclass(frozen=True)
class YoloObject:
    """One label line: class id (YOLO class + 1) and its outline in pixels.

    Attributes:
        class_id: 1-based class id.
        box: (x0, y0, x1, y1) in pixels, clipped to the image; for a polygon, its bounds.
        polygon: (N, 2) x, y vertices in pixels, or None for a box line.
    """

    class_id: int
    box: tuple[float, float, float, float]
    polygon: np.ndarray | None = None


def parse_yolo_file(path: Path, height: int, width: int) -> list[YoloObject]:
    """Read one YOLO label file for an image of ``height`` x ``width`` pixels.

    Args:
        path: the ``<stem>.txt`` file.
        height: image rows.
        width: image columns.

    Returns:
        The objects, in file order.

    Raises:
        InputFileError: the file cannot be read as text.
        InputError: a line is neither a box nor a polygon of numbers, or has an empty box, naming file and line.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"YOLO label file {path} cannot be read ({exc})") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5 and (len(parts) < 7 or len(parts) % 2 == 0):
            raise InputError(f"{path}:{n} has {len(parts)} values; YOLO lines are 'class cx cy w h' (a box) "
                             "or 'class x1 y1 x2 y2 x3 y3 ...' (a polygon of three points or more)")
        try:
            cls = int(parts[0])
            values = np.array([float(v) for v in parts[1:]])
        except ValueError:
            raise InputError(f"{path}:{n} is not a class id followed by numbers: {line!r}") from None
        if cls < 0 or cls > 253:
            raise InputError(f"{path}:{n} has class {cls}; YOLO classes are 0-253 (they become 1-254)")
        if len(parts) == 5:
            cx, cy, bw, bh = values
            x0, x1 = max((cx - bw / 2) * width, 0.0), min((cx + bw / 2) * width, float(width))
            y0, y1 = max((cy - bh / 2) * height, 0.0), min((cy + bh / 2) * height, float(height))
            polygon = None
        else:
            polygon = values.reshape(-1, 2) * np.array([width, height])
            x0, y0 = np.clip(polygon.min(axis=0), 0, None)
            x1, y1 = np.minimum(polygon.max(axis=0), (width, height))
        if x1 <= x0 or y1 <= y0:
            raise InputError(f"{path}:{n} is an empty {'box' if polygon is None else 'polygon'} "
                             f"after clipping to the {width} x {height} image")
        out.append(YoloObject(cls + 1, (float(x0), float(y0), float(x1), float(y1)), polygon))
    return out


def yolo_mask(objects: Sequence[YoloObject], height: int, width: int) -> np.ndarray:
    """Paint objects into an (H, W) uint8 class mask: boxes filled, polygons filled, largest first.

    A box covers the pixels between its edges rounded to whole pixels; a polygon the pixels whose
    centres lie inside it (``rasterio.features.rasterize``).
    """
    from affine import Affine
    from rasterio.features import rasterize
    from shapely.geometry import Polygon

    shapes = []
    for obj in objects:
        if obj.polygon is None:
            x0, y0, x1, y1 = (int(round(v)) for v in obj.box)
            region = np.zeros((height, width), bool)
            region[y0:y1, x0:x1] = True
        else:  # pixel coordinates are map coordinates under the identity transform
            region = rasterize([(Polygon(obj.polygon), 1)], out_shape=(height, width), transform=Affine.identity(),
                               fill=0, dtype="uint8").astype(bool)
        shapes.append((obj.class_id, region))
    mask = np.zeros((height, width), np.uint8)
    for class_id, region in sorted(shapes, key=lambda s: -int(s[1].sum())):
        mask[region] = class_id
    return mask


def image_size(path: Path) -> tuple[int, int]:
    """(rows, cols) of an image file, from its header.

    Raises:
        InputFileError: the image does not open.
    """
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.height, src.width
    except RasterioError as exc:
        raise InputFileError(f"image {path} does not open ({exc}); replace or remove it") from None


def read_yolo_mask(label: Path, image: Path | None = None) -> np.ndarray:
    """The class mask of a YOLO label file, on the grid of its image.

    Args:
        label: ``.../labels/<stem>.txt``.
        image: its image; None to find ``../images/<stem>.*`` beside the labels folder.

    Raises:
        InputFileError: no image is found for the label file, or it does not open.
        InputError: a line of the file is malformed (see :func:`parse_yolo_file`).
    """
    label = Path(label)
    if image is None:
        folder = label.parent.parent / "images"
        found = sorted(p for p in folder.glob(f"{label.stem}.*") if not p.name.startswith(".")) if folder.is_dir() \
            else []
        if not found:
            raise InputFileError(f"YOLO label file {label} has no image {folder / label.stem}.*; add it or remove "
                                 "the label file")
        image = found[0]
    height, width = image_size(image)
    return yolo_mask(parse_yolo_file(label, height, width), height, width)


def is_yolo_folder(root: Path) -> bool:
    """True for ``images/`` beside a ``labels/`` folder holding ``.txt`` files, and no ``masks/``."""
    root = Path(root)
    labels = root / LABELS_DIR
    return ((root / "images").is_dir() and not (root / "masks").is_dir() and labels.is_dir()
            and any(labels.glob(f"*{LABEL_SUFFIX}")))


def roboflow_splits(root: Path) -> dict[str, Path]:
    """Split name -> split folder of a Roboflow export root; {} when ``root`` is not one.

    A Roboflow root has ``data.yaml``, no ``images/`` of its own, and at least one split folder
    (``train``, ``valid`` or ``val``, ``test``) holding ``images/``.

    Raises:
        InputError: both ``valid/`` and ``val/`` are present.
    """
    root = Path(root)
    if not (root / DATA_YAML).is_file() or (root / "images").is_dir():
        return {}
    found: dict[str, Path] = {}
    for folder, split in SPLIT_FOLDERS.items():
        if (root / folder / "images").is_dir():
            if split in found:
                raise InputError(f"{root} has both {found[split].name}/ and {folder}/ as the validation split; "
                                 "keep one")
            found[split] = root / folder
    return found


def yolo_names(root: Path) -> dict[int, str]:
    """Class id (YOLO class + 1) -> name, from ``names`` in ``data.yaml`` in ``root`` or its parent.

    Returns:
        The names; {} when there is no ``data.yaml`` or it names no classes.

    Raises:
        InputError: ``data.yaml`` is not YAML, or its ``names`` are not a list or a mapping of class ids.
    """
    import yaml

    for candidate in (Path(root) / DATA_YAML, Path(root).parent / DATA_YAML):
        if not candidate.is_file():
            continue
        try:
            doc = yaml.safe_load(candidate.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise InputError(f"{candidate} is not readable YAML ({str(exc).splitlines()[0]}); fix it") from None
        names = doc.get("names") if isinstance(doc, dict) else None
        try:
            if isinstance(names, dict):
                return {int(k) + 1: str(v) for k, v in names.items()}
            if isinstance(names, list):
                return {i + 1: str(v) for i, v in enumerate(names)}
        except (TypeError, ValueError):
            raise InputError(f"{candidate}: names must be a list or map class ids (0, 1, ...) to names") from None
        return {}
    return {}


def classes_in_labels(labels: Sequence[Path]) -> dict[int, str]:
    """Class id -> ``"class k"`` (k = the YOLO class) for every class the label files use.

    For YOLO folders without ``data.yaml``: the files are small text, so reading them all is cheap.
    Lines that do not parse are skipped here (``data check`` reports them).
    """
    found: set[int] = set()
    for path in labels:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            head = line.split()[:1]
            if head and head[0].isdigit() and int(head[0]) < 254:
                found.add(int(head[0]) + 1)
    return {k: f"class {k - 1}" for k in sorted(found)}
