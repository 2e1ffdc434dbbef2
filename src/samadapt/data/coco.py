"""COCO instance annotations in and out of the dataset format.

:func:`import_coco` writes a dataset from a COCO ``annotations.json`` and its image folder:

- Segmentations may be polygons, uncompressed RLE (``counts`` a list) or compressed RLE
  (``counts`` a string), all decoded by ``pycocotools``; an annotation with no segmentation
  becomes its filled ``bbox``.
- Categories, sorted by COCO id, become classes 1..K (``classes.json``), whatever their ids
  (COCO ids are often sparse, start at 0, or exceed 254). The original categories are kept in
  ``coco_categories.json`` (class id -> category), which :func:`export_coco` reads back.
- ``iscrowd: 1`` regions become ignore (255); objects are painted over them.
- Overlapping objects: larger first, so a smaller object on top of a larger one stays
  visible (equal areas: annotation order). The format holds class masks, not instance ids, so
  touching objects of one class merge.
- An image listed with no annotation is labelled all background. Masks are PNGs; images are
  copied as they are.

:func:`export_coco` writes ``annotations.json`` from a dataset: each labelled image, and one
object per connected region (8-connectivity, as :func:`samadapt.prompts.sampling.regions`) of
each class, as compressed RLE from ``pycocotools`` (exact: polygons would round the outline);
``area`` and ``bbox`` are ``pycocotools.mask.area`` and ``toBbox`` of that RLE. Ignore (255)
pixels are not objects and are not written. Images without a mask are left out.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samadapt import __version__
from samadapt._io import check_target, check_writable, write_json
from samadapt.data.dataset import CLASSES_FILE, IGNORE_INDEX, IMAGE_SUFFIXES, IMAGES_DIR, MASKS_DIR, SegDataset
from samadapt.data.manifest import DATASET, check_output_folder, output_folder
from samadapt.data.yolo import image_size
from samadapt.errors import InputError, InputFileError, OutputExistsError

#: Class id -> the COCO category it was imported from, written by :func:`import_coco`.
CATEGORIES_FILE = "coco_categories.json"


@dataclass(frozen=True)
class CocoSummary:
    """What an import or export wrote: the path, and how many images, objects and classes."""

    path: Path
    images: int
    objects: int
    classes: int
    crowd: int = 0


def _load(path: Path) -> dict[str, Any]:
    """The COCO document, checked for its three lists."""
    if not Path(path).is_file():
        raise InputFileError(f"COCO annotations file {path} does not exist; check the path")
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputFileError(f"{path} is not a readable JSON file ({exc}); give a COCO annotations file") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "categories")):
        raise InputError(f"{path} is not COCO: it needs 'images' and 'categories' lists (and 'annotations')")
    if not isinstance(doc.get("annotations", []), list):
        raise InputError(f"{path}: 'annotations' must be a list")
    return doc


def _categories(doc: dict[str, Any], where: Path) -> tuple[dict[int, int], dict[int, dict[str, Any]]]:
    """(COCO category id -> class id, class id -> category), classes 1..K in order of COCO id."""
    by_id: dict[int, dict[str, Any]] = {}
    for cat in doc["categories"]:
        if not isinstance(cat, dict) or isinstance(cat.get("id"), bool) or not isinstance(cat.get("id"), int) \
                or not isinstance(cat.get("name"), str) or not cat["name"].strip():
            raise InputError(f"{where}: category {cat!r:.80} needs an integer 'id' and a non-empty 'name'")
        if cat["id"] in by_id:
            raise InputError(f"{where}: category id {cat['id']} is listed twice; give each category one id")
        by_id[cat["id"]] = cat
    if len(by_id) > IGNORE_INDEX - 1:
        raise InputError(f"{where} has {len(by_id)} categories; a dataset holds at most {IGNORE_INDEX - 1} classes")
    order = sorted(by_id)
    return {cid: k for k, cid in enumerate(order, start=1)}, {k: by_id[cid] for k, cid in enumerate(order, start=1)}


def _image_file(images_dir: Path, entry: dict[str, Any], where: Path) -> Path:
    name = entry.get("file_name")
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}: image id {entry.get('id')!r} has no 'file_name'")
    for candidate in (images_dir / name, images_dir / Path(name).name):
        if candidate.is_file():
            if candidate.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"image {candidate} is a {candidate.suffix} file; images must be one of "
                                 f"{', '.join(IMAGE_SUFFIXES)}")
            return candidate
    raise InputFileError(f"image file {name!r} of {where} (image id {entry.get('id')!r}) is not in {images_dir}; "
                         "give the folder holding the images")


def _decode(ann: dict[str, Any], height: int, width: int, where: Path) -> np.ndarray:
    """One annotation's (H, W) bool mask, decoded by pycocotools."""
    from pycocotools import mask as cocomask

    seg = ann.get("segmentation")
    what = f"{where}: annotation id {ann.get('id')!r}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools' numpy 2 copy= notice
        return _decode_quietly(cocomask, seg, ann, height, width, what)


def _decode_quietly(cocomask: Any, seg: Any, ann: dict[str, Any], height: int, width: int, what: str) -> np.ndarray:
    """:func:`_decode` proper: polygons, uncompressed or compressed RLE, else the bbox."""
    try:
        if isinstance(seg, list) and seg:  # polygons: one list of x, y, x, y, ... per part
            if not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg):
                raise InputError(f"{what} has a polygon with fewer than three points or an odd number of values")
            rle = cocomask.merge(cocomask.frPyObjects(seg, height, width))
        elif isinstance(seg, dict):
            if list(seg.get("size", [])) != [height, width]:
                raise InputError(f"{what} has an RLE of size {seg.get('size')!r} on a {height} x {width} image")
            rle = cocomask.frPyObjects(seg, height, width) if isinstance(seg.get("counts"), list) else seg
        elif isinstance(ann.get("bbox"), list) and len(ann["bbox"]) == 4:  # no segmentation: the box
            rle = cocomask.frPyObjects([[float(v) for v in ann["bbox"]]], height, width)[0]
        else:
            raise InputError(f"{what} has neither a segmentation (polygons or RLE) nor a bbox")
        return np.asarray(cocomask.decode(rle), dtype=bool)
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(f"{what} has a segmentation pycocotools cannot read ({exc})") from None


def coco_masks(doc: dict[str, Any], where: Path, images: Mapping[int, tuple[str, int, int]],
               classes: Mapping[int, int]) -> tuple[dict[str, np.ndarray], int, int]:
    """Paint each image's class mask from the annotations (see the module docstring for the rules).

    Args:
        doc: the COCO document; where: its path, for messages.
        images: COCO image id -> (stem, rows, cols).
        classes: COCO category id -> class id.

    Returns:
        (stem -> (H, W) uint8 mask, objects painted, crowd regions painted).

    Raises:
        InputError: an annotation names an unknown image or category, or its segmentation is malformed.
    """
    per_image: dict[int, list[tuple[int, dict[str, Any]]]] = {i: [] for i in images}
    for n, ann in enumerate(doc.get("annotations", [])):
        if not isinstance(ann, dict):
            raise InputError(f"{where}: annotation {n} is not an object")
        if ann.get("image_id") not in images:
            raise InputError(f"{where}: annotation id {ann.get('id')!r} has image_id {ann.get('image_id')!r}, "
                             "which is not in 'images'")
        if ann.get("category_id") not in classes:
            raise InputError(f"{where}: annotation id {ann.get('id')!r} has category_id {ann.get('category_id')!r}, "
                             f"which is not in 'categories' (ids {sorted(classes)})")
        per_image[ann["image_id"]].append((n, ann))
    masks: dict[str, np.ndarray] = {}
    objects = crowd = 0
    for image_id, anns in per_image.items():
        stem, height, width = images[image_id]
        mask = np.zeros((height, width), np.uint8)
        decoded = [(n, ann, _decode(ann, height, width, where)) for n, ann in anns]
        for _, _, region in (d for d in decoded if d[1].get("iscrowd")):
            mask[region] = IGNORE_INDEX
            crowd += 1
        for _, ann, region in sorted((d for d in decoded if not d[1].get("iscrowd")),
                                     key=lambda d: (-int(d[2].sum()), d[0])):
            mask[region] = classes[ann["category_id"]]
            objects += 1
        masks[stem] = mask
    return masks, objects, crowd


def import_coco(annotations: str | Path, images_dir: str | Path, out_dir: str | Path, *,
                overwrite: bool = False) -> CocoSummary:
    """Write a dataset (images copied, PNG class masks, ``classes.json``, ``coco_categories.json``)
    from COCO annotations; see the module docstring for how categories, crowds and overlaps are read.

    Args:
        annotations: the COCO ``annotations.json``.
        images_dir: the folder its ``file_name`` entries are relative to.
        out_dir: the dataset folder to write.
        overwrite: replace a dataset samadapt wrote there before (and nothing else).

    Returns:
        The summary of what was written.

    Raises:
        InputFileError: the JSON or an image file is missing or unreadable.
        InputError: the document is not COCO, names unknown images or categories, or images clash.
        OutputExistsError: ``out_dir`` holds something samadapt may not replace.
    """
    annotations, images_dir, out_dir = Path(annotations), Path(images_dir), Path(out_dir)
    doc = _load(annotations)
    if not images_dir.is_dir():
        raise InputFileError(f"images folder {images_dir} does not exist or is not a folder")
    classes, categories = _categories(doc, annotations)
    check_writable([out_dir])
    check_output_folder(out_dir, kind=DATASET, overwrite=overwrite)
    images: dict[int, tuple[str, int, int]] = {}
    files: dict[str, Path] = {}
    for entry in doc["images"]:
        if not isinstance(entry, dict) or isinstance(entry.get("id"), bool) or not isinstance(entry.get("id"), int):
            raise InputError(f"{annotations}: image {entry!r:.80} needs an integer 'id'")
        path = _image_file(images_dir, entry, annotations)
        stem = path.stem
        if stem in files or entry["id"] in images:
            raise InputError(f"{annotations}: two images are {stem!r} (or share id {entry['id']}); "
                             "a dataset needs one image per file stem")
        height, width = image_size(path)
        if (entry.get("height"), entry.get("width")) != (height, width):
            raise InputError(f"image {path} is {height} x {width} (rows x cols) but {annotations} says "
                             f"{entry.get('height')} x {entry.get('width')}; fix the entry or the image")
        images[entry["id"]], files[stem] = (stem, height, width), path
    masks, objects, crowd = coco_masks(doc, annotations, images, classes)
    from samadapt.mapping.outputs import write_mask_png

    with output_folder(out_dir, kind=DATASET, overwrite=overwrite) as tmp:
        (tmp / IMAGES_DIR).mkdir()
        (tmp / MASKS_DIR).mkdir()
        for stem, path in files.items():
            shutil.copy2(path, tmp / IMAGES_DIR / path.name)
            write_mask_png(tmp / MASKS_DIR / f"{stem}.png", masks[stem], overwrite=True)
        write_json(tmp / CLASSES_FILE, {"0": "background", **{str(k): c["name"] for k, c in categories.items()}})
        write_json(tmp / CATEGORIES_FILE, {str(k): c for k, c in categories.items()})
    return CocoSummary(out_dir, len(files), objects, len(categories), crowd)


def _export_categories(dataset: SegDataset) -> dict[int, dict[str, Any]]:
    """Class id -> COCO category: those the dataset was imported from, else id = class id."""
    names = {k: v for k, v in dataset.classes.items() if k != 0}
    record = dataset.root / CATEGORIES_FILE
    if record.is_file():
        try:
            doc = json.loads(record.read_text(encoding="utf-8"))
            cats = {int(k): dict(v) for k, v in doc.items()}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise InputFileError(f"{record} is not a readable category record ({exc}); fix or delete it") from None
        if set(cats) == set(names) and all(isinstance(c.get("id"), int) for c in cats.values()):
            return {k: {**cats[k], "name": names[k]} for k in sorted(cats)}
    return {k: {"id": k, "name": name, "supercategory": ""} for k, name in sorted(names.items())}


def coco_document(dataset_dir: str | Path) -> dict[str, Any]:
    """The COCO document of a dataset (see the module docstring); images without a mask are left out.

    Raises:
        InputError: a mask holds a class id ``classes.json`` does not name.
    """
    from pycocotools import mask as cocomask

    from samadapt.prompts.sampling import regions

    dataset = SegDataset.open(dataset_dir)
    categories = _export_categories(dataset)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for stem in dataset.stems():
        if dataset.mask_path(stem) is None:
            continue
        mask = dataset.read_mask(stem)
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": dataset.image_path(stem).name,
                       "height": int(mask.shape[0]), "width": int(mask.shape[1])})
        for class_id in sorted(int(c) for c in np.unique(mask) if c not in (0, IGNORE_INDEX)):
            if class_id not in categories:
                raise InputError(f"mask of {stem!r} holds class {class_id}, which {dataset.root / CLASSES_FILE} "
                                 "does not name; run `samadapt data check` and fix it")
            for region in regions(mask, class_id=class_id, connectivity=8):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools' numpy 2 copy= notice
                    rle = cocomask.encode(np.asfortranarray(region.astype(np.uint8)))
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id,
                    "category_id": categories[class_id]["id"],
                    "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                    "area": int(cocomask.area(rle)), "bbox": [float(v) for v in cocomask.toBbox(rle)], "iscrowd": 0,
                })
    return {"info": {"description": f"exported by samadapt {__version__} from {dataset.root.name}"},
            "images": images, "annotations": annotations, "categories": list(categories.values())}


def export_coco(dataset_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> CocoSummary:
    """Write a dataset's masks as COCO ``annotations.json`` (see :func:`coco_document`).

    Args:
        dataset_dir: the dataset folder (any layout :class:`SegDataset` reads).
        out: the JSON file to write; its ``file_name`` entries are relative to the dataset's images.
        overwrite: replace an existing ``out``.

    Raises:
        OutputExistsError: ``out`` exists and ``overwrite`` is False, or is a folder.
        InputError: ``out`` cannot be written, or a mask holds an unnamed class.
    """
    out = Path(out)
    if out.is_dir():
        raise OutputExistsError(f"--out {out} is a folder; give the JSON file to write, e.g. {out / 'coco.json'}")
    check_writable([out])
    check_target(out, overwrite=overwrite)
    doc = coco_document(dataset_dir)
    write_json(out, doc, overwrite=overwrite)
    return CocoSummary(out, len(doc["images"]), len(doc["annotations"]), len(doc["categories"]))
