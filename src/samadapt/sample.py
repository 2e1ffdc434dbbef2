"""A generated Mars-like terrain GeoTIFF with pits, for the demo and the tests.

The raster imitates a HiRISE RED product: 16-bit grey, 0.25 m pixels, a nodata strip on
one edge, in Mars' own equirectangular CRS (IAU_2015:49910). Pits are dark, shaded
depressions whose true masks and boxes are returned, so results can be scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy import ndimage

from samadapt._io import atomic_file

MARS_CRS = "IAU_2015:49910"
MARS_RADIUS_M = 3396190.0
NODATA = 0


@dataclass(frozen=True)
class MarsSample:
    """The generated raster and its truth.

    Attributes:
        path: the GeoTIFF.
        boxes: (K, 4) XYXY pixel boxes of the pits.
        masks: (K, H, W) bool true masks of the pits.
    """

    path: Path
    boxes: np.ndarray
    masks: np.ndarray


def mars_terrain(size: int, n_pits: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mars-like 10-bit terrain with pits: (size, size) uint16 data, (K, size, size) masks, (K, 4) boxes."""
    terrain = ndimage.gaussian_filter(rng.normal(size=(size, size)), max(size / 26, 2)) * 40
    terrain += ndimage.gaussian_filter(rng.normal(size=(size, size)), 3) * 6
    yy, xx = np.mgrid[0:size, 0:size]
    terrain += (xx + yy) / size * 4
    image = 560 + terrain * 25
    masks: list[np.ndarray] = []
    boxes: list[list[int]] = []  # XYXY pixel edges
    tries = 0
    while len(masks) < n_pits and tries < 200:
        tries += 1
        r = rng.uniform(size * 0.03, size * 0.08)
        cx, cy = rng.uniform(r + 30, size - r - 30, size=2)
        if any(np.hypot(cx - (b[0] + b[2]) / 2, cy - (b[1] + b[3]) / 2) < r + (b[2] - b[0]) / 2 + 20 for b in boxes):
            continue
        ax = r * rng.uniform(0.75, 1.25)
        d = np.hypot((xx - cx) / ax, (yy - cy) / r)
        mask = d <= 1.0
        # dark floor, a lit wall facing the sun (west) and a shadowed one
        shade = np.clip(1.0 - d, 0, 1)
        image = np.where(mask, image * (0.45 + 0.25 * (1 - shade)) + 90 * np.clip((xx - cx) / ax, -1, 1), image)
        masks.append(mask)
        ys, xs = np.nonzero(mask)
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
    image += rng.normal(scale=12, size=image.shape)
    data = np.clip(image, 1, 1023).astype(np.uint16)  # 10-bit range, 0 kept for nodata
    mask_arr = np.stack(masks) if masks else np.zeros((0, size, size), bool)
    return data, mask_arr, np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _write_mars_tif(path: Path, data: np.ndarray, west: float, north: float) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp, rasterio.open(
        tmp, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype="uint16",
        crs=CRS.from_user_input(MARS_CRS), transform=from_origin(west, north, 0.25, 0.25), nodata=NODATA,
        compress="deflate",
    ) as dst:
        dst.write(data, 1)
    return path


_WEST = np.deg2rad(-120.5) * MARS_RADIUS_M  # near Arsia Mons
_NORTH = np.deg2rad(-9.2) * MARS_RADIUS_M


def make_mars_sample(path: Path, *, size: int = 640, n_pits: int = 5, seed: int = 0) -> MarsSample:
    """Write a Mars-like uint16 GeoTIFF with ``n_pits`` pits and return it with its truth."""
    data, masks, boxes = mars_terrain(size, n_pits, np.random.default_rng(seed))
    data[:, : size // 40] = NODATA  # a nodata strip, as at the edge of a map-projected strip
    masks[:, :, : size // 40] = False
    path = _write_mars_tif(path, data, _WEST, _NORTH)
    return MarsSample(path=path, boxes=boxes, masks=masks)


def make_mars_dataset(root: Path, *, n_images: int = 6, size: int = 256, seed: int = 0) -> Path:
    """Write a small dataset (images/ GeoTIFFs, masks/ with pits = 1, splits.json, classes.json)."""
    import json

    from samadapt.mapping.outputs import write_mask_geotiff

    root = Path(root)
    rng = np.random.default_rng(seed)
    stems = []
    for i in range(n_images):
        data, masks, _ = mars_terrain(size, int(rng.integers(2, 5)), rng)
        stem = f"mars_{i:03d}"
        west = _WEST + i * size * 0.25
        _write_mars_tif(root / "images" / f"{stem}.tif", data, west, _NORTH)
        write_mask_geotiff(root / "masks" / f"{stem}.tif", np.asarray(masks.any(axis=0), dtype=np.uint8),
                           crs=CRS.from_user_input(MARS_CRS), transform=from_origin(west, _NORTH, 0.25, 0.25),
                           valid=None, overwrite=True)
        stems.append(stem)
    n_test = max(1, n_images // 3)
    splits = {"train": stems[: n_images - 2 * n_test] or stems[:1],
              "val": stems[n_images - 2 * n_test : n_images - n_test], "test": stems[n_images - n_test :]}
    (root / "splits.json").write_text(json.dumps(splits, indent=2))
    (root / "classes.json").write_text(json.dumps({"0": "background", "1": "pit"}, indent=2))
    return root
