"""Tests of samadapt.metrics: hand-computed cases, edge cases, torchmetrics agreement."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samadapt.errors import InputError
from samadapt.metrics import (
    MetricAccumulator,
    Metrics,
    binary_iou,
    confusion_matrix,
    evaluate,
    metrics_from_confusion,
)

# A 4x4 case with 3 classes, computed by hand.
# (target, pred) pairs row by row:
#   row 0: (0,0) (0,1) (1,1) (1,1)
#   row 1: (0,0) (0,0) (1,1) (1,2)
#   row 2: (2,2) (2,2) (2,0) (0,0)
#   row 3: (2,2) (2,1) (0,0) (0,0)
# confusion (rows = target, cols = pred):
#   [[6, 1, 0],
#    [0, 3, 1],
#    [1, 1, 3]]
# TP = (6, 3, 3); column sums (7, 5, 4) -> FP = (1, 2, 1); row sums (7, 4, 5) -> FN = (1, 1, 2)
# IoU = (6/8, 3/6, 3/6);  precision = (6/7, 3/5, 3/4);  recall = (6/7, 3/4, 3/5)
# F1 = 2TP/(2TP+FP+FN) = (12/14, 6/9, 6/9);  accuracy = 12/16
TARGET = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 2, 0],
        [2, 2, 0, 0],
    ],
    dtype=np.uint8,
)
PRED = np.array(
    [
        [0, 1, 1, 1],
        [0, 0, 1, 2],
        [2, 2, 0, 0],
        [2, 1, 0, 0],
    ],
    dtype=np.int64,
)
HAND_CM = np.array([[6, 1, 0], [0, 3, 1], [1, 1, 3]])


def test_hand_computed_case() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cm = confusion_matrix(PRED, TARGET, 3)
        m = metrics_from_confusion(cm)
    np.testing.assert_array_equal(cm, HAND_CM)
    assert cm.dtype == np.int64
    np.testing.assert_allclose(m.iou, [6 / 8, 3 / 6, 3 / 6])
    np.testing.assert_allclose(m.precision, [6 / 7, 3 / 5, 3 / 4])
    np.testing.assert_allclose(m.recall, [6 / 7, 3 / 4, 3 / 5])
    np.testing.assert_allclose(m.f1, [12 / 14, 6 / 9, 6 / 9])
    np.testing.assert_array_equal(m.support, [7, 4, 5])
    assert m.miou == pytest.approx((6 / 8 + 0.5 + 0.5) / 3)
    assert m.accuracy == pytest.approx(12 / 16)
    assert m.precision_micro == m.recall_micro == m.f1_micro == pytest.approx(12 / 16)
    assert m.precision_macro == pytest.approx((6 / 7 + 3 / 5 + 3 / 4) / 3)
    assert m.recall_macro == pytest.approx((6 / 7 + 3 / 4 + 3 / 5) / 3)
    assert m.f1_macro == pytest.approx((12 / 14 + 6 / 9 + 6 / 9) / 3)
    assert m.num_classes == 3 and m.num_pixels == 16


def test_f1_equals_harmonic_mean_where_defined() -> None:
    m = evaluate([PRED], [TARGET], 3)
    np.testing.assert_allclose(m.f1, 2 * m.precision * m.recall / (m.precision + m.recall))


def test_class_absent_from_both_is_nan_and_skipped() -> None:
    # Same pixels with a 4th class that never occurs: it is NaN everywhere, nothing else moves.
    m3 = evaluate([PRED], [TARGET], 3)
    m4 = evaluate([PRED], [TARGET], 4)
    for name in ("iou", "precision", "recall", "f1"):
        values = getattr(m4, name)
        assert math.isnan(values[3]), name
        np.testing.assert_allclose(values[:3], getattr(m3, name))
    assert m4.support[3] == 0
    for name in ("miou", "accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_micro"):
        assert getattr(m4, name) == pytest.approx(getattr(m3, name)), name


def test_all_background_both() -> None:
    zeros = np.zeros((5, 6), dtype=np.uint8)
    m = evaluate([zeros], [zeros], 3)
    assert m.iou[0] == 1.0
    assert np.isnan(m.iou[1:]).all()
    assert m.miou == 1.0
    assert m.accuracy == 1.0
    assert m.precision_macro == m.recall_macro == m.f1_macro == 1.0


def test_class_predicted_but_absent_from_target() -> None:
    target = np.zeros((2, 3), dtype=np.uint8)
    pred = target.copy()
    pred[0, 0] = 2  # one false positive of class 2, which the target never holds
    m = evaluate([pred], [target], 3)
    assert m.iou[2] == 0.0
    assert m.precision[2] == 0.0
    assert math.isnan(m.recall[2])
    assert m.f1[2] == 0.0
    # background: TP 5, FN 1, FP 0
    assert m.iou[0] == pytest.approx(5 / 6)
    assert m.recall[0] == pytest.approx(5 / 6)
    assert m.precision[0] == 1.0
    # Macro recall skips class 2's undefined recall; macro precision counts its 0.
    assert m.recall_macro == pytest.approx(5 / 6)
    assert m.precision_macro == pytest.approx(0.5)
    assert m.miou == pytest.approx((5 / 6 + 0) / 2)


def test_class_in_target_but_never_predicted() -> None:
    target = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 0, 0, 0]])
    m = evaluate([pred], [target], 2)
    assert math.isnan(m.precision[1])
    assert m.recall[1] == 0.0 and m.f1[1] == 0.0 and m.iou[1] == 0.0
    assert m.precision_macro == pytest.approx(0.5)  # only background's 2/4 is defined
    assert m.recall_macro == pytest.approx(0.5)  # (1 + 0) / 2


def test_all_ignore_image_gives_nan_without_warning() -> None:
    target = np.full((3, 3), 255, dtype=np.uint8)
    pred = np.ones((3, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = evaluate([pred], [target], 3)
        empty = MetricAccumulator(3).compute()
    for result in (m, empty):
        assert result.num_pixels == 0
        assert np.isnan(result.iou).all() and np.isnan(result.f1).all()
        for name in ("miou", "accuracy", "precision_micro", "recall_micro", "f1_micro", "precision_macro"):
            assert math.isnan(getattr(result, name)), name
        np.testing.assert_array_equal(result.support, [0, 0, 0])


def test_ignore_pixels_are_not_counted() -> None:
    target = TARGET.copy()
    pred = PRED.copy()
    target[0, 1] = 255  # was the (0, 1) false positive
    target[2, 2] = 255  # was the (2, 0) miss
    pred[2, 2] = 255  # a prediction may hold the ignore value where the target does
    cm = confusion_matrix(pred, target, 3)
    expected = HAND_CM.copy()
    expected[0, 1] -= 1
    expected[2, 0] -= 1
    np.testing.assert_array_equal(cm, expected)
    m = metrics_from_confusion(cm)
    assert m.accuracy == pytest.approx(12 / 14)
    assert m.support.sum() == 14


def test_custom_and_disabled_ignore_index() -> None:
    target = np.array([[0, 1, -1]])
    pred = np.array([[0, 1, 0]])
    np.testing.assert_array_equal(confusion_matrix(pred, target, 2, ignore_index=-1), [[1, 0], [0, 1]])
    with pytest.raises(InputError, match="-1"):
        confusion_matrix(pred, target, 2, ignore_index=None)


@settings(max_examples=60, deadline=None)
@given(
    num_classes=st.integers(2, 6),
    shape=st.tuples(st.integers(0, 7), st.integers(1, 7)),
    ignore_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_micro_equals_accuracy(num_classes: int, shape: tuple[int, int], ignore_fraction: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes, shape)
    target[rng.random(shape) < ignore_fraction] = 255
    pred = rng.integers(0, num_classes, shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = evaluate([pred], [target], num_classes)
    kept = target != 255
    if kept.sum() == 0:
        assert math.isnan(m.accuracy) and math.isnan(m.f1_micro)
        return
    assert m.accuracy == pytest.approx((pred[kept] == target[kept]).mean())
    assert m.precision_micro == m.accuracy
    assert m.recall_micro == m.accuracy
    assert m.f1_micro == pytest.approx(m.accuracy)
    assert m.num_pixels == kept.sum()


def _random_pair_with_every_class(
    rng: np.random.Generator, num_classes: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    target = rng.integers(0, num_classes, shape)
    pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, num_classes, shape))
    # Every class occurs in both, so no per-class value is undefined.
    target.flat[:num_classes] = np.arange(num_classes)
    pred.flat[num_classes : 2 * num_classes] = np.arange(num_classes)
    target.flat[-5:] = 255
    return pred, target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_torchmetrics(seed: int) -> None:
    torch = pytest.importorskip("torch")
    tmf = pytest.importorskip("torchmetrics.functional.classification")
    num_classes = 4
    pred, target = _random_pair_with_every_class(np.random.default_rng(seed), num_classes, (16, 20))
    m = evaluate([pred], [target], num_classes)
    p, t = torch.from_numpy(pred), torch.from_numpy(target)
    kw = {"num_classes": num_classes, "ignore_index": 255}
    np.testing.assert_array_equal(m.confusion, tmf.multiclass_confusion_matrix(p, t, **kw).numpy())
    np.testing.assert_allclose(m.iou, tmf.multiclass_jaccard_index(p, t, average=None, **kw).numpy(), rtol=1e-6)
    assert m.miou == pytest.approx(tmf.multiclass_jaccard_index(p, t, average="macro", **kw).item())
    assert m.accuracy == pytest.approx(tmf.multiclass_accuracy(p, t, average="micro", **kw).item())
    pairs = (("precision", tmf.multiclass_precision), ("recall", tmf.multiclass_recall), ("f1", tmf.multiclass_f1_score))
    for ours, fn in pairs:
        np.testing.assert_allclose(getattr(m, ours), fn(p, t, average=None, **kw).numpy(), rtol=1e-6)
        assert getattr(m, f"{ours}_micro") == pytest.approx(fn(p, t, average="micro", **kw).item())
        assert getattr(m, f"{ours}_macro") == pytest.approx(fn(p, t, average="macro", **kw).item())


def test_documented_difference_from_torchmetrics_macro() -> None:
    torch = pytest.importorskip("torch")
    tmf = pytest.importorskip("torchmetrics.functional.classification")
    # Class 2 is in the target but never predicted; class 3 occurs nowhere.
    target = np.array([0, 0, 1, 2])
    pred = np.array([0, 1, 1, 1])
    m = evaluate([pred], [target], 4)
    p, t = torch.from_numpy(pred), torch.from_numpy(target)
    kw = {"num_classes": 4, "average": "macro"}
    # torchmetrics counts class 2's 0/0 precision as 0: (1 + 1/3 + 0) / 3; we skip it.
    assert tmf.multiclass_precision(p, t, **kw).item() == pytest.approx((1 + 1 / 3) / 3)
    assert m.precision_macro == pytest.approx((1 + 1 / 3) / 2)
    # Recall, F1 and IoU macro agree (class 3 is left out by both).
    assert m.recall_macro == pytest.approx(tmf.multiclass_recall(p, t, **kw).item())
    assert m.f1_macro == pytest.approx(tmf.multiclass_f1_score(p, t, **kw).item())
    assert m.miou == pytest.approx(tmf.multiclass_jaccard_index(p, t, **kw).item())


def test_accumulator_pools_like_evaluate_on_concatenation() -> None:
    rng = np.random.default_rng(7)
    shapes = [(5, 7), (9, 3), (1, 1), (6, 6)]
    preds = [rng.integers(0, 3, s) for s in shapes]
    targets = [np.where(rng.random(s) < 0.1, 255, rng.integers(0, 3, s)) for s in shapes]
    acc = MetricAccumulator(3)
    singles = [acc.add(p, t) for p, t in zip(preds, targets)]
    pooled = acc.compute()
    flat = evaluate([np.concatenate([p.ravel() for p in preds])], [np.concatenate([t.ravel() for t in targets])], 3)
    streamed = evaluate(iter(preds), iter(targets), 3)
    for other in (flat, streamed):
        np.testing.assert_array_equal(pooled.confusion, other.confusion)
        np.testing.assert_allclose(pooled.iou, other.iou)
        assert pooled.f1_macro == pytest.approx(other.f1_macro)
    np.testing.assert_array_equal(sum(s.confusion for s in singles), pooled.confusion)
    np.testing.assert_array_equal(acc.confusion, pooled.confusion)


def test_accumulator_keeps_named_per_image_results() -> None:
    acc = MetricAccumulator(3)
    first = acc.add(PRED, TARGET, name="tile_a.tif")
    second = acc.add(TARGET, TARGET)
    assert [name for name, _ in acc.per_image] == ["tile_a.tif", "image_1"]
    assert acc.per_image[0][1] is first and acc.per_image[1][1] is second
    assert first.accuracy == pytest.approx(0.75) and second.accuracy == 1.0
    assert acc.num_images == 2
    acc.reset()
    assert acc.per_image == [] and acc.num_images == 0 and acc.compute().num_pixels == 0


def test_accumulator_without_per_image_still_returns_scores() -> None:
    acc = MetricAccumulator(3, per_image=False)
    assert acc.add(PRED, TARGET).accuracy == pytest.approx(0.75)
    assert acc.per_image == []
    assert acc.compute().num_pixels == 16


def test_failed_add_leaves_accumulator_unchanged() -> None:
    acc = MetricAccumulator(3)
    acc.add(PRED, TARGET)
    with pytest.raises(InputError):
        acc.add(PRED, np.full_like(TARGET, 7))
    assert acc.num_images == 1 and len(acc.per_image) == 1
    np.testing.assert_array_equal(acc.confusion, HAND_CM)


def test_as_dict_is_json_ready() -> None:
    m = evaluate([np.zeros((2, 2), dtype=int)], [np.zeros((2, 2), dtype=int)], 3)
    d = m.as_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["miou"] == 1.0 and back["iou_0"] == 1.0
    assert back["iou_1"] is None and back["recall_2"] is None
    assert back["support_0"] == 4 and back["num_pixels"] == 4
    assert {f"{k}_{c}" for k in ("iou", "precision", "recall", "f1", "support") for c in range(3)} <= set(d)
    hand = evaluate([PRED], [TARGET], 3).as_dict()
    assert hand["precision_1"] == pytest.approx(3 / 5) and hand["accuracy"] == pytest.approx(0.75)
    assert all(isinstance(v, (int, float)) for v in hand.values())


def test_metrics_arrays_are_read_only() -> None:
    m = evaluate([PRED], [TARGET], 3)
    with pytest.raises(ValueError):
        m.iou[0] = 0.0
    assert isinstance(m, Metrics)


@pytest.mark.parametrize(
    ("pred", "target", "num_classes", "match"),
    [
        (np.zeros((2, 3), int), np.zeros((3, 2), int), 3, r"\(2, 3\).*\(3, 2\)"),
        (np.zeros((2, 2), int), np.array([[0, 1], [5, 0]]), 3, r"target .* 5 outside \[0, 2\]"),
        (np.array([[0, -2], [9, 0]]), np.zeros((2, 2), int), 3, r"prediction .* -2, 9 outside"),
        (np.array([[255, 0]]), np.array([[1, 0]]), 3, r"ignore value 255 at 1 pixels"),
        (np.zeros((2, 2)), np.zeros((2, 2), int), 3, r"integer class array, got dtype float64"),
        (np.zeros((2, 2), int), np.zeros((2, 2), int), 1, r"num_classes must be .* got 1"),
    ],
)
def test_invalid_input_raises(pred: np.ndarray, target: np.ndarray, num_classes: int, match: str) -> None:
    with pytest.raises(InputError, match=match):
        confusion_matrix(pred, target, num_classes)


def test_invalid_settings_raise() -> None:
    with pytest.raises(InputError, match="num_classes must be .* got 0"):
        MetricAccumulator(0)
    with pytest.raises(InputError, match="ignore_index 1 is a class id"):
        MetricAccumulator(3, ignore_index=1)
    with pytest.raises(InputError, match="ran out of predictions at image 1"):
        evaluate([PRED], [TARGET, TARGET], 3)
    with pytest.raises(InputError, match="ran out of targets at image 1"):
        evaluate([PRED, PRED], [TARGET], 3)
    with pytest.raises(InputError, match=r"square \(C, C\), got shape \(2, 3\)"):
        metrics_from_confusion(np.zeros((2, 3), int))
    with pytest.raises(InputError, match="non-negative counts, found -1"):
        metrics_from_confusion(np.array([[1, -1], [0, 2]]))


def test_binary_iou() -> None:
    empty = np.zeros((4, 4), dtype=bool)
    assert binary_iou(empty, empty) == 1.0
    full = ~empty
    assert binary_iou(full, empty) == 0.0
    a = np.zeros((4, 4), dtype=bool)
    b = np.zeros((4, 4), dtype=bool)
    a[:2] = True  # 8 pixels
    b[1:3] = True  # 8 pixels, 4 shared -> union 12
    assert binary_iou(a, b) == pytest.approx(4 / 12)
    assert binary_iou(a.astype(np.uint8), b.astype(np.int64)) == pytest.approx(4 / 12)
    with pytest.raises(InputError, match="only 0 and 1"):
        binary_iou(np.array([0, 2]), np.array([0, 1]))
    with pytest.raises(InputError, match="differs from target shape"):
        binary_iou(a, b[:2])
