"""Object-level evaluation of mapped polygons: one-to-one matching, scores, size-frequency agreement, CRSs."""

from __future__ import annotations

import itertools
import json
import math
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

from helpers.cli import run_cli
from samadapt.errors import InputError
from samadapt.mapping.evaluate import evaluate_map, match_objects

X0, Y0 = 500000.0, 4000000.0  # UTM 33N metres


def _write(path: Path, geoms: list, crs: str | None = "EPSG:32633", **columns: list) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a file without a CRS, on purpose
        gpd.GeoDataFrame(columns, geometry=geoms, crs=crs).to_file(path, engine="pyogrio")
    return path


def _interval_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (a[1] - a[0] + b[1] - b[0] - inter)


def _best_matching(iou: np.ndarray, threshold: float) -> int:
    """The largest one-to-one matching, by trying every assignment (independent of the code under test)."""
    n_p, n_t = iou.shape
    best = 0
    for perm in itertools.permutations(range(max(n_p, n_t)), n_p):
        best = max(best, sum(1 for p, t in enumerate(perm) if t < n_t and iou[p, t] >= threshold))
    return best


def test_one_prediction_over_two_truths_counts_once_and_iou_of_one_half_counts() -> None:
    truths = [box(0, 0, 10, 10), box(10, 0, 20, 10)]
    wide = box(0, 0, 20, 10)  # IoU exactly 0.5 with each truth
    assert match_objects([wide], truths) == [(0, 0, 0.5)]  # one of them, not both
    assert len(match_objects([box(0, 0, 10, 10)], [box(0, 0, 10, 20)])) == 1  # IoU 0.5: a match (>=)
    assert match_objects([box(0, 0, 10, 10)], [box(0, 0, 10, 20.01)]) == []  # just below: none


def test_matching_is_maximal_where_greedy_is_not() -> None:
    # 1-D intervals as 10-high boxes: A-T3 0.9, A-T4 0.6, B-T3 0.583, B-T4 0.23
    a, b, t3, t4 = (0.0, 10.0), (-3.0, 7.0), (0.0, 9.0), (4.0, 10.0)
    assert _interval_iou(a, t3) == pytest.approx(0.9) and _interval_iou(b, t4) < 0.5
    geoms = [box(lo, 0, hi, 10) for lo, hi in (a, b, t3, t4)]
    matches = match_objects(geoms[:2], geoms[2:])
    assert [(p, t) for p, t, _ in matches] == [(0, 1), (1, 0)]  # greedy (A-T3 first) would find one


def test_matching_equals_brute_force_on_random_overlapping_objects() -> None:
    rng = np.random.default_rng(3)
    for _ in range(40):
        pred = [(x, x + w) for x, w in zip(rng.uniform(0, 20, 5), rng.uniform(3, 10, 5), strict=True)]
        truth = [(x, x + w) for x, w in zip(rng.uniform(0, 20, 4), rng.uniform(3, 10, 4), strict=True)]
        iou = np.array([[_interval_iou(p, t) for t in truth] for p in pred])
        found = match_objects([box(lo, 0, hi, 1) for lo, hi in pred], [box(lo, 0, hi, 1) for lo, hi in truth])
        assert len(found) == _best_matching(iou, 0.5)
        assert len({p for p, _, _ in found}) == len(found) == len({t for _, t, _ in found})


def _squares(sizes: list[float], shift: float = 0.0) -> list:
    return [box(X0 + 100 * i + shift, Y0, X0 + 100 * i + shift + s, Y0 + s) for i, s in enumerate(sizes)]


def test_scores_counts_and_size_frequency_follow_an_independent_computation(tmp_path: Path) -> None:
    truth_sizes = [10.0, 20.0, 30.0, 40.0]
    pred_sizes = [10.0, 20.0, 30.0]  # the first three found, the fourth missed, one false object far away
    truth = _write(tmp_path / "truth.gpkg", _squares(truth_sizes))
    pred_geoms = [*_squares(pred_sizes, shift=1.0), box(X0 + 5000, Y0, X0 + 5005, Y0 + 5)]
    pred = _write(tmp_path / "pred.gpkg", pred_geoms)
    result = evaluate_map(pred, truth)
    s = result.overall
    assert (s.predicted, s.truth, s.matched) == (4, 4, 3)
    assert s.precision == pytest.approx(0.75) and s.recall == pytest.approx(0.75) and s.f1 == pytest.approx(0.75)
    d_truth = [2 * math.sqrt(a * a / math.pi) for a in truth_sizes]
    d_pred = [2 * math.sqrt(a * a / math.pi) for a in [*pred_sizes, 5.0]]
    grid = sorted(d_truth + d_pred)  # two-sample KS: the largest gap of the empirical CDFs
    ks = max(abs(sum(d <= x for d in d_pred) / 4 - sum(d <= x for d in d_truth) / 4) for x in grid)
    assert s.ks_statistic == pytest.approx(ks)
    assert sum(b.truth for b in s.bins) == 4 and sum(b.predicted for b in s.bins) == 4
    for b in s.bins:
        assert b.high == pytest.approx(b.low * math.sqrt(2))
        assert b.truth == sum(b.low <= d < b.high for d in d_truth)
        assert b.ratio == (b.predicted / b.truth if b.truth else None)


def test_classes_match_within_their_class(tmp_path: Path) -> None:
    geoms = _squares([10.0, 20.0])
    truth = _write(tmp_path / "truth.gpkg", geoms, kind=["pit", "crater"])
    pred = _write(tmp_path / "pred.gpkg", geoms, kind=["pit", "pit"])
    result = evaluate_map(pred, truth, class_column="kind")
    by_name = {c.name: c for c in result.per_class}
    assert (by_name["pit"].predicted, by_name["pit"].truth, by_name["pit"].matched) == (2, 1, 1)
    assert (by_name["crater"].predicted, by_name["crater"].matched) == (0, 0)
    assert result.overall.matched == 1
    with pytest.raises(InputError, match="no column 'type'; its columns are kind"):
        evaluate_map(pred, truth, class_column="type")


def test_predicted_polygons_are_reprojected_and_geographic_truth_measured_in_metres(tmp_path: Path) -> None:
    sizes = [10.0, 25.0, 60.0]
    utm = gpd.GeoDataFrame(geometry=_squares(sizes), crs="EPSG:32633")
    truth = _write(tmp_path / "truth.geojson", list(utm.to_crs("EPSG:4326").geometry), crs="EPSG:4326")
    pred = _write(tmp_path / "pred.gpkg", list(utm.to_crs("EPSG:3857").geometry), crs="EPSG:3857")
    result = evaluate_map(pred, truth)
    assert result.overall.matched == 3 and result.diameter_units == "m"
    truth_d = sorted(result.diameters["all"]["truth"])
    assert truth_d == pytest.approx([2 * s / math.sqrt(math.pi) for s in sizes], rel=1e-3)  # equal-area: metres


def test_crs_mismatch_and_cli_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    truth = _write(tmp_path / "truth.gpkg", _squares([10.0, 20.0]))
    pred = _write(tmp_path / "pred.gpkg", _squares([10.0]))
    plain = _write(tmp_path / "plain.gpkg", [box(0, 0, 10, 10)], crs=None)
    mars = _write(tmp_path / "mars.gpkg", [box(0, 0, 10, 10)], crs="IAU_2015:49910")
    for other, words in ((plain, "has none"), (mars, "cannot be reprojected")):
        code, text = run_cli(["evaluate-map", str(other), str(truth)], monkeypatch, capsys)
        assert code == 2 and text.count("error:") == 1 and words in text, text
    code, text = run_cli(["evaluate-map", str(pred), str(truth), "--out", str(tmp_path / "report")],
                         monkeypatch, capsys)
    assert code == 0, text
    assert "matched one to one" in text
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["overall"]["matched"] == 1 and report["overall"]["recall"] == 0.5
    assert report["matching"].startswith("hungarian")
    assert (tmp_path / "report" / "sfd.png").stat().st_size > 1000
    code, text = run_cli(["evaluate-map", str(pred), str(truth), "--out", str(tmp_path / "report")],
                         monkeypatch, capsys)
    assert code == 2 and "--overwrite" in text
