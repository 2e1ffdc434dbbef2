"""Object-level scores: objects are connected components, matched one to one at IoU >= 0.5.

Per class c >= 1, the objects of a mask are the connected components (8-connectivity in 2-D,
:func:`scipy.ndimage.label` with a full 3x3 structure) of its pixels of class c; pixels whose
target is ignored belong to no object. A predicted and a target object of the same class
match when their IoU is at least :data:`MATCH_IOU`. Two components of one mask are disjoint,
so an object overlapping two others at IoU > 0.5 each would need more than its own area: at
that threshold every object has at most one partner (equality at exactly 0.5 is the one
edge case, handled by a greedy highest-IoU-first assignment). :mod:`samadapt.train.metrics`
turns the counts into precision, recall, F1 and count errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from samadapt.errors import InputError
from samadapt.train.confusion import checked_pixels

__all__ = ["MATCH_IOU", "ObjectCounts", "count_objects", "object_counts"]

MATCH_IOU = 0.5  # a predicted and a target object match when their IoU is at least this



@dataclass(frozen=True, eq=False)
class ObjectCounts:
    """Object counts per class of one image, or summed over images.

    Attributes:
        predicted: (C,) int64 predicted objects per class; entry 0 (background) is always 0.
        target: (C,) int64 target objects per class; entry 0 is always 0.
        matched: (C,) int64 one-to-one matches at IoU >= 0.5 per class.
        abs_count_error: (C,) int64 sum over images of ``|predicted - target|`` per class.
    """

    predicted: np.ndarray
    target: np.ndarray
    matched: np.ndarray
    abs_count_error: np.ndarray

    @classmethod
    def zeros(cls, num_classes: int) -> ObjectCounts:
        """No objects for C = ``num_classes`` classes (the start of a sum over images)."""
        return cls._from_rows(np.zeros((4, num_classes), dtype=np.int64))

    @classmethod
    def _from_rows(cls, rows: np.ndarray) -> ObjectCounts:
        return cls(*(_frozen(row) for row in rows.astype(np.int64)))

    def _rows(self) -> np.ndarray:
        return np.stack([self.predicted, self.target, self.matched, self.abs_count_error])

    def __add__(self, other: ObjectCounts) -> ObjectCounts:
        """Counts of two images (or sets of images) together, class by class."""
        if not isinstance(other, ObjectCounts):
            return NotImplemented
        if other.predicted.shape != self.predicted.shape:
            raise InputError(
                f"cannot add object counts of {other.predicted.shape[0]} classes to counts of "
                f"{self.predicted.shape[0]} classes; count every image with the same num_classes"
            )
        return ObjectCounts._from_rows(self._rows() + other._rows())


def count_objects(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None) -> ObjectCounts:
    """Per-class object counts of a prediction and a target already checked (as by
    :func:`samadapt.train.confusion.confusion_matrix`); see the module docstring."""
    pred, target = np.atleast_1d(pred), np.atleast_1d(target)
    structure = np.ones((3,) * target.ndim, dtype=bool)  # 8-connectivity in 2-D
    labelled = target != ignore_index if ignore_index is not None else np.ones(target.shape, dtype=bool)
    rows = np.zeros((4, num_classes), dtype=np.int64)
    for c in range(1, num_classes):
        target_labels, num_target = _components(target == c, structure)
        pred_labels, num_pred = _components((pred == c) & labelled, structure)
        matched = _match_objects(target_labels, num_target, pred_labels, num_pred) if num_target and num_pred else 0
        rows[:, c] = (num_pred, num_target, matched, abs(num_pred - num_target))
    return ObjectCounts._from_rows(rows)


def object_counts(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    *,
    ignore_index: int | None = 255,
) -> ObjectCounts:
    """Count predicted, target and matched objects per class (definitions in the module docstring).

    Args:
        pred: Integer array of predicted classes, usually (H, W), as for
            :func:`samadapt.train.confusion.confusion_matrix`.
        target: Integer array of the same shape, classes or ``ignore_index``.
        num_classes: C, the number of classes including background (at least 2).
        ignore_index: Target value whose pixels belong to no object, or None.

    Returns:
        The :class:`ObjectCounts` of this image, arrays of shape (C,).

    Raises:
        InputError: As :func:`samadapt.train.confusion.confusion_matrix`.
    """
    checked_pixels(pred, target, num_classes, ignore_index)
    return count_objects(np.asarray(pred), np.asarray(target), num_classes, ignore_index)


def _components(mask: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask: int32 labels 1..n (0 elsewhere) and n."""
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32), 0
    labels, count = ndimage.label(mask, structure)
    return labels, int(count)


def _match_objects(target_labels: np.ndarray, num_target: int, pred_labels: np.ndarray, num_pred: int) -> int:
    """The number of one-to-one (target, predicted) component pairs with IoU >= 0.5.

    Overlaps come from one pass over the pixels in both masks: each such pixel gets a
    (target label, predicted label) pair id, counted by bincount (or np.unique when the pair
    id space is larger than the image).
    """
    target_area = np.bincount(target_labels.ravel(), minlength=num_target + 1)
    pred_area = np.bincount(pred_labels.ravel(), minlength=num_pred + 1)
    both = (target_labels > 0) & (pred_labels > 0)
    ids = target_labels[both].astype(np.int64) * (num_pred + 1) + pred_labels[both]
    space = (num_target + 1) * (num_pred + 1)
    # 1024 is a count of pair ids, not the model input size: a bincount that small is always cheap.
    if space <= max(target_labels.size, 1024):
        per_id = np.bincount(ids, minlength=space)
        ids = np.flatnonzero(per_id)
        inter = per_id[ids]
    else:
        ids, inter = np.unique(ids, return_counts=True)
    t, p = np.divmod(ids, num_pred + 1)
    union = target_area[t] + pred_area[p] - inter
    keep = inter >= MATCH_IOU * union
    t, p, iou = t[keep], p[keep], inter[keep] / union[keep]
    if np.unique(t).size == t.size and np.unique(p).size == p.size:
        return int(t.size)  # always so for real components (module docstring)
    used_t: set[int] = set()  # safeguard: greedy one-to-one assignment
    used_p: set[int] = set()
    for k in np.lexsort((p, t, -iou)):  # highest IoU first, ties by label
        if int(t[k]) not in used_t and int(p[k]) not in used_p:
            used_t.add(int(t[k]))
            used_p.add(int(p[k]))
    return len(used_t)


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array)
    array.setflags(write=False)
    return array
