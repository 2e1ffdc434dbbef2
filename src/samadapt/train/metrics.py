"""Segmentation metrics: pixel scores from one confusion matrix, object scores from components.

Masks are integer arrays of the same shape, usually (H, W): ``0`` is background, ``1..K``
are classes and ``ignore_index`` (default 255) marks pixels that are not counted at all.
``num_classes`` counts background, so it is ``C = K + 1``. A pixel is excluded when its
*target* is ``ignore_index``; a prediction may hold ``ignore_index`` only at such pixels
(a prediction that abstains where the target is labelled is an error, not a free pass).

Pixel scores come from the (C, C) confusion matrix ``cm`` (rows = target, columns =
prediction), built by :func:`samadapt.train.confusion.confusion_matrix`, the only place pixels are counted.
For each class c:

- ``TP_c = cm[c, c]``, ``FP_c = sum(cm[:, c]) - TP_c``, ``FN_c = sum(cm[c, :]) - TP_c``,
  ``support_c = sum(cm[c, :])`` (target pixels of class c).
- ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``, ``precision_c = TP_c / (TP_c + FP_c)``,
  ``recall_c = TP_c / (TP_c + FN_c)``, ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)`` (which is
  ``2 P R / (P + R)`` wherever P + R > 0).

Zero denominators follow one rule everywhere, the field's (torchmetrics' default, and
scikit-learn's with ``zero_division=0`` and its default labels, those in target or prediction):

- A class that occurs in the prediction or in the target (``TP + FP + FN > 0``) scores **0**
  where a denominator is 0: the precision of a class never predicted, the recall of a class
  absent from the target. The class was got wrong, so it counts as 0 in every mean.
- A class absent from both prediction and target has nothing to score: its IoU, precision,
  recall and F1 are all NaN, and it is **left out** of every macro mean.

The per-class arrays hold exactly these values (0 or NaN as above, never a warning), so each
macro score is the plain mean of the non-NaN per-class values and can be recomputed from
:meth:`Metrics.as_dict` by skipping the ``None`` entries. Dataset-level scores:

- ``accuracy = trace(cm) / sum(cm)``: pixel accuracy over non-ignored pixels.
- *Micro*: pool TP, FP and FN over all classes (background included), then divide. In
  single-label segmentation every miss is an FP of one class and an FN of another, so micro
  precision = micro recall = micro F1 = accuracy; they are kept because the Mars pits paper reports them.
- *Macro* (``precision_macro``, ``recall_macro``, ``f1_macro``, ``miou``): the unweighted mean
  over the classes present in prediction or target, background included (as the Mars pits paper's
  Table 1 compares). A model that predicts background everywhere on an image with 5 %
  foreground gets macro precision (0.95 + 0) / 2 = 0.475, not 0.95.
- *Foreground* (``*_fg``): classes 1..K pooled into one class against background, i.e. the
  binary problem ``pred > 0`` vs ``target > 0``: ``TP = sum(cm[1:, 1:])`` (a foreground pixel
  given the wrong foreground class still counts as found), ``FP = sum(cm[0, 1:])``,
  ``FN = sum(cm[1:, 0])``, with the same zero rule (NaN when neither mask has foreground).
  Unlike the micro scores these say how well the foreground is found at all.

A dataset-level value with no defined term (e.g. every pixel ignored) is NaN.

Object scores (the unit of an instance baseline such as Mask R-CNN) come from
:func:`samadapt.train.object_metrics.object_counts`. For each class c >= 1 the objects are the connected components of
``pred == c`` and of ``target == c`` under 8-connectivity (pixels sharing an edge or a corner;
the full 3x3x... neighbourhood for other dimensions), found by :func:`scipy.ndimage.label`
after taking the ignored pixels (target == ``ignore_index``) out of both masks: ignored pixels
belong to no object. A predicted object matches a target object of the same class when their
IoU >= 0.5. No object can have two such partners: IoU >= 0.5 means the overlap is at least
half the union, so each partner would cover at least half of the object; two components of
one class are disjoint, so the object would be exactly the union of the two, which is not
connected. The matching is therefore one-to-one by itself (the
code still assigns greedily, highest IoU first, should two pairs ever share an object).
Summed over classes and images:

- object precision = matched / predicted objects, object recall = matched / target objects,
  object F1 = 2 matched / (predicted + target), with the zero rule above (0 when objects exist
  on one side only, NaN when there are none at all);
- ``object_count_error`` = predicted - target objects (signed total) and
  ``object_count_abs_error`` = the sum over images and classes of ``|predicted - target|``,
  so over- and under-counting in different images or classes do not cancel.

Relation to torchmetrics (``multiclass_*`` with the same ``ignore_index``, default
``zero_division=0``): whenever a pixel is counted, the confusion matrix, the per-class values
(``average=None``), the micro and the macro scores agree, except that a class absent from both
prediction and target is NaN per class here and 0 there; torchmetrics too leaves that class
out of its macro mean. The foreground scores equal ``binary_*`` on ``pred > 0`` vs
``target > 0`` (with the same ``ignore_index``) except NaN here where torchmetrics reports 0
for no foreground anywhere. With no pixel counted every score here is NaN. The tests check
all of this on random cases.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from samadapt.errors import InputError
from samadapt.train.confusion import check_ignore_index, check_num_classes, confusion_matrix
from samadapt.train.object_metrics import ObjectCounts, _frozen, count_objects

__all__ = [
    "COUNT_FIELDS",
    "SCALAR_FIELDS",
    "MetricAccumulator",
    "Metrics",
    "evaluate",
    "metrics_from_confusion",
]


@dataclass(frozen=True, eq=False)
class Metrics:
    """Scores of one image or one dataset: pixel scores from one confusion matrix, object scores.

    Per-class arrays have shape (C,) with C = ``num_classes`` (background at index 0). A 0/0
    value is 0 for a class present in prediction or target and NaN for a class absent from
    both, which every macro mean leaves out; see the module docstring for definitions.

    Attributes:
        iou: (C,) IoU per class.
        miou: Mean of ``iou`` over the non-NaN classes, background included.
        precision_micro: Pooled TP / (TP + FP); equals ``accuracy``.
        recall_micro: Pooled TP / (TP + FN); equals ``accuracy``.
        f1_micro: Pooled 2 TP / (2 TP + FP + FN); equals ``accuracy``.
        precision_macro: Mean of ``precision`` over the non-NaN classes.
        recall_macro: Mean of ``recall`` over the non-NaN classes.
        f1_macro: Mean of ``f1`` over the non-NaN classes.
        precision_fg: Precision of all foreground classes pooled against background.
        recall_fg: Recall of the pooled foreground.
        f1_fg: F1 of the pooled foreground.
        iou_fg: IoU of the pooled foreground.
        accuracy: Correct pixels / non-ignored pixels.
        precision: (C,) precision per class; 0 for a class in the target but never predicted.
        recall: (C,) recall per class; 0 for a class predicted but absent from the target.
        f1: (C,) F1 per class.
        support: (C,) int64 count of target pixels per class.
        confusion: (C, C) int64 confusion matrix, rows = target, columns = prediction.
        objects: Per-class object counts, or None when objects were not counted (a
            :class:`Metrics` made by :func:`metrics_from_confusion` from a matrix alone).
    """

    iou: np.ndarray
    miou: float
    precision_micro: float
    recall_micro: float
    f1_micro: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    precision_fg: float
    recall_fg: float
    f1_fg: float
    iou_fg: float
    accuracy: float
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion: np.ndarray
    objects: ObjectCounts | None = None

    @property
    def num_classes(self) -> int:
        """The number of classes C, background included."""
        return int(self.confusion.shape[0])

    @property
    def num_pixels(self) -> int:
        """The number of pixels counted (ignored pixels excluded)."""
        return int(self.confusion.sum())

    @property
    def num_objects_pred(self) -> int | None:
        """Predicted objects over all classes, or None when objects were not counted."""
        return None if self.objects is None else int(self.objects.predicted.sum())

    @property
    def num_objects_target(self) -> int | None:
        """Target objects over all classes, or None when objects were not counted."""
        return None if self.objects is None else int(self.objects.target.sum())

    @property
    def num_objects_matched(self) -> int | None:
        """Matched (predicted, target) object pairs, or None when objects were not counted."""
        return None if self.objects is None else int(self.objects.matched.sum())

    @property
    def object_precision(self) -> float:
        """Matched / predicted objects (0 if none predicted but some in the target, else NaN)."""
        return self._object_score("precision")

    @property
    def object_recall(self) -> float:
        """Matched / target objects (0 if none in the target but some predicted, else NaN)."""
        return self._object_score("recall")

    @property
    def object_f1(self) -> float:
        """2 matched / (predicted + target objects); NaN with no object on either side."""
        return self._object_score("f1")

    @property
    def object_count_error(self) -> int | None:
        """Predicted minus target objects (signed), or None when objects were not counted."""
        return None if self.objects is None else int(self.objects.predicted.sum() - self.objects.target.sum())

    @property
    def object_count_abs_error(self) -> int | None:
        """Sum over images and classes of |predicted - target objects|, or None."""
        return None if self.objects is None else int(self.objects.abs_count_error.sum())

    def _object_score(self, name: str) -> float:
        if self.objects is None:
            return math.nan
        pred, target = int(self.objects.predicted.sum()), int(self.objects.target.sum())
        matched = int(self.objects.matched.sum())
        num, den = {"precision": (matched, pred), "recall": (matched, target), "f1": (2 * matched, pred + target)}[name]
        return _scalar_score(num, den, pred + target > 0)

    def as_dict(self) -> dict[str, float | int | None]:
        """Flat, JSON-ready scores: NaN becomes None, per-class values get a ``_c`` suffix.

        Returns:
            The scores named in :data:`SCALAR_FIELDS` (miou, accuracy, micro, macro,
            foreground and object scores), then the counts in :data:`COUNT_FIELDS`
            (``num_pixels``, object counts; None when objects were not counted), then
            ``iou_c, precision_c, recall_c, f1_c, support_c`` for c = 0..C-1.
            ``json.dumps(..., allow_nan=False)`` accepts it.
        """
        out: dict[str, float | int | None] = {name: _json_float(getattr(self, name)) for name in SCALAR_FIELDS}
        out.update({name: getattr(self, name) for name in COUNT_FIELDS})
        for name in ("iou", "precision", "recall", "f1"):
            for c, value in enumerate(getattr(self, name)):
                out[f"{name}_{c}"] = _json_float(value)
        for c, count in enumerate(self.support):
            out[f"support_{c}"] = int(count)
        return out


SCALAR_FIELDS = (
    *("miou", "accuracy", "precision_micro", "recall_micro", "f1_micro"),
    *("precision_macro", "recall_macro", "f1_macro", "precision_fg", "recall_fg", "f1_fg", "iou_fg"),
    *("object_precision", "object_recall", "object_f1"),
)
"""Float scores of :meth:`Metrics.as_dict`, in order (for tables)."""

COUNT_FIELDS = ("num_pixels", "num_objects_pred", "num_objects_target", "num_objects_matched",
                "object_count_error", "object_count_abs_error")
"""Integer counts of :meth:`Metrics.as_dict`, in order (None when objects were not counted)."""


def metrics_from_confusion(cm: np.ndarray, objects: ObjectCounts | None = None) -> Metrics:
    """Derive every score from a confusion matrix (definitions in the module docstring).

    Args:
        cm: (C, C) non-negative integer array, rows = target, columns = prediction, C >= 2.
        objects: Object counts of the same pixels, arrays of shape (C,); without them the
            object scores are NaN and the object counts None.

    Returns:
        The :class:`Metrics`; undefined values are NaN, never an error or a warning.

    Raises:
        InputError: If ``cm`` is not a square integer matrix of non-negative counts with
            C >= 2, or ``objects`` is for another number of classes.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise InputError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    check_num_classes(cm.shape[0])
    if not (np.issubdtype(cm.dtype, np.integer) or cm.dtype == np.bool_):
        raise InputError(f"confusion matrix must hold integer counts, got dtype {cm.dtype}")
    if cm.size and cm.min() < 0:
        raise InputError(f"confusion matrix must hold non-negative counts, found {cm.min()}")
    if objects is not None and objects.predicted.shape != (cm.shape[0],):
        raise InputError(
            f"object counts are for {objects.predicted.shape[0]} classes but the confusion matrix "
            f"for {cm.shape[0]}; count both with the same num_classes"
        )
    cm = cm.astype(np.int64)

    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    present = tp + fp + fn > 0  # in prediction or target: 0/0 scores 0, else NaN
    iou = _score(tp, tp + fp + fn, present)
    precision = _score(tp, tp + fp, present)
    recall = _score(tp, tp + fn, present)
    f1 = _score(2 * tp, 2 * tp + fp + fn, present)

    fg_tp, fg_fp, fg_fn = int(cm[1:, 1:].sum()), int(cm[0, 1:].sum()), int(cm[1:, 0].sum())
    fg_present = fg_tp + fg_fp + fg_fn > 0
    tp_all, fp_all, fn_all = int(tp.sum()), int(fp.sum()), int(fn.sum())
    return Metrics(
        iou=_frozen(iou),
        miou=_mean_defined(iou),
        precision_micro=_scalar_score(tp_all, tp_all + fp_all, False),
        recall_micro=_scalar_score(tp_all, tp_all + fn_all, False),
        f1_micro=_scalar_score(2 * tp_all, 2 * tp_all + fp_all + fn_all, False),
        precision_macro=_mean_defined(precision),
        recall_macro=_mean_defined(recall),
        f1_macro=_mean_defined(f1),
        precision_fg=_scalar_score(fg_tp, fg_tp + fg_fp, fg_present),
        recall_fg=_scalar_score(fg_tp, fg_tp + fg_fn, fg_present),
        f1_fg=_scalar_score(2 * fg_tp, 2 * fg_tp + fg_fp + fg_fn, fg_present),
        iou_fg=_scalar_score(fg_tp, fg_tp + fg_fp + fg_fn, fg_present),
        accuracy=_scalar_score(tp_all, int(cm.sum()), False),
        precision=_frozen(precision),
        recall=_frozen(recall),
        f1=_frozen(f1),
        support=_frozen(cm.sum(axis=1)),
        confusion=_frozen(cm),
        objects=objects,
    )


class MetricAccumulator:
    """Streaming evaluation: :meth:`add` one image at a time, then :meth:`compute`.

    The dataset-level result pools the confusion matrices and object counts of all images
    (every pixel and every object counts once), which is not the mean of per-image scores.

    Attributes:
        num_classes: C, classes including background.
        ignore_index: Target value excluded from every count, or None.
        per_image: ``(name, Metrics)`` for each image added, in order; stays empty when the
            accumulator was built with ``per_image=False``.
        num_images: The number of images added.
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
        check_num_classes(num_classes)
        check_ignore_index(ignore_index, num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.keep_per_image = per_image
        self.per_image: list[tuple[str, Metrics]] = []
        self.num_images = 0
        self._total = np.zeros((num_classes, num_classes), dtype=np.int64)
        self._objects = ObjectCounts.zeros(num_classes)

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
            InputError: As :func:`samadapt.train.confusion.confusion_matrix`; the accumulator is left unchanged.
        """
        cm = confusion_matrix(pred, target, self.num_classes, ignore_index=self.ignore_index)
        objects = count_objects(np.asarray(pred), np.asarray(target), self.num_classes, self.ignore_index)
        result = metrics_from_confusion(cm, objects)
        self._total += cm
        self._objects = self._objects + objects
        if self.keep_per_image:
            self.per_image.append((name if name is not None else f"image_{self.num_images}", result))
        self.num_images += 1
        return result

    @property
    def confusion(self) -> np.ndarray:
        """(C, C) int64 copy of the pooled confusion matrix, rows = target, columns = prediction."""
        return self._total.copy()

    @property
    def objects(self) -> ObjectCounts:
        """Object counts summed over every image added, arrays of shape (C,)."""
        return self._objects

    def compute(self) -> Metrics:
        """Dataset-level scores from the pixels and objects pooled over every image added.

        Returns:
            The pooled :class:`Metrics` (scores NaN, object counts 0 when nothing was added).
        """
        return metrics_from_confusion(self._total, self._objects)

    def reset(self) -> None:
        """Forget every image added so far."""
        self._total[:] = 0
        self._objects = ObjectCounts.zeros(self.num_classes)
        self.per_image.clear()
        self.num_images = 0


def evaluate(
    preds: Iterable[np.ndarray],
    targets: Iterable[np.ndarray],
    num_classes: int,
    *,
    ignore_index: int | None = 255,
) -> Metrics:
    """Dataset-level scores of paired predictions and targets, pooled over all pixels and objects.

    Args:
        preds: Predicted class arrays, one per image; each the shape of its target.
        targets: Target class arrays (values in ``[0, C)`` or ``ignore_index``).
        num_classes: C, the number of classes including background (at least 2).
        ignore_index: Target value excluded from every count, or None.

    Returns:
        The pooled :class:`Metrics`.

    Raises:
        InputError: If the two iterables differ in length, or as :func:`samadapt.train.confusion.confusion_matrix`.
    """
    acc = MetricAccumulator(num_classes, ignore_index=ignore_index, per_image=False)
    missing = object()
    for index, (pred, target) in enumerate(itertools.zip_longest(preds, targets, fillvalue=missing)):
        if pred is missing or target is missing:
            side = "predictions" if pred is missing else "targets"
            raise InputError(f"ran out of {side} at image {index}; give one prediction per target")
        acc.add(pred, target)  # type: ignore[arg-type]
    return acc.compute()


def _score(num: np.ndarray, den: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Elementwise num / den as float64 where den > 0; else 0 where ``present``, NaN elsewhere."""
    out = np.where(present, 0.0, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _scalar_score(num: int, den: int, present: bool) -> float:
    """num / den; when den == 0: 0.0 if ``present`` (the thing occurs somewhere), else NaN."""
    if den:
        return num / den
    return 0.0 if present else math.nan


def _mean_defined(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (no warning) when there are none."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value
