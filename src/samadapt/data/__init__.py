"""The dataset format: images/ + masks/ (+ splits.json, classes.json), checking and building it.

See :mod:`samadapt.data.dataset` for the layout. ``from_hf_dataset`` needs the optional
``datasets`` package, imported only when it is called.
"""

from __future__ import annotations

from samadapt.data.build import build_from_vectors
from samadapt.data.check import DatasetReport, Problem, check_dataset, format_report
from samadapt.data.dataset import IGNORE_INDEX, SegDataset
from samadapt.data.hf import from_hf_dataset
from samadapt.data.splits import make_splits, write_splits
from samadapt.data.write import write_classes, write_sample

__all__ = [
    "IGNORE_INDEX",
    "DatasetReport",
    "Problem",
    "SegDataset",
    "build_from_vectors",
    "check_dataset",
    "format_report",
    "from_hf_dataset",
    "make_splits",
    "write_classes",
    "write_sample",
    "write_splits",
]
