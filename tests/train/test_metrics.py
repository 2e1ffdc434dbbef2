"""Tests of samadapt.train.metrics: hand-computed cases, edge cases, torchmetrics agreement, objects.

scikit-learn is not a dependency of samadapt, so the reference values come from torchmetrics
(``multiclass_*`` / ``binary_*``, default ``zero_division=0``), computed inside the tests.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from samadapt.errors import InputError
from samadapt.train.confusion import binary_iou, confusion_matrix
from samadapt.train.metrics import (
    COUNT_FIELDS,
    SCALAR_FIELDS,
    MetricAccumulator,
    Metrics,
    evaluate,
    metrics_from_confusion,
)
from samadapt.train.object_metrics import ObjectCounts, object_counts

torch = pytest.importorskip("torch")
tmf = pytest.importorskip("torchmetrics.functional.classification")

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
    # Class 2 occurs (in the prediction), so its 0/0 recall is 0; class 1 occurs nowhere: NaN.
    assert m.iou[2] == 0.0 and m.precision[2] == 0.0 and m.recall[2] == 0.0 and m.f1[2] == 0.0
    for name in ("iou", "precision", "recall", "f1"):
        assert math.isnan(getattr(m, name)[1]), name
    # background: TP 5, FN 1, FP 0
    assert m.iou[0] == pytest.approx(5 / 6)
    assert m.recall[0] == pytest.approx(5 / 6)
    assert m.precision[0] == 1.0
    # Macro means over classes 0 and 2; class 2's recall counts as 0, class 1 is left out.
    assert m.recall_macro == pytest.approx((5 / 6 + 0) / 2)
    assert m.precision_macro == pytest.approx((1 + 0) / 2)
    assert m.miou == pytest.approx((5 / 6 + 0) / 2)


def test_class_in_target_but_never_predicted() -> None:
    target = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 0, 0, 0]])
    m = evaluate([pred], [target], 2)
    assert m.precision[1] == 0.0  # 0/0, but class 1 is in the target: it was missed, not undefined
    assert m.recall[1] == 0.0 and m.f1[1] == 0.0 and m.iou[1] == 0.0
    assert m.precision_macro == pytest.approx((2 / 4 + 0) / 2)
    assert m.recall_macro == pytest.approx((1 + 0) / 2)


def test_macro_is_mean_of_per_class_values_shown() -> None:
    # Whatever occurs, a macro value is the mean of the non-NaN per-class values (as_dict's
    # non-None entries), so nobody recomputing it from the per-class output can re-inflate it.
    target = np.array([0, 0, 1, 2, 2, 255])
    pred = np.array([0, 3, 1, 0, 0, 255])  # class 2 never predicted, class 3 only predicted
    m = evaluate([pred], [target], 5)  # class 4 occurs nowhere
    d = m.as_dict()
    for name in ("precision", "recall", "f1", "iou"):
        values = [d[f"{name}_{c}"] for c in range(5)]
        assert values[4] is None and all(v is not None for v in values[:4]), name
        macro = m.miou if name == "iou" else getattr(m, f"{name}_macro")
        assert macro == pytest.approx(np.mean(values[:4])), name


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


ROLES = ("both", "pred_only", "target_only", "neither")


@st.composite
def _pairs_with_missing_and_spurious_classes(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    """(pred, target, C): each class, background too, is drawn to occur in both masks, only in
    the prediction (spurious), only in the target (missed) or in neither; some pixels ignored."""
    num_classes = draw(st.integers(2, 6))
    roles = draw(st.lists(st.sampled_from(ROLES), min_size=num_classes, max_size=num_classes))
    shape = draw(st.tuples(st.integers(1, 9), st.integers(1, 9)))
    ignore_fraction = draw(st.sampled_from([0.0, 0.1, 0.3, 1.0]))
    agree = draw(st.floats(0.0, 1.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    in_target = [c for c, role in enumerate(roles) if role in ("both", "target_only")]
    in_pred = [c for c, role in enumerate(roles) if role in ("both", "pred_only")]
    target = rng.choice(np.array(in_target or [255]), shape)
    pred = rng.choice(np.array(in_pred or [0]), shape)
    pred = np.where((rng.random(shape) < agree) & np.isin(target, in_pred), target, pred)
    ignored = rng.random(shape) < ignore_fraction
    target[ignored] = 255
    pred[ignored & (rng.random(shape) < 0.5)] = 255  # allowed where the target is ignored
    return pred, target, num_classes


def _torchmetrics_reference(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[str, np.ndarray | float]:
    """Every pixel score of samadapt's Metrics as torchmetrics computes it (zero_division=0)."""
    p, t = torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(target.astype(np.int64))
    kw = {"num_classes": num_classes, "ignore_index": 255}
    ref: dict[str, np.ndarray | float] = {
        "confusion": tmf.multiclass_confusion_matrix(p, t, **kw).numpy(),
        "iou": tmf.multiclass_jaccard_index(p, t, average=None, **kw).numpy(),
        "miou": tmf.multiclass_jaccard_index(p, t, average="macro", **kw).item(),
        "accuracy": tmf.multiclass_accuracy(p, t, average="micro", **kw).item(),
    }
    for name, fn in (("precision", tmf.multiclass_precision), ("recall", tmf.multiclass_recall),
                     ("f1", tmf.multiclass_f1_score)):
        ref[name] = fn(p, t, average=None, **kw).numpy()
        ref[f"{name}_micro"] = fn(p, t, average="micro", **kw).item()
        ref[f"{name}_macro"] = fn(p, t, average="macro", **kw).item()
    # Foreground: every class but background pooled, i.e. binary pred > 0 vs target > 0.
    fg_p = (p > 0).long()
    fg_t = torch.where(t == 255, t, (t > 0).long())
    for name, fn in (("precision_fg", tmf.binary_precision), ("recall_fg", tmf.binary_recall),
                     ("f1_fg", tmf.binary_f1_score), ("iou_fg", tmf.binary_jaccard_index)):
        ref[name] = fn(fg_p, fg_t, ignore_index=255).item()
    return ref


@settings(max_examples=200, deadline=None)
@given(case=_pairs_with_missing_and_spurious_classes())
def test_pixel_scores_agree_with_torchmetrics(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    pred, target, num_classes = case
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = evaluate([pred], [target], num_classes)
    kept = target != 255
    if not kept.any():  # nothing counted: every score is NaN (torchmetrics says 0 or NaN)
        assert all(math.isnan(getattr(m, name)) for name in SCALAR_FIELDS)
        return
    ref = _torchmetrics_reference(pred, target, num_classes)
    classes = np.arange(num_classes)
    present = np.isin(classes, target[kept]) | np.isin(classes, pred[kept])
    np.testing.assert_array_equal(m.confusion, ref["confusion"])
    for name in ("iou", "precision", "recall", "f1"):
        ours = getattr(m, name)
        # NaN exactly for the classes absent from both; torchmetrics reports 0 there.
        np.testing.assert_array_equal(np.isnan(ours), ~present, err_msg=name)
        np.testing.assert_allclose(np.nan_to_num(ours), ref[name], rtol=1e-5, atol=1e-7, err_msg=name)
    for name in ("miou", "accuracy", "precision_micro", "recall_micro", "f1_micro",
                 "precision_macro", "recall_macro", "f1_macro"):
        assert getattr(m, name) == pytest.approx(ref[name], rel=1e-5, abs=1e-7), name
    foreground_occurs = bool((target[kept] > 0).any() or (pred[kept] > 0).any())
    for name in ("precision_fg", "recall_fg", "f1_fg", "iou_fg"):
        if foreground_occurs:
            assert getattr(m, name) == pytest.approx(ref[name], rel=1e-5, abs=1e-7), name
        else:  # no foreground anywhere: nothing to score (torchmetrics says 0)
            assert math.isnan(getattr(m, name)) and ref[name] == 0.0, name


def _torchmetrics_macro(name: str, pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    fn = {"precision": tmf.multiclass_precision, "recall": tmf.multiclass_recall}[name]
    p, t = torch.from_numpy(pred), torch.from_numpy(target)
    return fn(p, t, num_classes=num_classes, average="macro", ignore_index=255).item()


def test_all_background_prediction_on_5_percent_foreground() -> None:
    target = np.zeros((20, 20), dtype=np.int64)
    target[0] = 1  # 20 of 400 pixels
    pred = np.zeros_like(target)  # background everywhere
    m = evaluate([pred], [target], 2)
    reference = _torchmetrics_macro("precision", pred, target, 2)
    assert reference == pytest.approx((0.95 + 0) / 2)
    assert m.precision_macro == pytest.approx(reference)  # skipping class 1 would give 0.95
    assert m.precision[1] == 0.0 and m.recall_macro == pytest.approx((1 + 0) / 2)
    assert m.precision_micro == pytest.approx(0.95)  # micro = accuracy hides the miss ...
    assert m.precision_fg == m.recall_fg == m.f1_fg == m.iou_fg == 0.0  # ... foreground does not


def test_three_classes_one_never_predicted() -> None:
    # 8 background pixels right; 7 class-1 pixels right; the one class-2 pixel called class 1.
    target = np.array([0] * 8 + [1] * 7 + [2])
    pred = np.array([0] * 8 + [1] * 7 + [1])
    m = evaluate([pred], [target], 3)
    reference = _torchmetrics_macro("precision", pred, target, 3)
    assert reference == pytest.approx((1 + 7 / 8 + 0) / 3)
    assert m.precision_macro == pytest.approx(reference)  # skipping class 2 would give 0.9375
    np.testing.assert_allclose(m.precision, [1, 7 / 8, 0])


def test_empty_target_with_false_positives() -> None:
    target = np.zeros((50, 50), dtype=np.int64)  # no foreground at all
    pred = target.copy()
    pred[:1] = 1  # 50 false-positive pixels, 2 %
    m = evaluate([pred], [target], 2)
    reference = _torchmetrics_macro("recall", pred, target, 2)
    assert reference == pytest.approx((0.98 + 0) / 2)
    assert m.recall_macro == pytest.approx(reference)  # skipping class 1 would give 0.98
    assert m.recall[1] == 0.0
    assert m.precision_fg == m.recall_fg == m.iou_fg == 0.0
    assert m.object_precision == 0.0 and m.num_objects_pred == 1 and m.num_objects_target == 0


def test_foreground_pools_the_foreground_classes() -> None:
    m = evaluate([PRED], [TARGET], 3)
    # Foreground TP counts the class 1 <-> 2 confusions too: cm[1:, 1:] = [[3, 1], [1, 3]].
    tp, fp, fn = 8, 1, 1  # fp = cm[0, 1:].sum(), fn = cm[1:, 0].sum()
    assert m.precision_fg == pytest.approx(tp / (tp + fp))
    assert m.recall_fg == pytest.approx(tp / (tp + fn))
    assert m.f1_fg == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m.iou_fg == pytest.approx(tp / (tp + fp + fn))
    background = evaluate([np.zeros((3, 3), int)], [np.zeros((3, 3), int)], 3)
    assert all(math.isnan(v) for v in (background.precision_fg, background.recall_fg, background.iou_fg))


def test_accumulator_pools_like_evaluate_on_concatenation() -> None:
    rng = np.random.default_rng(7)
    shapes = [(5, 7), (9, 3), (1, 1), (6, 6)]
    preds = [rng.integers(0, 3, s) for s in shapes]
    targets = [np.where(rng.random(s) < 0.1, 255, rng.integers(0, 3, s)) for s in shapes]
    acc = MetricAccumulator(3)
    singles = [acc.add(p, t) for p, t in zip(preds, targets, strict=False)]
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
    new_fields = {"precision_fg", "recall_fg", "f1_fg", "iou_fg", "object_precision", "object_recall", "object_f1",
                  "num_objects_pred", "num_objects_target", "num_objects_matched", "object_count_error",
                  "object_count_abs_error"}
    assert new_fields <= set(SCALAR_FIELDS) | set(COUNT_FIELDS)
    assert list(hand)[: len(SCALAR_FIELDS) + len(COUNT_FIELDS)] == [*SCALAR_FIELDS, *COUNT_FIELDS]
    assert back["f1_fg"] is None and back["object_f1"] is None  # no foreground, no object at all
    assert back["num_objects_pred"] == back["object_count_abs_error"] == 0
    assert hand["num_objects_target"] == 2 and isinstance(hand["object_count_error"], int)


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


# Object-level scores.

EIGHT = np.ones((3, 3), dtype=bool)


def _reference_object_counts(pred: np.ndarray, target: np.ndarray, num_classes: int) -> tuple[list[int], ...]:
    """Slow reference: per target object, the IoU with every overlapping predicted object from
    boolean masks; also checks the documented claim that no object has two partners."""
    labelled = target != 255
    predicted, targets, matched = [0] * num_classes, [0] * num_classes, [0] * num_classes
    for c in range(1, num_classes):
        t_lab, num_t = ndimage.label(target == c, EIGHT)
        p_lab, num_p = ndimage.label((pred == c) & labelled, EIGHT)
        pairs = []
        for i in range(1, num_t + 1):
            a = t_lab == i
            for j in np.unique(p_lab[a]):
                if j == 0:
                    continue
                b = p_lab == j
                if (a & b).sum() / (a | b).sum() >= 0.5:
                    pairs.append((i, int(j)))
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
        predicted[c], targets[c], matched[c] = num_p, num_t, len(pairs)
    return predicted, targets, matched


def _check_against_reference(pred: np.ndarray, target: np.ndarray, num_classes: int) -> ObjectCounts:
    counts = object_counts(pred, target, num_classes)
    predicted, targets, matched = _reference_object_counts(pred, target, num_classes)
    np.testing.assert_array_equal(counts.predicted, predicted)
    np.testing.assert_array_equal(counts.target, targets)
    np.testing.assert_array_equal(counts.matched, matched)
    np.testing.assert_array_equal(counts.abs_count_error, np.abs(np.subtract(predicted, targets)))
    return counts


def test_objects_two_predicted_one_matches_one_spurious_one_missed() -> None:
    target = np.zeros((32, 32), dtype=np.uint8)
    target[2:12, 2:12] = 1  # object A, 100 px
    target[20:26, 20:26] = 1  # object B, never predicted
    pred = np.zeros_like(target)
    pred[2:12, 2:10] = 1  # 80 px inside A: IoU 80 / 100 = 0.8
    pred[2:6, 20:24] = 1  # spurious, touches no target object
    m = evaluate([pred], [target], 2)
    assert (m.num_objects_pred, m.num_objects_target, m.num_objects_matched) == (2, 2, 1)
    assert m.object_precision == m.object_recall == m.object_f1 == pytest.approx(0.5)
    assert m.object_count_error == 0 and m.object_count_abs_error == 0
    np.testing.assert_array_equal(m.objects.matched, [0, 1])
    _check_against_reference(pred, target, 2)


def test_objects_differ_from_whole_class_mask_iou() -> None:
    # Comparing the class masks as a whole says "found" (IoU >= 0.5) in both cases below.
    target = np.zeros((30, 30), dtype=np.uint8)
    target[0:10, 0:10] = 1  # a large pit ...
    target[20:22, 20:22] = 1  # ... and two small ones the model misses
    target[20:22, 26:28] = 1
    pred = np.where(np.arange(30)[:, None] < 10, target, 0).astype(np.uint8)
    assert binary_iou(pred == 1, target == 1) == pytest.approx(100 / 108)
    m = evaluate([pred], [target], 2)
    assert (m.num_objects_pred, m.num_objects_target, m.num_objects_matched) == (1, 3, 1)
    assert m.object_recall == pytest.approx(1 / 3) and m.object_precision == 1.0
    assert m.object_count_error == -2

    # Two pits merged by one predicted blob: the blob matches neither (IoU 36 / 84 each).
    target = np.zeros((10, 20), dtype=np.uint8)
    target[2:8, 2:8] = 1
    target[2:8, 10:16] = 1
    pred = np.zeros_like(target)
    pred[2:8, 2:16] = 1
    assert binary_iou(pred == 1, target == 1) == pytest.approx(72 / 84)
    m = evaluate([pred], [target], 2)
    assert (m.num_objects_pred, m.num_objects_target, m.num_objects_matched) == (1, 2, 0)
    assert m.object_f1 == 0.0
    _check_against_reference(pred, target, 2)


def test_objects_use_8_connectivity() -> None:
    target = np.zeros((6, 6), dtype=np.uint8)
    target[0:2, 0:2] = 1
    target[2:4, 2:4] = 1  # touches the first square only at a corner
    assert ndimage.label(target)[1] == 2  # 4-connectivity would see two objects
    counts = object_counts(target, target, 2)
    assert counts.target[1] == counts.predicted[1] == counts.matched[1] == 1


def test_object_match_threshold_is_inclusive() -> None:
    target = np.zeros((1, 10), dtype=np.uint8)
    target[0, 0:8] = 1
    half = np.zeros_like(target)
    half[0, 0:4] = 1  # IoU 4 / 8 = 0.5: a match
    less = np.zeros_like(target)
    less[0, 0:3] = 1  # IoU 3 / 8: no match
    assert object_counts(half, target, 2).matched[1] == 1
    assert object_counts(less, target, 2).matched[1] == 0


def test_objects_match_within_their_class_only() -> None:
    target = np.zeros((8, 8), dtype=np.uint8)
    target[1:5, 1:5] = 1
    pred = np.where(target == 1, 2, 0).astype(np.uint8)  # right place, wrong class
    m = evaluate([pred], [target], 3)
    np.testing.assert_array_equal(m.objects.predicted, [0, 0, 1])
    np.testing.assert_array_equal(m.objects.target, [0, 1, 0])
    assert m.num_objects_matched == 0 and m.object_precision == 0.0 and m.object_recall == 0.0
    assert m.object_count_error == 0 and m.object_count_abs_error == 2  # per class: |0-1| + |1-0|
    assert m.iou_fg == 1.0  # the foreground pixels themselves were all found


def test_ignored_pixels_belong_to_no_object() -> None:
    target = np.zeros((8, 12), dtype=np.uint8)
    target[:, 8:] = 255
    target[2:6, 0:6] = 1
    target[2:6, 2:4] = 255  # cuts the target object in two
    pred = np.zeros_like(target)
    pred[2:6, 0:6] = 1  # one blob in the image, two objects once the ignored strip is removed
    pred[0:3, 9:12] = 1  # only on ignored pixels: not an object
    pred[5:8, 9:12] = 255
    counts = _check_against_reference(pred, target, 2)
    assert (counts.predicted[1], counts.target[1], counts.matched[1]) == (2, 2, 2)


@settings(max_examples=100, deadline=None)
@given(case=_pairs_with_missing_and_spurious_classes(), scale=st.integers(1, 4), shift=st.integers(0, 3))
def test_object_counts_agree_with_slow_reference(
    case: tuple[np.ndarray, np.ndarray, int], scale: int, shift: int
) -> None:
    pred, target, num_classes = case
    # Blocks instead of speckle, the prediction shifted: overlaps around the IoU threshold.
    pred = np.roll(np.kron(pred, np.ones((scale, scale), dtype=pred.dtype)), shift, axis=1)
    target = np.kron(target, np.ones((scale, scale), dtype=target.dtype))
    pred[(pred == 255) & (target != 255)] = 0
    _check_against_reference(pred, target, num_classes)


def test_object_counts_with_many_objects() -> None:
    # Sparse speckle gives more (target, prediction) label pairs than pixels: the np.unique path.
    rng = np.random.default_rng(3)
    target = (rng.random((64, 64)) < 0.12).astype(np.uint8)
    pred = np.where(rng.random((64, 64)) < 0.7, target, (rng.random((64, 64)) < 0.12)).astype(np.uint8)
    num_t, num_p = ndimage.label(target, EIGHT)[1], ndimage.label(pred, EIGHT)[1]
    assert (num_t + 1) * (num_p + 1) > target.size
    counts = _check_against_reference(pred, target, 2)
    assert counts.matched[1] > 50


def test_object_matching_stays_one_to_one_if_an_object_had_two_partners() -> None:
    # Real components never give one object two partners at IoU >= 0.5 (the reference above
    # checks this); hand-made labels that split one connected target in two still match once.
    from samadapt.train.object_metrics import _match_objects

    target_labels = np.array([[1, 1, 2, 2, 0]], dtype=np.int32)
    pred_labels = np.array([[1, 1, 1, 1, 0]], dtype=np.int32)  # IoU 0.5 with both halves
    assert _match_objects(target_labels, 2, pred_labels, 1) == 1
    assert _match_objects(pred_labels, 1, target_labels, 2) == 1


def test_object_scores_accumulate_over_images() -> None:
    target = np.zeros((10, 10), dtype=np.uint8)
    target[1:4, 1:4] = 1
    pred = target.copy()
    pred[6:9, 6:9] = 1  # image 1: 2 predicted, 1 target, 1 match
    acc = MetricAccumulator(2)
    first = acc.add(pred, target)
    second = acc.add(np.zeros_like(target), target)  # image 2: 0 predicted, 1 target
    assert first.object_count_error == 1 and second.object_count_error == -1
    m = acc.compute()
    assert (m.num_objects_pred, m.num_objects_target, m.num_objects_matched) == (2, 2, 1)
    assert m.object_count_error == 0  # signed errors cancel ...
    assert m.object_count_abs_error == 2  # ... absolute ones do not
    assert m.object_precision == m.object_recall == pytest.approx(0.5)
    np.testing.assert_array_equal(acc.objects.predicted, m.objects.predicted)
    assert evaluate([pred, np.zeros_like(target)], [target, target], 2).object_count_abs_error == 2
    acc.reset()
    assert acc.compute().num_objects_target == 0 and math.isnan(acc.compute().object_f1)


def test_object_scores_zero_rule() -> None:
    empty = np.zeros((5, 5), dtype=np.uint8)
    none = evaluate([empty], [empty], 2)
    assert none.num_objects_pred == none.num_objects_target == 0 and none.object_count_abs_error == 0
    assert math.isnan(none.object_precision) and math.isnan(none.object_recall) and math.isnan(none.object_f1)
    missed = evaluate([empty], [np.eye(5, dtype=np.uint8)], 2)
    assert missed.object_precision == missed.object_recall == missed.object_f1 == 0.0


def test_metrics_without_object_counts() -> None:
    m = metrics_from_confusion(HAND_CM)
    assert m.objects is None and m.num_objects_pred is None and m.object_count_error is None
    assert math.isnan(m.object_precision)
    d = m.as_dict()
    assert d["object_f1"] is None and d["object_count_abs_error"] is None
    json.dumps(d, allow_nan=False)
    with pytest.raises(InputError, match="object counts are for 2 classes but the confusion matrix for 3"):
        metrics_from_confusion(HAND_CM, ObjectCounts.zeros(2))
    with pytest.raises(InputError, match="differs from target shape"):
        object_counts(PRED, TARGET[:2], 3)
    with pytest.raises(InputError, match="cannot add object counts of 2 classes"):
        ObjectCounts.zeros(3) + ObjectCounts.zeros(2)
