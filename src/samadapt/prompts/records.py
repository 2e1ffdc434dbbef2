"""Prompts with the attributes they came with: the id of each object's prompt and its class.

A prompt file's objects keep two things through mapping and segmentation:

* ``prompt_id``, the id of the feature or row an object came from: for GeoPackage, GeoJSON and
  Shapefile the feature's id (its FID, which is a GeoJSON feature's ``id`` when it has one,
  else the 0-based feature index), for CSV the 0-based data row (the row after the header is
  0); for ``--box`` / ``--point`` on the command line their order (0, 1, ...). An object
  grouped from several features or rows (``object`` column) takes the id of its first one.
* its class, from a class column (``--class-column NAME``): integer values are class ids as
  they are (1..254; 0 is background and 255 nodata in class rasters); any other value makes
  every value a name, and the names get ids 1..K in sorted order.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from samadapt.errors import InputError
from samadapt.prompts.types import ObjectPrompt

#: Largest class id a class column may give: 255 is the class rasters' nodata.
MAX_CLASS_ID = 254

PromptId = int | str


@dataclass(frozen=True)
class PromptRecords:
    """Object prompts with their prompt ids and, when a class column was read, their classes.

    Attributes:
        prompts: one prompt per object, in pixel coordinates of the raster.
        ids: the prompt id of each object (see the module docstring).
        classes: each object's class id (>= 1), or None without a class column.
        names: class id -> name, for every class id in ``classes`` (the value itself for
            integer columns); empty without a class column.
    """

    prompts: list[ObjectPrompt]
    ids: list[PromptId]
    classes: list[int] | None = None
    names: dict[int, str] | None = None

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.prompts) or (self.classes is not None and len(self.classes) != len(self.prompts)):
            raise InputError("every prompt needs one prompt id (and one class when classes are given)")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_classes(self) -> int:
        """Classes of a class raster for these objects, background included: the largest id + 1 (2 without classes)."""
        return max(self.classes, default=0) + 1 if self.classes else 2

    def class_names(self) -> dict[str, str]:
        """The ``classes.json`` content: class id (as text) -> name, background included."""
        names = self.names or {1: "object"}
        return {"0": "background", **{str(k): v for k, v in sorted(names.items())}}

    def __add__(self, other: PromptRecords) -> PromptRecords:
        """The objects of both, self's first; classes only when one of them has no objects."""
        if not self.prompts or not other.prompts:
            return other if not self.prompts else self
        if self.classes is not None or other.classes is not None:
            raise InputError("--class-column applies to --prompts alone; drop --box/--point or --class-column")
        return PromptRecords(self.prompts + other.prompts, self.ids + other.ids)


def _plain(value: object) -> object:
    """A table cell as Python: numpy scalars unwrapped, missing values (None, NaN, empty text) as None."""
    item = getattr(value, "item", None)
    value = item() if callable(item) else value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return value.strip() if isinstance(value, str) else value


def _as_int(value: object) -> int | None:
    """The integer a cell holds (3, 3.0, "3"), or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def class_ids(values: Sequence[object], column: str, source: object) -> tuple[list[int], dict[int, str]]:
    """Class ids and names from a class column's values, one per object (see the module docstring).

    Args:
        values: the column's value for each object.
        column: the column's name, for messages.
        source: the file, for messages.

    Returns:
        (class id of each object, class id -> name).

    Raises:
        InputError: a missing value, or integer ids outside 1..254.
    """
    plain = [_plain(v) for v in values]
    for i, v in enumerate(plain):
        if v is None:
            raise InputError(f"object {i} of {source} has no value in class column {column!r}; every object needs one")
    ints = [_as_int(v) for v in plain]
    if all(i is not None for i in ints):
        ids = [int(i) for i in ints if i is not None]
        bad = [i for i in ids if not 1 <= i <= MAX_CLASS_ID]
        if bad:
            raise InputError(f"class column {column!r} of {source} holds {bad[0]}; integer class ids must be 1 to "
                             f"{MAX_CLASS_ID} (0 is background, 255 nodata)")
        return ids, {i: str(i) for i in sorted(set(ids))}
    names = sorted({str(v) for v in plain})
    index = {name: k + 1 for k, name in enumerate(names)}
    if len(names) > MAX_CLASS_ID:
        raise InputError(f"class column {column!r} of {source} has {len(names)} names; at most {MAX_CLASS_ID} fit")
    return [index[str(v)] for v in plain], {k: name for name, k in index.items()}


def check_column(column: str, columns: Sequence[Hashable], source: object) -> str:
    """The name of ``column`` among ``columns`` (exact, else case-insensitive), or an error listing them."""
    names = [str(c) for c in columns]
    if column in names:
        return column
    folded = [c for c in names if c.lower() == column.lower()]
    if len(folded) == 1:
        return folded[0]
    raise InputError(f"prompt file {source} has no column {column!r}; its columns are {', '.join(names) or 'none'}")


def check_class_column(path: Path, column: str) -> None:
    """Refuse, before any model loads, a class column that the prompt file lacks (its columns listed).

    A file that cannot be read is left for the reader to report.
    """
    columns: list[str]
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as f:
                columns = [c.strip() for c in next(csv.reader(f), [])]
        else:
            import pyogrio

            columns = [str(c) for c in pyogrio.read_info(path)["fields"]]
    except Exception:  # noqa: BLE001 - unreadable files are reported, in one sentence, by the reader
        return
    check_column(column, columns, path)
