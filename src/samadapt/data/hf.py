"""Convert a Hugging Face ``datasets`` dataset saved with ``save_to_disk`` into our dataset format.

Needs the optional ``datasets`` package (``pip install samadapt[hf]``), imported only when
:func:`from_hf_dataset` runs. Images become PNGs (or GeoTIFFs), masks single-band class-id
PNGs; the dataset's splits become ``splits.json`` ("validation" and "valid" are renamed
"val"); ``classes.json`` names the class ids found in the masks unless ``classes`` is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from samadapt.data.dataset import IGNORE_INDEX
from samadapt.data.manifest import DATASET, output_folder
from samadapt.data.splits import write_splits
from samadapt.data.write import as_label_mask, write_classes, write_sample
from samadapt.errors import InputError, InputFileError, MissingDependencyError
from samadapt.imagery.read import GeoImage, from_array

IMAGE_COLUMNS = ("image", "img", "images", "pixel_values")
"""Column names tried, in order, when ``image_column`` is not in the dataset."""
MASK_COLUMNS = ("label", "mask", "annotation", "segmentation", "semantic_mask", "labels", "masks", "gt")
"""Column names tried, in order, when ``mask_column`` is None."""
_SPLIT_NAMES = {"validation": "val", "valid": "val"}
_INSTALL_HINT = "reading Hugging Face datasets needs the 'datasets' package; install it with: pip install samadapt[hf]"


def _import_datasets() -> ModuleType:
    try:
        import datasets
    except ImportError as exc:
        raise MissingDependencyError(_INSTALL_HINT, name="datasets") from exc
    return datasets


def _pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, option: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise InputError(f"{what} column {wanted!r} is not in the dataset; its columns are: {', '.join(columns)}")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise InputError(
        f"found no {what} column among {', '.join(columns)} (looked for {', '.join(candidates)}); "
        f"pass {option}=<column>"
    )


def _decode(value: Any, what: str, index: int) -> Any:
    """A ``datasets`` value as a PIL image or an array ({"bytes", "path"} dicts are opened)."""
    from PIL import Image

    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        import io

        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        if source is None:
            raise InputError(f"the {what} of row {index} has neither bytes nor a path")
        return Image.open(source)
    if value is None:
        raise InputError(f"the {what} of row {index} is empty")
    return value if isinstance(value, Image.Image) else np.asarray(value)


def _to_image(value: Any, index: int) -> GeoImage:
    from PIL import Image

    decoded = _decode(value, "image", index)
    if isinstance(decoded, Image.Image):
        if decoded.mode not in ("L", "RGB", "I", "I;16", "F"):  # palette, CMYK, 1-bit, alpha...: show colours
            decoded = decoded.convert("RGB")
        return from_array(np.asarray(decoded), channel_axis="last")  # PIL gives (rows, cols[, bands])
    return from_array(np.asarray(decoded))  # a plain array: its band axis is guessed where only one reading fits


def _to_mask(value: Any, index: int) -> np.ndarray:
    # palette ("P") masks are read as their indices, which are the class ids
    arr = np.asarray(_decode(value, "mask", index))
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(
            f"the mask of row {index} has shape {arr.shape}; masks must be single-band class ids, "
            "convert colour-coded masks to ids first"
        )
    return as_label_mask(arr)


def from_hf_dataset(
    path: str | Path,
    out_dir: str | Path,
    *,
    split: str | None = None,
    image_column: str = "image",
    mask_column: str | None = None,
    stem_column: str | None = None,
    classes: Mapping[int, str] | None = None,
    image_format: Literal["png", "tif"] = "png",
    overwrite: bool = False,
) -> Path:
    """Write a dataset saved with ``datasets``' ``save_to_disk`` in samadapt's format.

    Args:
        path: the folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``.
        out_dir: the dataset folder to create.
        split: convert only this split of a ``DatasetDict``; None converts every split and
            records them in ``splits.json``.
        image_column: the image column; when absent, the first of :data:`IMAGE_COLUMNS` present.
        mask_column: the mask column; None picks the first of :data:`MASK_COLUMNS` present.
        stem_column: a column of unique file stems; None names samples ``<split>_<row>``
            (or ``<row>`` for a plain ``Dataset``), rows zero-padded.
        classes: class id -> name for ``classes.json``; None names every id found in the
            masks ``class <id>`` (0 is "background").
        image_format: ``"png"`` or ``"tif"`` for images and masks.
        overwrite: replace ``out_dir`` if it holds a dataset samadapt wrote, unchanged since.

    Returns:
        ``out_dir``.

    Raises:
        ModuleNotFoundError: ``datasets`` is not installed (the message says how to install it).
        InputFileError: ``path`` is missing or not a saved dataset.
        InputError: unknown split or columns, images or masks of the wrong shape, or
            duplicate stems.
        OutputExistsError: ``out_dir`` holds files samadapt did not write as a dataset, or a
            previous dataset and ``overwrite`` is False.
    """
    datasets = _import_datasets()
    path, out_dir = Path(path), Path(out_dir)
    if not path.exists():
        raise InputFileError(f"saved dataset not found: {path}")
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise InputFileError(f"{path} is not a dataset written by save_to_disk ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split is not None and split not in loaded:
            raise InputError(f"split {split!r} is not in {path}; its splits are: {', '.join(loaded)}")
        parts = {name: loaded[name] for name in ([split] if split is not None else list(loaded))}
        prefix = True
    else:
        if split is not None:
            raise InputError(f"{path} holds a single dataset without splits; leave split unset")
        parts = {"": loaded}
        prefix = False
    splits: dict[str, list[str]] = {}
    found_ids: set[int] = set()
    seen: set[str] = set()
    with output_folder(out_dir, kind=DATASET, overwrite=overwrite) as stage:
        for name, part in parts.items():
            columns = list(part.column_names)
            # the default name falls back to the usual alternatives; an explicit one must exist
            wanted = None if image_column == "image" else image_column
            image_col = _pick_column(columns, wanted, IMAGE_COLUMNS, "image", "image_column")
            mask_col = _pick_column(columns, mask_column, MASK_COLUMNS, "mask", "mask_column")
            if stem_column is not None and stem_column not in columns:
                raise InputError(
                    f"stem column {stem_column!r} is not in the dataset; its columns are: {', '.join(columns)}"
                )
            digits = max(len(str(len(part) - 1)), 1)
            stems: list[str] = []
            for index, row in enumerate(part):
                if stem_column is not None:
                    stem = str(row[stem_column])
                else:
                    stem = f"{name}_{index:0{digits}d}" if prefix else f"{index:0{digits}d}"
                if stem in seen:
                    raise InputError(f"stem {stem!r} (row {index}) is used twice; stems must be unique")
                seen.add(stem)
                image = _to_image(row[image_col], index)
                mask = _to_mask(row[mask_col], index)
                if mask.shape != (image.height, image.width):
                    raise InputError(
                        f"row {index}: the mask is {mask.shape} (rows, cols) but the image is "
                        f"{(image.height, image.width)}; they must match"
                    )
                write_sample(stage, stem, image, mask, image_format=image_format)
                found_ids.update(int(i) for i in np.unique(mask) if i != IGNORE_INDEX)
                stems.append(stem)
            if prefix:
                key = _SPLIT_NAMES.get(name, name)
                splits[name if key in splits else key] = stems
        if classes is None:
            classes = {i: ("background" if i == 0 else f"class {i}") for i in sorted(found_ids | {0})}
        write_classes(stage, classes)
        if prefix:
            write_splits(stage, splits)
    return out_dir
