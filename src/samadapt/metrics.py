"""Segmentation metrics: one confusion matrix, every score derived from it.

Masks are integer arrays of the same shape, usually (H, W): ``0`` is background, ``1..K``
are classes and ``ignore_index`` (default 255) marks pixels that are not counted at all.
``num_classes`` counts background, so it is ``C = K + 1``. A pixel is excluded when its
*target* is ``ignore_index``; a prediction may hold ``ignore_index`` only at such pixels
(a prediction that abstains where the target is labelled is an error, not a free pass).

Every score comes from the (C, C) confusion matrix ``cm`` (rows = target, columns =
prediction), built by :func:`confusion_matrix`, the only place pixels are counted.
For each class c:

- ``TP_c = cm[c, c]``, ``FP_c = sum(cm[:, c]) - TP_c``, ``FN_c = sum(cm[c, :]) - TP_c``,
  ``support_c = sum(cm[c, :])`` (target pixels of class c).
- ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``
- ``precision_c = TP_c / (TP_c + FP_c)``
- ``recall_c = TP_c / (TP_c + FN_c)``
- ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``. This equals ``2 P R / (P + R)`` wherever that
  is defined, and is also defined (as 0) when the class is only predicted or only in the
  target, where P or R is 0/0 but the class was plainly got wrong.

A ratio whose denominator is 0 is undefined and reported as NaN, never as 0 and never with a
warning: IoU and F1 are NaN only for a class absent from both prediction and target;
precision is NaN for a class never predicted; recall is NaN for a class absent from the target.

Dataset-level scores:

- ``accuracy = trace(cm) / sum(cm)``: pixel accuracy over non-ignored pixels.
- *Micro*: pool TP, FP and FN over all classes (background included), then divide. In
  single-label multi-class segmentation every miss is an FP for one class and an FN for
  another, so ``sum FP = sum FN = N - sum TP`` and micro precision = micro recall =
  micro F1 = accuracy. They are kept as separate fields because seed 000 reports them so.
- *Macro*: the unweighted mean over classes, background included (as seed 000's Table 1
  compares), **skipping classes whose value is undefined** (NaN) rather than counting them
  as 0. A class the model never predicts therefore does not pull macro precision down
  (its recall of 0 and F1 of 0 do count), and a class absent from the target does not pull
  macro recall down (its precision and F1 of 0 do count).
- ``miou``: the mean of IoU over the classes present in prediction or target (the same rule).

A dataset-level value with no defined term (e.g. every pixel ignored) is NaN.

Relation to torchmetrics (``multiclass_*`` with the same ``ignore_index``): the confusion
matrix, micro scores, macro IoU and macro F1 agree in every case, since torchmetrics also
leaves classes absent from both prediction and target out of its macro mean. Per-class
values differ where ours are NaN (torchmetrics reports 0), and so macro precision and macro
recall differ when a class occurs in only one of prediction and target: torchmetrics counts
that class's 0/0 precision (or recall) as 0 in the mean, we skip it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from samadapt.errors import InputError

__all__ = [
    "MetricAccumulator",
    "Metrics",
    "binary_iou",
    "confusion_matrix",
    "evaluate",
    "metrics_from_confusion",
]


@dataclass(frozen=True, eq=False)
class Metrics:
    """Scores of one image or one dataset, all derived from one confusion matrix.

    Per-class arrays have shape (C,) with C = ``num_classes`` (background at index 0) and
    hold NaN where the value is undefined (0/0); see the module docstring for definitions.

    Attributes:
        iou: (C,) IoU per class; NaN for a class absent from both prediction and target.
        miou: Mean IoU over the classes that are not NaN, background included.
        precision_micro: Pooled TP / (TP + FP); equals ``accuracy``.
        recall_micro: Pooled TP / (TP + FN); equals ``accuracy``.
        f1_micro: Pooled 2 TP / (2 TP + FP + FN); equals ``accuracy``.
        precision_macro: Mean of ``precision`` over classes where it is defined.
        recall_macro: Mean of ``recall`` over classes where it is defined.
        f1_macro: Mean of ``f1`` over classes where it is defined.
        accuracy: Correct pixels / non-ignored pixels.
        precision: (C,) precision per class; NaN for a class never predicted.
        recall: (C,) recall per class; NaN for a class absent from the target.
        f1: (C,) F1 per class; NaN for a class absent from both prediction and target.
        support: (C,) int64 count of target pixels per class.
        confusion: (C, C) int64 confusion matrix, rows = target, columns = prediction.
    """

    iou: np.ndarray
    miou: float
    precision_micro: float
    recall_micro: float
    f1_micro: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    accuracy: float
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion: np.ndarray

    @property
    def num_classes(self) -> int:
        """The number of classes C, background included."""
        return int(self.confusion.shape[0])

    @property
    def num_pixels(self) -> int:
        """The number of pixels counted (ignored pixels excluded)."""
        return int(self.confusion.sum())

    def as_dict(self) -> dict[str, float | int | None]:
        """Flat, JSON-ready scores: NaN becomes None, per-class values get a ``_c`` suffix.

        Returns:
            ``{"miou", "accuracy", "precision_micro", "recall_micro", "f1_micro",
            "precision_macro", "recall_macro", "f1_macro", "num_pixels"}`` followed by
            ``iou_c, precision_c, recall_c, f1_c, support_c`` for c = 0..C-1.
            ``json.dumps(..., allow_nan=False)`` accepts it.
        """
        out: dict[str, float | int | None] = {
            name: _json_float(getattr(self, name))
            for name in (
                "miou",
                "accuracy",
                "precision_micro",
                "recall_micro",
                "f1_micro",
                "precision_macro",
                "recall_macro",
                "f1_macro",
            )
        }
        out["num_pixels"] = self.num_pixels
        for name in ("iou", "precision", "recall", "f1"):
            for c, value in enumerate(getattr(self, name)):
                out[f"{name}_{c}"] = _json_float(value)
        for c, count in enumerate(self.support):
            out[f"support_{c}"] = int(count)
        return out


def confusion_matrix(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    *,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """Count (target, prediction) class pairs over the pixels whose target is not ignored.

    Args:
        pred: Integer array of predicted classes in ``[0, num_classes)``, usually (H, W);
            it may hold ``ignore_index`` only where ``target`` does.
        target: Integer array of the same shape, classes in ``[0, num_classes)`` or
            ``ignore_index``.
        num_classes: C, the number of classes including background (at least 2).
        ignore_index: Target value excluded from every count, or None to count every
            pixel. Must lie outside ``[0, num_classes)``.

    Returns:
        (C, C) int64 array; entry ``[t, p]`` is the number of pixels of target class t
        predicted as class p.

    Raises:
        InputError: If shapes differ, an array is not integer, a value is out of range,
            ``num_classes < 2`` or ``ignore_index`` is a class id.
    """
    _check_num_classes(num_classes)
    _check_ignore_index(ignore_index, num_classes)
    pred = _as_label_array(pred, "prediction")
    target = _as_label_array(target, "target")
    if pred.shape != target.shape:
        raise InputError(
            f"prediction shape {pred.shape} differs from target shape {target.shape}; "
            "give one predicted class per target pixel"
        )
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    else:
        pred, target = pred.reshape(-1), target.reshape(-1)
    _check_range(target, num_classes, "target", ignore_index)
    if ignore_index is not None and pred.size and (pred == ignore_index).any():
        count = int((pred == ignore_index).sum())
        raise InputError(
            f"prediction holds the ignore value {ignore_index} at {count} pixels whose target "
            "is labelled; predict a class there or set the target to the ignore value too"
        )
    _check_range(pred, num_classes, "prediction", None)
    # One bincount over flat (target, pred) pair ids is the single counting code path.
    pairs = target.astype(np.int64) * num_classes + pred.astype(np.int64)
    counts = np.bincount(pairs, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def metrics_from_confusion(cm: np.ndarray) -> Metrics:
    """Derive every score from a confusion matrix (definitions in the module docstring).

    Args:
        cm: (C, C) non-negative integer array, rows = target, columns = prediction, C >= 2.

    Returns:
        The :class:`Metrics`; undefined values are NaN, never an error or a warning.

    Raises:
        InputError: If ``cm`` is not a square integer matrix of non-negative counts with C >= 2.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise InputError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    _check_num_classes(cm.shape[0])
    if not (np.issubdtype(cm.dtype, np.integer) or cm.dtype == np.bool_):
        raise InputError(f"confusion matrix must hold integer counts, got dtype {cm.dtype}")
    if cm.size and cm.min() < 0:
        raise InputError(f"confusion matrix must hold non-negative counts, found {cm.min()}")
    cm = cm.astype(np.int64)

    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    iou = _ratio(tp, tp + fp + fn)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)

    tp_all, fp_all, fn_all = int(tp.sum()), int(fp.sum()), int(fn.sum())
    return Metrics(
        iou=_frozen(iou),
        miou=_mean_defined(iou),
        precision_micro=_scalar_ratio(tp_all, tp_all + fp_all),
        recall_micro=_scalar_ratio(tp_all, tp_all + fn_all),
        f1_micro=_scalar_ratio(2 * tp_all, 2 * tp_all + fp_all + fn_all),
        precision_macro=_mean_defined(precision),
        recall_macro=_mean_defined(recall),
        f1_macro=_mean_defined(f1),
        accuracy=_scalar_ratio(tp_all, int(cm.sum())),
        precision=_frozen(precision),
        recall=_frozen(recall),
        f1=_frozen(f1),
        support=_frozen(cm.sum(axis=1)),
        confusion=_frozen(cm),
    )


class MetricAccumulator:
    """Streaming evaluation: :meth:`add` one image at a time, then :meth:`compute`.

    The dataset-level result pools the confusion matrices of all images (every pixel counts
    once), which is not the mean of the per-image scores.

    Attributes:
        num_classes: C, classes including background.
        ignore_index: Target value excluded from every count, or None.
        per_image: ``(name, Metrics)`` for each image added, in order; stays empty when the
            accumulator was built with ``per_image=False``.
    """

    def __init__(self, num_classes: int, *, ignore_index: int | None = 255, per_image: bool = True) -> None:
        """Start an empty accumulator.

        Args:
            num_classes: C, the number of classes including background (at least 2).
            ignore_index: Target value excluded from every count, or None; outside ``[0, C)``.
            per_image: Whether to keep each image's :class:`Metrics` in :attr:`per_image`.

        Raises:
            InputError: If ``num_classes < 2`` or ``ignore_index`` is a class id.
        """
        _check_num_classes(num_classes)
        _check_ignore_index(ignore_index, num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.keep_per_image = per_image
        self.per_image: list[tuple[str, Metrics]] = []
        self.num_images = 0
        self._total = np.zeros((num_classes, num_classes), dtype=np.int64)

    def add(self, pred: np.ndarray, target: np.ndarray, name: str | None = None) -> Metrics:
        """Count one image and return its own scores.

        Args:
            pred: Predicted classes, same shape as ``target`` (usually (H, W)).
            target: Target classes or ``ignore_index``.
            name: Label kept with the per-image result; defaults to ``"image_<n>"`` with n
                the 0-based position of this image.

        Returns:
            This image's :class:`Metrics`.

        Raises:
            InputError: As :func:`confusion_matrix`; the accumulator is left unchanged.
        """
        cm = confusion_matrix(pred, target, self.num_classes, ignore_index=self.ignore_index)
        result = metrics_from_confusion(cm)
        self._total += cm
        if self.keep_per_image:
            self.per_image.append((name if name is not None else f"image_{self.num_images}", result))
        self.num_images += 1
        return result

    @property
    def confusion(self) -> np.ndarray:
        """(C, C) int64 copy of the pooled confusion matrix, rows = target, columns = prediction."""
        return self._total.copy()

    def compute(self) -> Metrics:
        """Dataset-level scores from the confusion matrix pooled over every pixel added.

        Returns:
            The pooled :class:`Metrics` (all NaN when nothing was counted).
        """
        return metrics_from_confusion(self._total)

    def reset(self) -> None:
        """Forget every image added so far."""
        self._total[:] = 0
        self.per_image.clear()
        self.num_images = 0


def evaluate(
    preds: Iterable[np.ndarray],
    targets: Iterable[np.ndarray],
    num_classes: int,
    *,
    ignore_index: int | None = 255,
) -> Metrics:
    """Dataset-level scores of paired predictions and targets, pooled over all pixels.

    Args:
        preds: Predicted class arrays, one per image; each the shape of its target.
        targets: Target class arrays (values in ``[0, C)`` or ``ignore_index``).
        num_classes: C, the number of classes including background (at least 2).
        ignore_index: Target value excluded from every count, or None.

    Returns:
        The pooled :class:`Metrics`.

    Raises:
        InputError: If the two iterables differ in length, or as :func:`confusion_matrix`.
    """
    acc = MetricAccumulator(num_classes, ignore_index=ignore_index, per_image=False)
    missing = object()
    for index, (pred, target) in enumerate(itertools.zip_longest(preds, targets, fillvalue=missing)):
        if pred is missing or target is missing:
            side = "predictions" if pred is missing else "targets"
            raise InputError(f"ran out of {side} at image {index}; give one prediction per target")
        acc.add(pred, target)  # type: ignore[arg-type]
    return acc.compute()


def binary_iou(pred: np.ndarray, target: np.ndarray) -> float:
    """IoU of two boolean masks: |pred AND target| / |pred OR target|.

    Args:
        pred: Boolean (or 0/1 integer) mask of any shape.
        target: Boolean (or 0/1 integer) mask of the same shape.

    Returns:
        The foreground IoU; 1.0 when both masks are empty (nothing to find, nothing found).

    Raises:
        InputError: If shapes differ or a mask holds values other than 0/1.
    """
    pred = _as_binary(pred, "prediction")
    target = _as_binary(target, "target")
    cm = confusion_matrix(pred, target, 2, ignore_index=None)
    tp, union = int(cm[1, 1]), int(cm[1, 1] + cm[0, 1] + cm[1, 0])
    return 1.0 if union == 0 else tp / union


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise num / den as float64, NaN where den == 0, without a warning."""
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _scalar_ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def _mean_defined(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (no warning) when there are none."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array)
    array.setflags(write=False)
    return array


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise InputError(f"num_classes must be an integer >= 2 (background included), got {num_classes!r}")


def _check_ignore_index(ignore_index: int | None, num_classes: int) -> None:
    if ignore_index is None:
        return
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise InputError(f"ignore_index must be an integer or None, got {ignore_index!r}")
    if 0 <= ignore_index < num_classes:
        raise InputError(
            f"ignore_index {ignore_index} is a class id for num_classes={num_classes}; "
            f"use a value outside [0, {num_classes}), such as 255"
        )


def _as_label_array(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(
            f"{what} must be an integer class array, got dtype {array.dtype}; convert it with .astype(np.int64)"
        )
    return array


def _check_range(values: np.ndarray, num_classes: int, what: str, ignore_index: int | None) -> None:
    """Raise naming the offending values if any lie outside [0, num_classes)."""
    if values.size == 0:
        return
    if values.min() >= 0 and values.max() < num_classes:
        return
    bad = np.unique(values[(values < 0) | (values >= num_classes)])
    shown = ", ".join(str(v) for v in bad[:5].tolist()) + (", ..." if bad.size > 5 else "")
    allowed = f"[0, {num_classes - 1}]" + (f" or the ignore value {ignore_index}" if ignore_index is not None else "")
    raise InputError(f"{what} holds class value(s) {shown} outside {allowed} for num_classes={num_classes}")


def _as_binary(mask: np.ndarray, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        return mask
    if not np.issubdtype(mask.dtype, np.integer) or (mask.size and not np.isin(mask, (0, 1)).all()):
        raise InputError(f"{what} mask must be boolean or hold only 0 and 1, got dtype {mask.dtype}")
    return mask.astype(bool)
