"""Making a dataset's train / val / test splits and writing them to ``splits.json``.

Reading and checking ``splits.json`` belongs to opening a dataset (:mod:`samadapt.data.dataset`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from samadapt._io import write_json
from samadapt.data.dataset import (
    IMAGE_SUFFIXES,
    IMAGES_DIR,
    SPLITS_FILE,
    check_split_members,
    check_split_structure,
    preview,
    scan_files,
)
from samadapt.errors import InputError

__all__ = ["make_splits", "write_splits"]


def make_splits(
    stems: Sequence[str], *, val: float = 0.2, test: float = 0.2, seed: int = 0
) -> dict[str, list[str]]:
    """Split stems at random into train, val and test; every stem lands in exactly one.

    The stems are sorted before a seeded shuffle, so the result depends only on the set of
    stems, the fractions and the seed. Split sizes are ``round(val * n)`` and
    ``round(test * n)``, reduced if needed so that train keeps at least one stem.

    Args:
        stems: the sample stems (e.g. ``SegDataset.stems()``); no duplicates.
        val: fraction for validation, in [0, 1).
        test: fraction for test, in [0, 1); ``val + test`` must be below 1.
        seed: seed of the shuffle.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each list sorted.

    Raises:
        InputError: bad fractions or duplicate stems.
    """
    for name, frac in (("val", val), ("test", test)):
        if not 0.0 <= frac < 1.0:
            raise InputError(f"{name}={frac!r} is not allowed; give a fraction in [0, 1)")
    if val + test >= 1.0:
        raise InputError(f"val + test = {val + test:g} leaves nothing to train on; keep their sum below 1")
    ordered = sorted(stems)
    if len(set(ordered)) != len(ordered):
        dupes = sorted({s for s in ordered if ordered.count(s) > 1})
        raise InputError(f"stems {preview(dupes)} are given more than once; give each stem once")
    n = len(ordered)
    n_test = round(test * n)
    n_val = round(val * n)
    excess = n_test + n_val - (n - 1)
    if n and excess > 0:  # keep one training sample; take the excess from the larger split first
        for _ in range(excess):
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [ordered[i] for i in order]
    return {
        "train": sorted(shuffled[n_val + n_test :]),
        "val": sorted(shuffled[:n_val]),
        "test": sorted(shuffled[n_val : n_val + n_test]),
    }


def write_splits(root: str | Path, splits: Mapping[str, Sequence[str]], *, overwrite: bool = False) -> Path:
    """Write ``root/splits.json`` after checking every stem has an image and is in one split only.

    Args:
        root: the dataset folder (with its ``images/``).
        splits: split name -> stems, e.g. from :func:`make_splits`.
        overwrite: replace an existing ``splits.json``.

    Returns:
        The path written.

    Raises:
        InputError: malformed splits, stems without an image, or a stem in two splits.
        OutputExistsError: the file exists and ``overwrite`` is False.
    """
    root = Path(root)
    checked = check_split_structure(splits, "splits")
    check_split_members(checked, scan_files(root / IMAGES_DIR, IMAGE_SUFFIXES).keys(), root, None)
    return write_json(root / SPLITS_FILE, {k: sorted(v) for k, v in checked.items()}, overwrite=overwrite)
