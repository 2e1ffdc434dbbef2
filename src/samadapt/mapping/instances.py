"""Instance ids for mapped rasters: one id per object, stable across tiles.

``predict --instances`` writes ``<stem>_instances.tif`` beside the class raster: uint32, 0 = no
object, ``4294967295`` (the dataset's nodata) where the class raster is nodata, and one id per
object, 1..N.

* **Adapter (semantic) mapping**: an object is a **4-connected** component of one class (class 0,
  background, and nodata are no object): pixels sharing an edge belong to one object, pixels
  touching only at a corner do not, so each object is exactly one polygon of
  ``<stem>_polygons.gpkg`` (whose outlines are 4-connected too). Objects of different classes are
  different instances, even when they touch. The raster is read by bands of rows; components cut
  by a band edge are joined with a union-find over the seam, so memory stays bounded by a band
  and an object cut by tile (or band) edges keeps one id.
* **Order**: ids follow each object's first pixel in raster scan order (row by row, top to
  bottom, left to right), so they do not depend on tiles, bands or the machine.
* **Text mapping** (``--text``): each merged detection (its pieces in several tiles joined, as
  :func:`samadapt.mapping.text.merge_pieces` joins them) is one instance; see
  :func:`rasterize_objects`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.windows import Window

if TYPE_CHECKING:
    import geopandas as gpd
    import shapely
    from affine import Affine

#: The instance raster's nodata value (pixels that are nodata in the class raster).
INSTANCE_NODATA = np.iinfo(np.uint32).max
#: Class raster value of nodata (as :mod:`samadapt.mapping.runner` writes it).
CLASS_NODATA = 255
#: Rows read at once: a band costs some 30 bytes a pixel while labelled (int64 labels and their masks).
BAND_ROWS = 256
_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
_EIGHT = np.ones((3, 3), dtype=bool)


def _label_band(classes: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Components of each object class of a band, numbered 1..n by their first pixel in scan order."""
    from scipy import ndimage

    structure = _FOUR if connectivity == 4 else _EIGHT
    out = np.zeros(classes.shape, dtype=np.int64)
    count = 0
    for value in np.unique(classes):
        if value == 0 or value == CLASS_NODATA:
            continue
        labels, n = ndimage.label(classes == value, structure=structure)
        out[labels > 0] = labels[labels > 0] + count
        count += n
    if count == 0:
        return out, 0
    flat = out.ravel()
    ids, first = np.unique(flat, return_index=True)
    keep = ids > 0
    ids, first = ids[keep], first[keep]
    rank = np.zeros(count + 1, dtype=np.int64)
    rank[ids[np.argsort(first)]] = np.arange(1, len(ids) + 1)
    return rank[out], count


def _bands(height: int, rows: int) -> Iterator[tuple[int, int]]:
    for r0 in range(0, height, rows):
        yield r0, min(rows, height - r0)


def _seam_pairs(above: np.ndarray, above_cls: np.ndarray, below: np.ndarray, below_cls: np.ndarray,
                connectivity: int) -> np.ndarray:
    """(k, 2) pairs of labels of the last row of a band and the first row of the next that touch."""
    pairs = []
    shifts = (0,) if connectivity == 4 else (-1, 0, 1)
    width = above.shape[0]
    for s in shifts:
        a = slice(max(0, s), width + min(0, s))
        b = slice(max(0, -s), width + min(0, -s))
        same = (above[a] > 0) & (below[b] > 0) & (above_cls[a] == below_cls[b])
        pairs.append(np.stack([above[a][same], below[b][same]], axis=1))
    return np.unique(np.concatenate(pairs), axis=0) if pairs else np.zeros((0, 2), dtype=np.int64)


def label_instances(classes_path: Path, out_path: Path, *, connectivity: int = 4, rows: int = BAND_ROWS,
                    profile: dict[str, Any] | None = None) -> dict[int, int]:
    """Write the instance raster of a class raster (see the module docstring).

    Two passes over bands of ``rows`` rows: the first labels each band and joins labels across
    band seams (union-find); the second labels each band again, identically, and writes the final
    ids. Nothing the size of the raster is held in memory.

    Args:
        classes_path: a class raster (uint8, 0 = background, 255 = nodata).
        out_path: the uint32 GeoTIFF to write (in the class raster's grid and CRS).
        connectivity: 4 (edge neighbours, the default) or 8 (corner neighbours too).
        rows: rows per band.
        profile: GeoTIFF creation settings to add (e.g. tiling); the class raster's otherwise.

    Returns:
        The class of each instance id.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    parent: list[int] = [0]
    offsets: list[int] = []
    first_class: list[int] = [0]

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    with rasterio.open(classes_path) as src:
        height, width = src.height, src.width
        prev: tuple[np.ndarray, np.ndarray] | None = None
        total = 0
        for r0, n in _bands(height, rows):
            cls = src.read(1, window=Window(0, r0, width, n))
            labels, count = _label_band(cls, connectivity)
            labels[labels > 0] += total
            offsets.append(total)
            parent.extend(range(total + 1, total + count + 1))
            first_class.extend([0] * count)
            if count:
                flat_labels, flat_cls = labels.ravel(), cls.ravel()
                ids, where = np.unique(flat_labels, return_index=True)
                for i, w in zip(ids.tolist(), where.tolist(), strict=True):
                    if i:
                        first_class[i] = int(flat_cls[w])
            if prev is not None:
                for a, b in _seam_pairs(prev[0], prev[1], labels[0], cls[0], connectivity).tolist():
                    ra, rb = root(a), root(b)
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)  # the root stays the earliest label
            prev = (labels[-1].copy(), cls[-1].copy())
            total += count
        roots = np.array([root(i) for i in range(total + 1)], dtype=np.int64)
        final = np.zeros(total + 1, dtype=np.int64)
        unique_roots = np.unique(roots[1:])  # the root of a set is its earliest label: scan order
        final[unique_roots] = np.arange(1, len(unique_roots) + 1)
        lookup = final[roots].astype(np.uint32)
        meta = {**src.profile, "dtype": "uint32", "nodata": int(INSTANCE_NODATA), "count": 1, **(profile or {})}
        with rasterio.open(out_path, "w", **meta) as dst:
            for (r0, n), offset in zip(_bands(height, rows), offsets, strict=True):
                cls = src.read(1, window=Window(0, r0, width, n))
                labels, _ = _label_band(cls, connectivity)
                labels[labels > 0] += offset
                ids = lookup[labels]
                ids[cls == CLASS_NODATA] = INSTANCE_NODATA
                dst.write(ids, 1, window=Window(0, r0, width, n))
    return {int(final[r]): first_class[int(r)] for r in unique_roots}


def write_instances(classes_path: Path, out_path: Path, scratch: Path, *, cog: bool = False,
                    connectivity: int = 4) -> Path:
    """:func:`label_instances` into ``out_path`` through a temporary file renamed when complete
    (a Cloud-Optimised GeoTIFF copied from a plain one in ``scratch`` when ``cog``)."""
    import rasterio.shutil

    from samadapt._io import atomic_file

    with atomic_file(out_path) as tmp:
        if not cog:
            label_instances(classes_path, tmp, connectivity=connectivity)
        else:
            plain = Path(scratch) / out_path.name
            label_instances(classes_path, plain, connectivity=connectivity)
            rasterio.shutil.copy(plain, tmp, driver="COG", compress="deflate")
            plain.unlink(missing_ok=True)
    return out_path


def ids_at_points(instances_path: Path, geometries: Sequence[shapely.Geometry]) -> list[int]:
    """The instance id under a point inside each polygon (its representative point), 0 when none.

    Polygons must be the unsimplified pixel outlines vectorised from the class raster, so the
    point lies inside one of its pixels.
    """
    if not len(geometries):
        return []
    points = [g.representative_point() for g in geometries]
    with rasterio.open(instances_path) as ds:
        values = [int(v[0]) for v in ds.sample([(p.x, p.y) for p in points], indexes=1)]
    return [0 if v == INSTANCE_NODATA else v for v in values]


def rasterize_objects(geometries: Sequence[shapely.Geometry], scores: Sequence[float], out_path: Path, *,
                      height: int, width: int, crs: Any, transform: Affine, rows: int = BAND_ROWS) -> None:
    """Write an instance raster from objects given as polygons in raster pixels (x = column, y = row).

    Object ``i`` gets id ``i + 1``; where objects overlap, the pixel goes to the best-scored one.
    Written by bands of ``rows`` rows, each burning only the objects it meets.

    Args:
        geometries: the objects' (Multi)Polygons in raster pixel coordinates.
        scores: each object's score.
        out_path: the GeoTIFF to write.
        height, width: the raster's size.
        crs, transform: the raster's CRS and transform, recorded in the GeoTIFF.
        rows: rows per band.
    """
    import shapely
    from affine import Affine as _Affine
    from rasterio.features import rasterize

    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")  # best last: it wins
    geoms = np.array(geometries, dtype=object)
    tree = shapely.STRtree(geoms) if len(geoms) else None
    tiled = height >= 256 and width >= 256
    meta: dict[str, Any] = {"driver": "GTiff", "height": height, "width": width, "count": 1, "dtype": "uint32",
                            "crs": crs, "transform": transform, "compress": "deflate", "tiled": tiled,
                            **({"blockxsize": 256, "blockysize": 256} if tiled else {})}
    with rasterio.open(out_path, "w", **meta) as dst:
        for r0, n in _bands(height, rows):
            out = np.zeros((n, width), dtype=np.uint32)
            if tree is not None:
                hits = set(tree.query(shapely.box(0, r0, width, r0 + n)).tolist())
                shapes = [(geoms[i], int(i) + 1) for i in order.tolist() if i in hits]
                if shapes:
                    out = rasterize(shapes, out_shape=(n, width), transform=_Affine.translation(0, r0),
                                    fill=0, dtype="uint32")
            dst.write(out, 1, window=Window(0, r0, width, n))


def with_instance_ids(frame: gpd.GeoDataFrame, ids: Sequence[int]) -> gpd.GeoDataFrame:
    """``frame`` with an ``instance_id`` column (int64) after ``class``."""
    frame = frame.copy()
    at = list(frame.columns).index("class") + 1 if "class" in frame.columns else 0
    frame.insert(at, "instance_id", np.asarray(ids, dtype=np.int64))
    return frame
