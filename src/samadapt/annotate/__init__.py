"""Annotation by prompting SAM: pseudo-labels from expert or ground-truth prompts, mode comparison."""

from samadapt.annotate.compare import ModeComparison, compare_modes
from samadapt.annotate.core import AnnotateSummary, annotate_dataset, annotate_image, regions_from_mask
from samadapt.annotate.experts import ExpertLabels, ExpertObject, read_csv_labels, read_vector_labels, read_yolo_folder

__all__ = [
    "AnnotateSummary", "ExpertLabels", "ExpertObject", "ModeComparison", "annotate_dataset", "annotate_image",
    "compare_modes", "read_csv_labels", "read_vector_labels", "read_yolo_folder", "regions_from_mask",
]
