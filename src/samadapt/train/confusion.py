"""Pixel counting: the one confusion matrix, and the checks every (prediction, target) pair passes.

Masks are integer arrays of the same shape, usually (H, W): ``0`` is background, ``1..K`` are
classes and ``ignore_index`` (default 255) marks target pixels that are not counted at all.
``num_classes`` counts background (C = K + 1). A prediction may hold ``ignore_index`` only
where the target does. :mod:`samadapt.train.metrics` turns the matrix into scores.
"""

from __future__ import annotations

import numpy as np

from samadapt.errors import InputError

__all__ = ["binary_iou", "check_ignore_index", "check_num_classes", "checked_pixels", "confusion_matrix"]


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
    pred, target = checked_pixels(pred, target, num_classes, ignore_index)
    # One bincount over flat (target, pred) pair ids is the single counting code path.
    pairs = target.astype(np.int64) * num_classes + pred.astype(np.int64)
    counts = np.bincount(pairs, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


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


def check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise InputError(f"num_classes must be an integer >= 2 (background included), got {num_classes!r}")


def check_ignore_index(ignore_index: int | None, num_classes: int) -> None:
    if ignore_index is None:
        return
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise InputError(f"ignore_index must be an integer or None, got {ignore_index!r}")
    if 0 <= ignore_index < num_classes:
        raise InputError(
            f"ignore_index {ignore_index} is a class id for num_classes={num_classes}; "
            f"use a value outside [0, {num_classes}), such as 255"
        )


def checked_pixels(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Check a (prediction, target) pair; return the flat predicted and target classes kept."""
    check_num_classes(num_classes)
    check_ignore_index(ignore_index, num_classes)
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
    return pred, target


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
