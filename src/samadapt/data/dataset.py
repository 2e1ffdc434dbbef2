"""The on-disk dataset format every training, evaluation and annotation feature reads.

A dataset is a folder::

    root/
      images/      one image per sample, any format read_image reads (PNG, JPEG, TIFF, GeoTIFF)
      masks/       optional; one single-band PNG or GeoTIFF per labelled sample, same stem
      splits.json  optional; {"train": [stems], "val": [...], "test": [...]}
      classes.json optional; {"0": "background", "1": "building", ...}

Mask values are class ids: 0 = background, 1..254 = classes, :data:`IGNORE_INDEX` (255) =
ignore (unlabelled or nodata pixels, left out of losses and metrics). GeoTIFF masks written
here carry 255 as their nodata value, so GIS tools show ignored pixels as transparent.
An image without a mask is an unlabelled sample (e.g. waiting for annotation).

YOLO label folders are datasets as they are (see :mod:`samadapt.data.yolo`): ``images/`` beside
``labels/*.txt`` (and no ``masks/``), or a Roboflow export root (``data.yaml`` beside ``train/``,
``valid/``, ``test/``, each with ``images/`` and ``labels/``), whose split folders are its
splits. Their label files are their masks, rasterised when read; their classes are the
``data.yaml`` names, else the classes the label files use, unless ``classes.json`` says otherwise.

Without ``classes.json`` the classes are ``{0: "background", 1: "object"}``: a binary
dataset. The classes are deliberately not guessed from the masks (that would read every
mask on open, and a typo'd id would silently become a class); :func:`check_dataset
<samadapt.data.check.check_dataset>` reports ids that ``classes.json`` does not name.
Files whose names start with ``.`` (temporary files of interrupted writes) are ignored.
A dataset samadapt writes whole (``data build``, ``data from-hf``, ``annotate``) also holds
``samadapt.json``, the list of its files that lets ``--overwrite`` replace it and nothing else
(see :mod:`samadapt.data.manifest`). Samples and ``classes.json`` are written by
:mod:`samadapt.data.write`, splits made and written by :mod:`samadapt.data.splits`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from samadapt.data.yolo import (
    LABEL_SUFFIX,
    LABELS_DIR,
    classes_in_labels,
    is_yolo_folder,
    read_yolo_mask,
    roboflow_splits,
    yolo_names,
)
from samadapt.errors import InputError, InputFileError
from samadapt.imagery.read import GeoImage
from samadapt.imagery.read import read_image as _read_image
from samadapt.imagery.stretch import Stretch
from samadapt.prompts.types import IGNORE as IGNORE_INDEX

IMAGES_DIR = "images"
MASKS_DIR = "masks"
SPLITS_FILE = "splits.json"
CLASSES_FILE = "classes.json"
DEFAULT_CLASSES: dict[int, str] = {0: "background", 1: "object"}
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".bmp")
MASK_SUFFIXES = (".png", ".tif", ".tiff")
_LAYOUT = (
    "a dataset folder holds images/ (one image per sample), optionally masks/ (single-band PNG or "
    "GeoTIFF class ids with the image's stem), splits.json and classes.json"
)


class SegDataset:
    """A segmentation dataset folder, opened: which samples exist, their splits and classes.

    Build one with :meth:`open`; the constructor only stores what it is given. Nothing is
    read from the images or masks until asked for.

    Attributes:
        root: the dataset folder.
        classes: class id -> name, from ``classes.json`` (0 always present, named
            "background" unless the file says otherwise), or :data:`DEFAULT_CLASSES`.
        splits: split name -> sorted stems, from ``splits.json``; empty when absent.
    """

    def __init__(
        self,
        root: Path,
        *,
        images: Mapping[str, Path],
        masks: Mapping[str, Path],
        classes: Mapping[int, str],
        splits: Mapping[str, Sequence[str]],
    ) -> None:
        self.root = Path(root)
        self.classes: dict[int, str] = dict(sorted(classes.items()))
        self.splits: dict[str, list[str]] = {name: sorted(stems) for name, stems in splits.items()}
        self._images = dict(images)
        self._masks = dict(masks)

    @classmethod
    def open(cls, root: str | Path) -> SegDataset:
        """Open a dataset folder, validating its layout, ``classes.json`` and ``splits.json``.

        Args:
            root: the dataset folder.

        Returns:
            The dataset.

        Raises:
            InputFileError: ``root`` or ``root/images`` is missing, or a JSON file is not JSON.
            InputError: two files share a stem, ``classes.json`` or ``splits.json`` is
                malformed, a split names a stem that has no image, or a stem is in two splits.
        """
        root = Path(root)
        require_dataset_dir(root)
        found = dataset_files(root)
        images, masks = _unique(found.images, found.images_dir), _unique(found.masks, found.masks_dir)
        classes = load_classes(root) or found.classes
        splits = load_splits(root) or found.splits
        check_split_members(splits, images.keys(), root, root / SPLITS_FILE if not found.splits else None)
        return cls(root, images=images, masks=masks, classes=classes or DEFAULT_CLASSES, splits=splits)

    def __len__(self) -> int:
        """Number of images (labelled or not)."""
        return len(self._images)

    def __repr__(self) -> str:
        return (
            f"SegDataset({str(self.root)!r}, images={len(self._images)}, masks={len(self._masks)}, "
            f"classes={len(self.classes)}, splits={ {k: len(v) for k, v in self.splits.items()} })"
        )

    @property
    def num_classes(self) -> int:
        """Largest class id in :attr:`classes` + 1 (the size of a model's class axis)."""
        return max(self.classes) + 1

    def stems(self, split: str | None = None) -> list[str]:
        """Sorted stems of all images, or of one split.

        Args:
            split: a key of ``splits.json`` (e.g. ``"train"``), or None for every image.

        Returns:
            The stems, sorted.

        Raises:
            InputError: ``split`` is not in ``splits.json`` (or there is no ``splits.json``).
        """
        if split is None:
            return sorted(self._images)
        if split not in self.splits:
            known = ", ".join(repr(s) for s in self.splits) or f"none ({self.root / SPLITS_FILE} does not exist)"
            raise InputError(f"unknown split {split!r}; the splits of {self.root} are: {known}")
        return list(self.splits[split])

    def image_path(self, stem: str) -> Path:
        """The image file of ``stem``.

        Raises:
            InputError: no image has this stem.
        """
        if stem not in self._images:
            raise InputError(f"no image with stem {stem!r} in {self.root / IMAGES_DIR}; see stems() for those present")
        return self._images[stem]

    def mask_path(self, stem: str) -> Path | None:
        """The mask file of ``stem``, or None for an unlabelled image.

        Raises:
            InputError: no image has this stem.
        """
        self.image_path(stem)
        return self._masks.get(stem)

    def read_image(self, stem: str, *, bands: Sequence[int] | None = None, stretch: Stretch = "auto") -> GeoImage:
        """Read the image of ``stem`` as SAM sees it (see :func:`samadapt.imagery.read.read_image`).

        Args:
            stem: the sample.
            bands: 1-based bands to show, 1 or 3 of them; None for the defaults.
            stretch: ``"auto"``, a (low, high) percentile pair, or None.

        Returns:
            The (H, W, 3) uint8 image with validity, CRS and transform.
        """
        return _read_image(self.image_path(stem), bands=bands, stretch=stretch)

    def read_mask(self, stem: str) -> np.ndarray:
        """Read the mask of ``stem``.

        Returns:
            (H, W) uint8 class ids: 0 background, 1..254 classes, 255 ignore.

        Raises:
            InputError: ``stem`` has no image or no mask, or the mask holds values above 255.
            InputFileError: the mask cannot be read or is not single-band integer.
        """
        path = self.mask_path(stem)
        if path is None:
            raise InputError(f"image {stem!r} has no mask in {self.root / MASKS_DIR}; it is unlabelled")
        return read_mask_file(path)


def require_dataset_dir(root: Path) -> None:
    """Refuse a path that is not a dataset folder, saying what it is instead.

    Raises:
        InputFileError: ``root`` does not exist, is a file, or has no ``images/`` folder (and is
            not a Roboflow export root, see :mod:`samadapt.data.yolo`).
    """
    root = Path(root)
    if not root.exists():
        raise InputFileError(f"dataset folder {root} does not exist; check the path: {_LAYOUT}")
    if not root.is_dir():
        raise InputFileError(f"{root} is a file, not a dataset folder; give a folder instead: {_LAYOUT}")
    if not (root / IMAGES_DIR).is_dir() and not roboflow_splits(root):
        raise InputFileError(f"{root} has no {IMAGES_DIR}/ folder; {_LAYOUT}")


@dataclass
class DatasetFiles:
    """The files of a dataset folder, by stem, whatever its layout.

    Attributes:
        images: stem -> image files (several when stems clash).
        masks: stem -> mask files: ``masks/`` images, or YOLO ``labels/*.txt`` files.
        images_dir: the folder the images are in, for messages (the root for a Roboflow export).
        masks_dir: likewise for the masks.
        splits: the splits the layout gives (a Roboflow export's split folders), else {}.
        classes: the classes the layout gives (YOLO ``data.yaml`` names, else the classes the label
            files use), else None.
    """

    images: dict[str, list[Path]]
    masks: dict[str, list[Path]]
    images_dir: Path
    masks_dir: Path
    splits: dict[str, list[str]] = field(default_factory=dict)
    classes: dict[int, str] | None = None


def dataset_files(root: Path) -> DatasetFiles:
    """Scan a dataset folder: ``images/`` + ``masks/``, a YOLO folder or a Roboflow export root.

    Raises:
        InputError: a Roboflow root has both ``valid/`` and ``val/``, or its ``data.yaml`` is malformed.
    """
    root = Path(root)
    split_dirs = roboflow_splits(root)
    if split_dirs:
        images: dict[str, list[Path]] = {}
        masks: dict[str, list[Path]] = {}
        splits: dict[str, list[str]] = {}
        for split, folder in split_dirs.items():
            found = scan_files(folder / IMAGES_DIR, IMAGE_SUFFIXES)
            splits[split] = sorted(found)
            for stem, paths in found.items():
                images.setdefault(stem, []).extend(paths)
            for stem, paths in scan_files(folder / LABELS_DIR, (LABEL_SUFFIX,)).items():
                masks.setdefault(stem, []).extend(paths)
        return DatasetFiles(images, masks, root, root, splits, _yolo_classes(root, masks))
    images = scan_files(root / IMAGES_DIR, IMAGE_SUFFIXES)
    if is_yolo_folder(root):
        masks = scan_files(root / LABELS_DIR, (LABEL_SUFFIX,))
        return DatasetFiles(images, masks, root / IMAGES_DIR, root / LABELS_DIR, classes=_yolo_classes(root, masks))
    return DatasetFiles(images, scan_files(root / MASKS_DIR, MASK_SUFFIXES), root / IMAGES_DIR, root / MASKS_DIR)


def _yolo_classes(root: Path, labels: Mapping[str, list[Path]]) -> dict[int, str] | None:
    """A YOLO dataset's classes: ``data.yaml`` names, else those its label files use; None if neither."""
    named = yolo_names(root) or classes_in_labels([p for paths in labels.values() for p in paths])
    return check_classes(named, str(root / "data.yaml")) if named else None


def read_mask_file(path: Path) -> np.ndarray:
    """Read a single-band mask file (PNG, GeoTIFF) as (H, W) uint8 class ids.

    A YOLO label file (``.txt``) is rasterised on the grid of its image (see :mod:`samadapt.data.yolo`).

    Raises:
        InputFileError: the file does not open, has several bands or a non-integer dtype.
        InputError: a value lies outside 0..255, or a YOLO line is malformed.
    """
    if Path(path).suffix.lower() == LABEL_SUFFIX:
        return read_yolo_mask(Path(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if src.count != 1:
                    raise InputFileError(
                        f"mask {path} has {src.count} bands; a mask must be one band of class ids (0-255)"
                    )
                data = src.read(1)
    except RasterioError as exc:
        raise InputFileError(f"mask {path} is not a readable image ({exc})") from None
    if data.dtype.kind not in "biu":
        raise InputFileError(f"mask {path} has dtype {data.dtype}; a mask must hold integer class ids (0-255)")
    if data.size and (int(data.min()) < 0 or int(data.max()) > IGNORE_INDEX):
        raise InputError(
            f"mask {path} holds values {int(data.min())}..{int(data.max())}; "
            f"class ids must be 0-254, with {IGNORE_INDEX} = ignore"
        )
    return data.astype(np.uint8, copy=False)


def scan_files(folder: Path, suffixes: Sequence[str]) -> dict[str, list[Path]]:
    """Files of ``folder`` with one of ``suffixes`` (any case), grouped by stem; {} if no folder.

    Hidden files (name starting with ``.``) are skipped.
    """
    found: dict[str, list[Path]] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        found.setdefault(path.stem, []).append(path)
    return found


def _unique(found: dict[str, list[Path]], folder: Path) -> dict[str, Path]:
    for stem, paths in found.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            raise InputError(f"{folder} holds several files with stem {stem!r} ({names}); keep only one")
    return {stem: paths[0] for stem, paths in found.items()}


def preview(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(s) for s in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{path} is not a readable JSON file ({exc}); fix or delete it") from None


def load_classes(root: Path) -> dict[int, str] | None:
    """Classes from ``root/classes.json``, validated, with 0 named "background" if it is absent.

    Returns:
        Class id -> name, or None when the file does not exist.

    Raises:
        InputFileError: the file is not JSON.
        InputError: it is not an object of class ids (0-254) to non-empty names.
    """
    path = root / CLASSES_FILE
    if not path.exists():
        return None
    doc = _load_json(path)
    if not isinstance(doc, dict):
        raise InputError(f'{path} must be a JSON object such as {{"0": "background", "1": "building"}}')
    return check_classes({_class_id(key, path): name for key, name in doc.items()}, str(path))


def _class_id(key: Any, where: Path) -> int:
    try:
        return int(key)
    except (TypeError, ValueError):
        raise InputError(f"{where}: key {key!r} is not a class id; keys must be whole numbers from 0 to 254") from None


def check_classes(classes: Mapping[Any, Any], where: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for key, name in classes.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 <= int(key) < IGNORE_INDEX:
            raise InputError(f"{where}: class id {key!r} is not allowed; ids are whole numbers 0-254 (255 = ignore)")
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{where}: class {key} has name {name!r}; give each class a non-empty name")
        out[int(key)] = name
    out.setdefault(0, "background")
    return dict(sorted(out.items()))


def load_splits(root: Path) -> dict[str, list[str]]:
    """Splits from ``root/splits.json`` (structure only; stems are not checked here).

    Returns:
        Split name -> stems as listed; {} when the file does not exist.

    Raises:
        InputFileError: the file is not JSON.
        InputError: it is not an object of split names to lists of stems.
    """
    path = root / SPLITS_FILE
    if not path.exists():
        return {}
    doc = _load_json(path)
    return check_split_structure(doc, str(path))


def check_split_structure(doc: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(doc, Mapping):
        raise InputError(f'{where} must be a JSON object such as {{"train": ["a", "b"], "val": ["c"]}}')
    out: dict[str, list[str]] = {}
    for name, stems in doc.items():
        if not isinstance(name, str) or not name:
            raise InputError(f"{where}: split name {name!r} must be a non-empty string")
        if isinstance(stems, str) or not isinstance(stems, Sequence) or not all(isinstance(s, str) for s in stems):
            raise InputError(f"{where}: split {name!r} must be a list of stems (strings), got {stems!r:.60}")
        if len(set(stems)) != len(stems):
            dupes = sorted({s for s in stems if list(stems).count(s) > 1})
            raise InputError(f"{where}: split {name!r} lists {preview(dupes)} more than once; list each stem once")
        out[name] = list(stems)
    return out


def check_split_members(splits: Mapping[str, Sequence[str]], images: Iterable[str], root: Path,
                         source: Path | None) -> None:
    """Every stem of ``splits`` has an image and is in one split only.

    Args:
        splits: split name -> stems; images: the dataset's image stems; root: the dataset folder;
        source: the splits file the splits come from, named in the messages (None: from the caller).

    Raises:
        InputError: naming the split and the stems at fault.
    """
    have = set(images)
    in_file, of_file = (f" in {source}", f" of {source}") if source is not None else ("", "")
    owner: dict[str, str] = {}
    for name, stems in splits.items():
        missing = sorted(set(stems) - have)
        if missing:
            raise InputError(
                f"split {name!r}{in_file} names {len(missing)} stem(s) with no image in "
                f"{root / IMAGES_DIR}: {preview(missing)}; remove them or add the images"
            )
        for stem in stems:
            if stem in owner and owner[stem] != name:
                raise InputError(f"stem {stem!r} is in both split {owner[stem]!r} and split {name!r}{of_file}; "
                                 "a sample must be in exactly one split")
            owner[stem] = name
