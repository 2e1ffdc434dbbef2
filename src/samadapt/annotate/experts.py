"""Expert prompts for a dataset: YOLO label folders, CSV files in pixels, vector files in map units.

Each source is read into ``{image stem: [ExpertObject, ...]}``. Class ids follow the dataset
format (0 = background), so a YOLO class ``k`` becomes class ``k + 1``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from samadapt.errors import InputError, InputFileError
from samadapt.prompts.types import ObjectPrompt

if TYPE_CHECKING:
    from affine import Affine
    from rasterio.crs import CRS

#: An image's (crs, transform, (rows, cols)); crs and transform are None when it is not georeferenced.
Georef = tuple["CRS | None", "Affine | None", tuple[int, int]]


@dataclass(frozen=True)
class ExpertObject:
    """One object an expert marked: a prompt and its class id (1..K)."""

    prompt: ObjectPrompt
    class_id: int = 1


@dataclass
class ExpertLabels:
    """Expert objects per image stem, with class names where the source gives them."""

    objects: dict[str, list[ExpertObject]]
    class_names: dict[int, str] = field(default_factory=dict)
    kind: str = ""


def read_yolo_folder(folder: Path, sizes: dict[str, tuple[int, int]]) -> ExpertLabels:
    """Read YOLO labels (``class cx cy w h`` boxes or ``class x1 y1 x2 y2 ...`` polygons, normalised).

    Args:
        folder: folder of ``<stem>.txt`` files (what Roboflow exports); a ``data.yaml`` beside
            or above it names the classes.
        sizes: (rows, cols) of each image, by stem.

    Returns:
        Boxes in pixels (XYXY; a polygon's bounds), class id = YOLO class + 1.
    """
    from samadapt.data.yolo import parse_yolo_file, yolo_names

    folder = Path(folder)
    objects: dict[str, list[ExpertObject]] = {}
    for stem, (h, w) in sizes.items():
        path = folder / f"{stem}.txt"
        if path.is_file():
            objects[stem] = [ExpertObject(ObjectPrompt(box=np.array(o.box)), o.class_id)
                             for o in parse_yolo_file(path, h, w)]
    return ExpertLabels(objects, yolo_names(folder), kind="yolo")


def read_csv_labels(path: Path) -> ExpertLabels:
    """Read a CSV of expert prompts in pixels: ``image`` plus ``x0,y0,x1,y1`` or ``x,y[,label]``.

    An optional ``class`` column gives class ids (default 1); an optional ``object`` column
    groups point rows into one object (default: each row is an object).
    """
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InputError(f"{path} has no rows")
    cols = set(rows[0])
    if "image" not in cols:
        raise InputError(f"{path} needs an 'image' column naming each row's image stem; it has {sorted(cols)}")
    is_box = {"x0", "y0", "x1", "y1"} <= cols
    if not is_box and not {"x", "y"} <= cols:
        raise InputError(f"{path} needs columns x0,y0,x1,y1 (boxes) or x,y[,label] (points); it has {sorted(cols)}")
    objects: dict[str, list[ExpertObject]] = {}
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for i, row in enumerate(rows):
        stem = Path(row["image"]).stem
        key = (stem, row.get("object") or f"row{i}")
        groups.setdefault(key, []).append(row)
    for (stem, _), group in groups.items():
        try:
            cls = int(group[0].get("class") or 1)
            if is_box:
                r = group[0]
                prompt = ObjectPrompt(box=np.array([float(r["x0"]), float(r["y0"]), float(r["x1"]), float(r["y1"])]))
            else:
                pts = np.array([[float(r["x"]), float(r["y"])] for r in group])
                labels = np.array([int(r.get("label") or 1) for r in group])
                prompt = ObjectPrompt(points=pts, labels=labels)
        except ValueError as e:
            raise InputError(f"{path}: a row of image {stem!r} is not numeric ({e})") from None
        objects.setdefault(stem, []).append(ExpertObject(prompt, cls))
    return ExpertLabels(objects, kind="csv")


def read_vector_labels(path: Path, georef: dict[str, Georef]) -> ExpertLabels:
    """Read expert boxes (polygons) or points from a vector file in map coordinates.

    Args:
        path: GeoPackage, GeoJSON or Shapefile; polygons become boxes, points point prompts;
            a ``class`` / ``class_id`` property gives the class (default 1).
        georef: (crs, transform, (rows, cols)) of each georeferenced image, by stem. A feature
            goes to every image it overlaps, clipped to it.
    """
    import geopandas as gpd
    from shapely.geometry import box as shapely_box

    from samadapt.prompts.io import map_box_to_pixel, map_to_prompt_point

    try:
        frame = gpd.read_file(path)
    except Exception as e:  # noqa: BLE001 - pyogrio raises several types for unreadable files
        raise InputFileError(f"cannot read {path} as a vector file ({e})") from None
    if frame.crs is None:
        raise InputError(f"{path} has no CRS; expert labels in map coordinates need one")
    class_col = next((c for c in ("class_id", "class") if c in frame.columns), None)
    objects: dict[str, list[ExpertObject]] = {}
    for stem, (crs, transform, (h, w)) in georef.items():
        if crs is None or transform is None:
            continue
        local = frame.to_crs(crs)
        x0, y1 = transform * (0, 0)
        x1, y0 = transform * (w, h)
        extent = shapely_box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        items = []
        for _, feat in local[local.intersects(extent)].iterrows():
            geom = feat.geometry.intersection(extent) if feat.geometry.geom_type != "Point" else feat.geometry
            cls = int(feat[class_col]) if class_col else 1
            if geom.geom_type in ("Polygon", "MultiPolygon"):
                b = map_box_to_pixel(np.array(geom.bounds), transform=transform, src_crs=None, raster_crs=None)
                b = np.asarray(b, dtype=np.float64).reshape(4)
                b = np.array([max(b[0], 0), max(b[1], 0), min(b[2], w), min(b[3], h)])
                if b[2] > b[0] and b[3] > b[1]:
                    items.append(ExpertObject(ObjectPrompt(box=b), cls))
            elif geom.geom_type == "Point":
                point = np.array([[geom.x, geom.y]])
                xy = map_to_prompt_point(point, transform=transform, src_crs=None, raster_crs=None)
                items.append(ExpertObject(ObjectPrompt(points=xy, labels=np.array([1])), cls))
        if items:
            objects[stem] = items
    return ExpertLabels(objects, kind="vector")


def read_expert_labels(dataset_dir: Path, labels: Path | None) -> ExpertLabels | None:
    """The expert prompts of a dataset: from ``labels``, or from a YOLO ``labels/`` beside its images.

    Args:
        dataset_dir: dataset folder (``images/``, optional ``masks/``).
        labels: a YOLO label folder, a CSV file in pixels or a vector file in map coordinates
            (GeoPackage, GeoJSON). None: the dataset's own ``labels/`` folder when it holds
            ``.txt`` files and the dataset has no ``masks/``.

    Returns:
        The expert objects, or None when there are none to use (the masks or SAM's automatic
        mode give the prompts then).

    Raises:
        InputError: if ``labels`` does not exist.
    """
    from samadapt.data.dataset import SegDataset

    if labels is None:
        default = dataset_dir / "labels"
        if default.is_dir() and any(default.glob("*.txt")) and not (dataset_dir / "masks").is_dir():
            labels = default
        else:
            return None
    if not labels.exists():
        raise InputError(f"--labels {labels} does not exist")
    ds = SegDataset.open(dataset_dir)
    if labels.is_dir():
        sizes: dict[str, tuple[int, int]] = {}
        for stem in ds.stems():
            img = ds.read_image(stem)
            sizes[stem] = (img.height, img.width)
        return read_yolo_folder(labels, sizes)
    if labels.suffix.lower() == ".csv":
        return read_csv_labels(labels)
    georef: dict[str, Georef] = {}
    for stem in ds.stems():
        img = ds.read_image(stem)
        georef[stem] = (img.crs, img.transform, (img.height, img.width))
    return read_vector_labels(labels, georef)
