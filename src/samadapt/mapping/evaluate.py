"""Object-level evaluation of mapped polygons against truth polygons (``samadapt evaluate-map``).

Matching. A predicted and a truth object are a candidate pair when their IoU (intersection
area over union area) is at least the threshold (0.5, :data:`samadapt.train.object_metrics.MATCH_IOU`,
inclusive: an IoU of exactly 0.5 counts; a relative tolerance of 1e-9 absorbs float rounding).
Objects are then matched one to one by a maximum bipartite matching over the candidate pairs,
solved with the Hungarian algorithm (:func:`scipy.optimize.linear_sum_assignment`) in each
connected group of candidates: it gives the largest number of matches, and among those the
largest total IoU. (A greedy highest-IoU-first assignment can give fewer: prediction A at
IoU 0.9 with truth 1 and 0.6 with truth 2, prediction B at 0.7 with truth 1 only: greedy pairs
A-1 and leaves B unmatched, the matching pairs A-2 and B-1.) A prediction covering two truths
counts at most once. With a class column, objects match only within their class, and every
score is given per class and over all classes.

Scores: precision = matched / predicted, recall = matched / truth, F1 their harmonic mean
(2 matched / (predicted + truth)); 0 when undefined by an empty side.

Size-frequency agreement: each object's equivalent diameter D = 2 sqrt(area / pi), in metres.
The cumulative size-frequency distributions (number of objects of diameter >= D) of predicted
and truth objects are compared by the two-sample Kolmogorov-Smirnov statistic
(:func:`scipy.stats.ks_2samp`, the largest gap between the two normalised cumulative
distributions, with its p-value) and by the ratio of counts (predicted / truth) in diameter
bins sqrt(2) wide, the standard crater-count binning (Crater Analysis Techniques Working
Group, 1979): bins [2^(k/2), 2^((k+1)/2)) m.

CRS. Predicted polygons are reprojected to the truth's CRS. Areas of a projected CRS are in its
units squared, turned to metres with the CRS's unit; a geographic truth CRS (degrees) is
replaced, for both files, by a Lambert azimuthal equal-area projection centred on the truth's
extent, on the same body (Earth, Mars, Moon). Files without a CRS are compared as they are,
diameters in their own units; one with and one without is refused.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from samadapt.errors import InputError, InputFileError
from samadapt.train.object_metrics import MATCH_IOU

if TYPE_CHECKING:
    import geopandas as gpd
    import shapely

#: Relative tolerance of the IoU threshold: float rounding of an IoU of exactly 0.5 still counts.
IOU_TOLERANCE = 1e-9
#: Class name of every object when no class column is given.
ALL = "all"


@dataclass(frozen=True)
class SizeBin:
    """Counts of one diameter bin [low, high) in metres (or the files' units without a CRS)."""

    low: float
    high: float
    predicted: int
    truth: int
    ratio: float | None  # predicted / truth, None when the bin has no truth object


@dataclass(frozen=True)
class ClassScores:
    """Object-level scores of one class (or of all classes together)."""

    name: str
    predicted: int
    truth: int
    matched: int
    precision: float
    recall: float
    f1: float
    ks_statistic: float | None
    ks_pvalue: float | None
    bins: list[SizeBin] = field(default_factory=list)


@dataclass(frozen=True)
class MapEvaluation:
    """Scores per class and over all classes, with the settings that produced them."""

    predicted_path: str
    truth_path: str
    iou: float
    matching: str
    crs: str | None
    diameter_units: str
    per_class: list[ClassScores]
    overall: ClassScores
    diameters: dict[str, dict[str, list[float]]]  # class -> "predicted" / "truth" -> diameters

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON values."""
        doc = asdict(self)
        doc.pop("diameters")
        return doc


def read_polygons(path: Path, what: str) -> gpd.GeoDataFrame:
    """Read a vector file of polygons (GeoPackage, GeoJSON, Shapefile), empty geometries dropped."""
    import geopandas as gpd

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{what} file {path} does not exist")
    try:
        frame = gpd.read_file(path, engine="pyogrio")
    except Exception as err:  # pyogrio raises several unrelated types for unreadable files
        raise InputFileError(f"{what} file {path} cannot be read as a vector file: {err}") from err
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    kinds = set(frame.geometry.geom_type)
    if kinds - {"Polygon", "MultiPolygon"}:
        raise InputError(f"{what} file {path} holds {', '.join(sorted(kinds))} geometries; objects must be polygons")
    frame = frame.copy()
    frame["geometry"] = frame.geometry.make_valid()
    return frame


def _local_equal_area(frame: gpd.GeoDataFrame) -> Any:
    """A Lambert azimuthal equal-area CRS centred on a geographic frame's extent, on its body."""
    from pyproj.crs import ProjectedCRS
    from pyproj.crs.coordinate_operation import LambertAzimuthalEqualAreaConversion

    x0, y0, x1, y1 = frame.total_bounds
    if not np.isfinite([x0, y0, x1, y1]).all():
        x0 = y0 = x1 = y1 = 0.0
    conversion = LambertAzimuthalEqualAreaConversion(latitude_natural_origin=(y0 + y1) / 2,
                                                     longitude_natural_origin=(x0 + x1) / 2)
    return ProjectedCRS(conversion=conversion, geodetic_crs=frame.crs.geodetic_crs)


def common_frame(predicted: gpd.GeoDataFrame, truth: gpd.GeoDataFrame, names: tuple[str, str]
                 ) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, float | None, str | None]:
    """Both frames in one CRS whose unit is a length: (predicted, truth, metres per unit, CRS name).

    Raises:
        InputError: only one of the files has a CRS, or the CRS's unit is not a length.
    """
    if (predicted.crs is None) != (truth.crs is None):
        has, lacks = (names[0], names[1]) if truth.crs is None else (names[1], names[0])
        raise InputError(f"{has} has a CRS and {lacks} has none; give both files a CRS, or neither")
    if truth.crs is None:
        return predicted, truth, None, None
    target = _local_equal_area(truth) if truth.crs.is_geographic else truth.crs
    try:
        predicted, truth = predicted.to_crs(target), truth.to_crs(target)
    except Exception as err:  # pyproj: different bodies, no transformation
        raise InputError(f"the predicted polygons cannot be reprojected to the truth's CRS: {err}") from err
    unit = target.axis_info[0] if target.axis_info else None
    if unit is None or unit.unit_conversion_factor is None or "metre" not in unit.unit_name.lower() and \
            "foot" not in unit.unit_name.lower():
        raise InputError(f"the truth's CRS {target.name!r} has no length unit, so diameters cannot be measured")
    return predicted, truth, float(unit.unit_conversion_factor), truth.crs.name


def match_objects(predicted: list[shapely.Geometry], truth: list[shapely.Geometry], iou: float = MATCH_IOU
                  ) -> list[tuple[int, int, float]]:
    """One-to-one matches (predicted index, truth index, IoU) at IoU >= ``iou`` (see the module docstring)."""
    import shapely
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not predicted or not truth:
        return []
    tree = shapely.STRtree(truth)
    p_idx, t_idx = tree.query(np.array(predicted, dtype=object), predicate="intersects")
    pairs: list[tuple[int, int, float]] = []
    for p, t in zip(p_idx.tolist(), t_idx.tolist(), strict=True):
        inter = shapely.intersection(predicted[p], truth[t]).area
        union = predicted[p].area + truth[t].area - inter
        value = inter / union if union > 0 else 0.0
        if value >= iou * (1 - IOU_TOLERANCE):
            pairs.append((p, t, value))
    if not pairs:
        return []
    n_p, n_t = len(predicted), len(truth)
    rows = np.array([p for p, _, _ in pairs])
    cols = np.array([n_p + t for _, t, _ in pairs])
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(n_p + n_t,) * 2)
    _, component = connected_components(graph, directed=False)
    groups: dict[int, list[tuple[int, int, float]]] = {}
    for pair in pairs:
        groups.setdefault(int(component[pair[0]]), []).append(pair)
    matches = []
    for group in groups.values():
        ps = sorted({p for p, _, _ in group})
        ts = sorted({t for _, t, _ in group})
        weight = np.zeros((len(ps), len(ts)))
        big = min(len(ps), len(ts)) + 1.0  # a match always outweighs any IoU total: count first, then IoU
        for p, t, value in group:
            weight[ps.index(p), ts.index(t)] = big + value
        for i, j in zip(*linear_sum_assignment(weight, maximize=True), strict=True):
            if weight[i, j] > 0:
                matches.append((ps[i], ts[j], float(weight[i, j] - big)))
    return sorted(matches)


def diameters(frame: gpd.GeoDataFrame, metres_per_unit: float | None) -> np.ndarray:
    """Equivalent diameters 2 sqrt(area / pi), in metres (or the frame's units without a CRS)."""
    return 2 * np.sqrt(frame.geometry.area.to_numpy(dtype=np.float64) / math.pi) * (metres_per_unit or 1.0)


def size_bins(predicted: np.ndarray, truth: np.ndarray) -> list[SizeBin]:
    """Counts per sqrt(2)-wide diameter bin over the range of both sets of diameters."""
    both = np.concatenate([predicted, truth])
    both = both[both > 0]
    if not both.size:
        return []
    lo = math.floor(2 * math.log2(both.min()))
    hi = math.floor(2 * math.log2(both.max())) + 1
    edges = 2.0 ** (np.arange(lo, hi + 1) / 2)
    p_counts, _ = np.histogram(predicted, edges)
    t_counts, _ = np.histogram(truth, edges)
    return [SizeBin(float(edges[k]), float(edges[k + 1]), int(p), int(t), float(p / t) if t else None)
            for k, (p, t) in enumerate(zip(p_counts, t_counts, strict=True))]


def _scores(name: str, predicted: np.ndarray, truth: np.ndarray, matched: int) -> ClassScores:
    from scipy.stats import ks_2samp

    n_p, n_t = len(predicted), len(truth)
    ks = ks_2samp(predicted, truth) if n_p and n_t else None
    return ClassScores(
        name=name, predicted=n_p, truth=n_t, matched=matched,
        precision=matched / n_p if n_p else 0.0, recall=matched / n_t if n_t else 0.0,
        f1=2 * matched / (n_p + n_t) if n_p + n_t else 0.0,
        ks_statistic=float(ks.statistic) if ks is not None else None,
        ks_pvalue=float(ks.pvalue) if ks is not None else None,
        bins=size_bins(predicted, truth),
    )


def _class_key(value: object) -> str:
    """A class value as text, so 3, 3.0 and "3" are one class."""
    item = getattr(value, "item", None)
    value = item() if callable(item) else value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _classes_of(frame: gpd.GeoDataFrame, column: str | None, path: Path, what: str) -> list[str]:
    if column is None:
        return [ALL] * len(frame)
    if column not in frame.columns:
        listed = ", ".join(str(c) for c in frame.columns if c != frame.geometry.name) or "none"
        raise InputError(f"{what} file {path} has no column {column!r}; its columns are {listed}")
    return [_class_key(v) for v in frame[column]]


def evaluate_map(predicted_path: Path, truth_path: Path, *, iou: float = MATCH_IOU, class_column: str | None = None,
                 truth_class_column: str | None = None) -> MapEvaluation:
    """Match predicted to truth polygons and score them (see the module docstring).

    Args:
        predicted_path: the mapped polygons (e.g. ``<stem>_polygons.gpkg`` of ``samadapt predict``).
        truth_path: the truth polygons (a catalogue's outlines).
        iou: the IoU a match needs, in (0, 1].
        class_column: column of the predicted file holding each object's class; None scores all
            objects as one class.
        truth_class_column: column of the truth file holding classes (default ``class_column``).

    Returns:
        The scores per class and over all classes.

    Raises:
        InputError: a bad threshold, a missing class column, non-polygon geometries, or CRSs
            that do not go together.
        InputFileError: a file missing or unreadable.
    """
    if not 0 < iou <= 1:
        raise InputError(f"--iou must be in (0, 1], got {iou}")
    predicted = read_polygons(predicted_path, "predicted")
    truth = read_polygons(truth_path, "truth")
    p_classes = _classes_of(predicted, class_column, Path(predicted_path), "predicted")
    t_classes = _classes_of(truth, truth_class_column or class_column, Path(truth_path), "truth")
    predicted, truth, per_metre, crs_name = common_frame(predicted, truth, (str(predicted_path), str(truth_path)))
    p_d, t_d = diameters(predicted, per_metre), diameters(truth, per_metre)
    p_geoms, t_geoms = list(predicted.geometry), list(truth.geometry)
    per_class, sizes, total = [], {}, 0
    for name in sorted(set(p_classes) | set(t_classes)):
        ps = [i for i, c in enumerate(p_classes) if c == name]
        ts = [i for i, c in enumerate(t_classes) if c == name]
        matched = len(match_objects([p_geoms[i] for i in ps], [t_geoms[i] for i in ts], iou))
        total += matched
        per_class.append(_scores(name, p_d[ps], t_d[ts], matched))
        sizes[name] = {"predicted": p_d[ps].tolist(), "truth": t_d[ts].tolist()}
    overall = _scores("all classes" if class_column else ALL, p_d, t_d, total)
    units = "m" if per_metre is not None else "the files' units (no CRS)"
    return MapEvaluation(str(predicted_path), str(truth_path), iou, "hungarian (maximum one-to-one matching)",
                         crs_name, units, per_class, overall, sizes)


def plot_sfd(evaluation: MapEvaluation, path: Path) -> Path:
    """Both cumulative size-frequency distributions, N(>= D) against D, log-log, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from samadapt._io import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    names = list(evaluation.diameters) if len(evaluation.diameters) > 1 else []
    series = [("", {k: np.concatenate([np.asarray(v[k]) for v in evaluation.diameters.values()] or [np.zeros(0)])
                    for k in ("predicted", "truth")})]
    series += [(f" {n}", {k: np.asarray(evaluation.diameters[n][k]) for k in ("predicted", "truth")}) for n in names]
    for label, sets in series:
        for kind, style in (("truth", "-"), ("predicted", "--")):
            d = np.sort(sets[kind])[::-1]
            if d.size:
                ax.step(d, np.arange(1, d.size + 1), style, where="post", label=f"{kind}{label} ({d.size})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"equivalent diameter D ({evaluation.diameter_units})")
    ax.set_ylabel("cumulative number N(>= D)")
    ks = evaluation.overall.ks_statistic
    ax.set_title("size-frequency distributions" + (f" (KS D = {ks:.3f})" if ks is not None else ""))
    if ax.has_data():
        ax.legend(fontsize=8)
    return save_figure(fig, path)
