"""Tests of samadapt.data.build (raster + polygons -> dataset) and samadapt.data.hf (Hugging Face -> dataset)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from affine import Affine
from PIL import Image
from rasterio.crs import CRS

from helpers.cli import run_cli
from helpers.rasters import UTM, write_geotiff
from helpers.realdata import shared_data
from samadapt.data import (
    IGNORE_INDEX,
    SegDataset,
    build_from_vectors,
    check_dataset,
    from_hf_dataset,
)
from samadapt.errors import InputError, OutputExistsError
from samadapt.imagery.tiling import tile_offsets

H, W = 300, 260
TRANSFORM = Affine(2.0, 0.0, 740_000.0, 0.0, -2.0, 3_740_000.0)
NODATA = -1
ALBERS = "+proj=aea +lat_0=23 +lon_0=-96 +lat_1=29.5 +lat_2=45.5 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"


def scene_bands() -> np.ndarray:
    """(2, H, W) int16 bands whose top-left 64 x 64 pixels and a strip at row 150 are NODATA."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 3000, size=(2, H, W), dtype=np.int16)
    data[:, :64, :64] = NODATA
    data[:, 150, 100:140] = NODATA
    return data


def make_polygons(transform: Affine) -> list[shapely.Geometry]:
    """Blobs and boxes at random sub-pixel positions (in the raster's CRS), one overlapping another
    and one running past the right edge."""
    rng = np.random.default_rng(1)
    geoms = []
    for _ in range(12):
        col, row = rng.uniform(70, W - 20), rng.uniform(70, H - 20)
        x, y = transform @ (col, row)
        geoms.append(shapely.Point(x, y).buffer(rng.uniform(6, 30), quad_segs=5))
    x0, y0 = transform @ (200.3, 80.7)
    geoms.append(shapely.box(x0, y0 - 41.3, x0 + 200.0, y0))  # past the east edge
    x0, y0 = transform @ (90.2, 140.6)
    geoms.append(shapely.box(x0, y0 - 30.1, x0 + 60.7, y0))  # crosses the nodata strip
    return geoms


KINDS = ["shed", "house", "pond", "house", "shed", "pond", "house"] * 2


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path]:
    """A UTM raster and its polygons written in EPSG:4326 (so the build must reproject them)."""
    raster = write_geotiff(tmp_path / "scene.tif", scene_bands(), crs=UTM, transform=TRANSFORM, nodata=NODATA)
    frame = gpd.GeoDataFrame(
        {"kind": KINDS, "code": [3, 5, 7, 5, 3, 7, 5, 5, 7, 3, 5, 7, 3, 5]}, geometry=make_polygons(TRANSFORM), crs=UTM
    )
    vectors = tmp_path / "polygons.geojson"
    frame.to_crs("EPSG:4326").to_file(vectors, driver="GeoJSON")
    return raster, vectors


def burn_whole(
    raster: Path, vectors: Path, values: list[int] | None = None, *, all_touched: bool = False
) -> np.ndarray:
    """The whole raster burnt at once, the reference for the tiles; 255 where the raster is nodata."""
    with rasterio.open(raster) as src:
        frame = gpd.read_file(vectors).to_crs(src.crs.to_wkt())
        values = values or [1] * len(frame)
        labels = rasterio.features.rasterize(
            zip(frame.geometry, values, strict=False), out_shape=(src.height, src.width), transform=src.transform,
            all_touched=all_touched, dtype="uint8",
        )
        labels[src.dataset_mask() == 0] = IGNORE_INDEX
    return labels


def stitch(root: Path, raster: Path) -> tuple[np.ndarray, dict[str, tuple[int, int, int, int]]]:
    """Put the tiles' masks back into the raster's grid using each tile's own transform.

    Returns the stitched mask (0 where no tile was written) and stem -> (row, col, h, w).
    """
    ds = SegDataset.open(root)
    with rasterio.open(raster) as src:
        T, shape = src.transform, (src.height, src.width)
    out = np.zeros(shape, dtype=np.uint8)
    placed = {}
    for stem in ds.stems():
        with rasterio.open(ds.mask_path(stem)) as m, rasterio.open(ds.image_path(stem)) as im:
            assert m.transform == im.transform and m.crs == im.crs
            t = m.transform
            col, row = (t.c - T.c) / T.a, (t.f - T.f) / T.e
            assert col == int(col) and row == int(row)
            r, c = int(row), int(col)
            assert t == T @ Affine.translation(c, r)
            out[r : r + m.height, c : c + m.width] = m.read(1)
            placed[stem] = (r, c, m.height, m.width)
    return out, placed


def test_tile_offsets() -> None:
    assert tile_offsets(300, 100, 0) == [0, 100, 200]
    assert tile_offsets(301, 100, 0) == [0, 100, 200, 300]
    assert tile_offsets(300, 100, 30) == [0, 70, 140, 210]
    assert tile_offsets(50, 100, 0) == [0]


def test_tiles_equal_the_whole_raster_burnt_at_once(scene: tuple[Path, Path], tmp_path: Path) -> None:
    raster, vectors = scene
    out = build_from_vectors(raster, vectors, tmp_path / "ds", tile_size=64, keep_empty=True)
    expected = burn_whole(raster, vectors)
    got, placed = stitch(out, raster)
    # every tile but the all-nodata top-left one is written; edge tiles are cut short, not padded
    assert "scene_r000_c000" not in placed
    assert len(placed) == 5 * 5 - 1
    assert placed["scene_r256_c256"] == (256, 256, 44, 4)
    expected[:64, :64] = 0  # the skipped tile
    np.testing.assert_array_equal(got, expected)
    assert (got == IGNORE_INDEX).sum() == 40  # the nodata strip; the skipped tile is not in the dataset

    with rasterio.open(raster) as src, rasterio.open(out / "images" / "scene_r128_c064.tif") as tile:
        assert (tile.count, tile.dtypes[0], tile.nodata) == (2, "int16", NODATA)
        assert tile.crs == src.crs and tile.transform == src.transform @ Affine.translation(64, 128)
        window = rasterio.windows.Window(64, 128, 64, 64)
        np.testing.assert_array_equal(tile.read(), src.read(window=window))
    assert json.loads((out / "classes.json").read_text()) == {"0": "background", "1": "object"}
    report = check_dataset(out)
    assert report.ok, report.problems
    assert report.sizes[(64, 64)] == 15 and report.sizes[(44, 4)] == 1


def test_overlap_tiles_and_empty_tiles_skipped(scene: tuple[Path, Path], tmp_path: Path) -> None:
    raster, vectors = scene
    out = build_from_vectors(raster, vectors, tmp_path / "ds", tile_size=100, overlap=30, all_touched=True)
    expected = burn_whole(raster, vectors, all_touched=True)
    _, placed = stitch(out, raster)
    ds = SegDataset.open(out)
    for stem, (r, c, h, w) in placed.items():
        np.testing.assert_array_equal(ds.read_mask(stem), expected[r : r + h, c : c + w])
    starts = tile_offsets(H, 100, 30), tile_offsets(W, 100, 30)
    labelled = {
        (r, c) for r in starts[0] for c in starts[1]
        if ((expected[r : r + 100, c : c + 100] > 0) & (expected[r : r + 100, c : c + 100] < IGNORE_INDEX)).any()
    }
    assert {(r, c) for r, c, _, _ in placed.values()} == labelled
    assert len(labelled) < len(starts[0]) * len(starts[1])  # some tiles had no polygon and were skipped


def test_class_field(scene: tuple[Path, Path], tmp_path: Path) -> None:
    raster, vectors = scene
    # strings numbered 1..K in sorted order
    out = build_from_vectors(raster, vectors, tmp_path / "a", tile_size=128, class_field="kind")
    assert SegDataset.open(out).classes == {0: "background", 1: "house", 2: "pond", 3: "shed"}
    ids = {"house": 1, "pond": 2, "shed": 3}
    expected = burn_whole(raster, vectors, [ids[k] for k in KINDS])
    got, _ = stitch(out, raster)
    covered = got > 0
    np.testing.assert_array_equal(got[covered], expected[covered])
    assert set(np.unique(got)) == {0, 1, 2, 3, IGNORE_INDEX}
    # an explicit mapping, merging two values into one class
    out = build_from_vectors(
        raster, vectors, tmp_path / "b", tile_size=128, class_field="kind", classes={"house": 1, "shed": 1, "pond": 4}
    )
    assert SegDataset.open(out).classes == {0: "background", 1: "house, shed", 4: "pond"}
    got, _ = stitch(out, raster)
    merged = {"house": 1, "pond": 4, "shed": 1}
    np.testing.assert_array_equal(got[covered], burn_whole(raster, vectors, [merged[k] for k in KINDS])[covered])
    # integer fields are ids already, or mapped by their text
    out = build_from_vectors(raster, vectors, tmp_path / "c", tile_size=128, class_field="code")
    assert SegDataset.open(out).classes == {0: "background", 3: "3", 5: "5", 7: "7"}
    assert check_dataset(out).ok
    out = build_from_vectors(
        raster, vectors, tmp_path / "d", tile_size=128, class_field="code", classes={"3": 2, "5": 1, "7": 2}
    )
    assert SegDataset.open(out).classes == {0: "background", 1: "5", 2: "3, 7"}
    assert set(np.unique(stitch(out, raster)[0])) == {0, 1, 2, IGNORE_INDEX}


def test_build_errors(scene: tuple[Path, Path], tmp_path: Path) -> None:
    raster, vectors = scene
    fields = r"class_field 'type' is not a field of .*polygons.geojson; its fields are: kind, code"
    with pytest.raises(InputError, match=fields):
        build_from_vectors(raster, vectors, tmp_path / "x", class_field="type")
    with pytest.raises(InputError, match=r"values 'pond', 'shed' of field 'kind' are not in classes"):
        build_from_vectors(raster, vectors, tmp_path / "x", class_field="kind", classes={"house": 1})
    with pytest.raises(InputError, match="give class_field too"):
        build_from_vectors(raster, vectors, tmp_path / "x", classes={"house": 1})
    with pytest.raises(InputError, match="tile_size=0"):
        build_from_vectors(raster, vectors, tmp_path / "x", tile_size=0)
    with pytest.raises(InputError, match="overlap=64"):
        build_from_vectors(raster, vectors, tmp_path / "x", tile_size=64, overlap=64)
    with pytest.raises(InputError, match="band 3 does not exist: scene.tif has 2 band"):
        build_from_vectors(raster, vectors, tmp_path / "x", bands=(3,))
    far = tmp_path / "far.geojson"
    gpd.read_file(vectors).to_crs(UTM).translate(xoff=50_000).to_file(far, driver="GeoJSON")
    with pytest.raises(InputError, match=r"do not overlap scene.tif \(bounds 740000, 3.7394e\+06, 740520, 3.74e\+06\)"):
        build_from_vectors(raster, far, tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing is left behind by a failed build
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_out_dir_protection(scene: tuple[Path, Path], tmp_path: Path) -> None:
    raster, vectors = scene
    out = build_from_vectors(raster, vectors, tmp_path / "ds", tile_size=128)
    with pytest.raises(OutputExistsError, match="exists; pass --overwrite to replace the dataset it holds"):
        build_from_vectors(raster, vectors, out, tile_size=128)
    build_from_vectors(raster, vectors, out, tile_size=128, bands=(2,), overwrite=True)
    with rasterio.open(next((out / "images").iterdir())) as tile:
        assert tile.count == 1
    # a file the user added to a built dataset makes it theirs: refused, never deleted
    (out / "masks" / "mine.tif").write_bytes(b"drawn by hand")
    added = r"holds a dataset samadapt wrote, but files were added to it or changed since \(masks/mine.tif\)"
    with pytest.raises(OutputExistsError, match=added):
        build_from_vectors(raster, vectors, out, tile_size=128, overwrite=True)
    assert (out / "masks" / "mine.tif").read_bytes() == b"drawn by hand"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.docx").write_text("precious")
    with pytest.raises(OutputExistsError, match=r"holds files samadapt did not write as a dataset \(thesis.docx\)"):
        build_from_vectors(raster, vectors, mine, overwrite=True)
    assert (mine / "thesis.docx").read_text() == "precious"


def test_crs_without_epsg_code(tmp_path: Path) -> None:
    transform = Affine(30.0, 0.0, -673_425.0, 0.0, -30.0, 2_130_165.0)
    raster = write_geotiff(tmp_path / "albers.tif", scene_bands(), crs=ALBERS, transform=transform, nodata=NODATA)
    with rasterio.open(raster) as src:
        assert src.crs.to_epsg() is None
    frame = gpd.GeoDataFrame({"id": range(14)}, geometry=make_polygons(transform), crs=ALBERS)
    vectors = tmp_path / "lonlat.gpkg"
    frame.to_crs("EPSG:4326").to_file(vectors, driver="GPKG")
    out = build_from_vectors(raster, vectors, tmp_path / "ds", tile_size=100)
    got, placed = stitch(out, raster)
    expected = burn_whole(raster, vectors)
    for r, c, h, w in placed.values():
        np.testing.assert_array_equal(got[r : r + h, c : c + w], expected[r : r + h, c : c + w])
    with rasterio.open(out / "masks" / f"{next(iter(placed))}.tif") as m:
        assert m.crs.to_epsg() is None and CRS.from_string(ALBERS) == m.crs


def test_geojson_in_metres_without_crs_member(tmp_path: Path) -> None:
    """GeoJSON holding projected coordinates but no "crs" member is read as lon/lat; it must still work."""
    transform = Affine(30.0, 0.0, -673_425.0, 0.0, -30.0, 2_130_165.0)
    raster = write_geotiff(tmp_path / "albers.tif", scene_bands(), crs=ALBERS, transform=transform, nodata=NODATA)
    doc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(g)}
            for g in make_polygons(transform)
        ],
    }
    vectors = tmp_path / "metres.geojson"
    vectors.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="are not degrees; they are taken to be in the raster's CRS"):
        out = build_from_vectors(raster, vectors, tmp_path / "a", tile_size=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = build_from_vectors(raster, vectors, tmp_path / "b", tile_size=100, vector_crs=ALBERS)
    np.testing.assert_array_equal(stitch(out, raster)[0], stitch(same, raster)[0])
    assert stitch(out, raster)[0].max() > 0


@pytest.mark.realdata
def test_atlanta_buildings(tmp_path: Path) -> None:
    folder = shared_data("spacenet_geotiff", "atlanta_buildings")
    raster, vectors = folder / "sample_geotiff.tif", folder / "geotiff_labels.geojson"
    out = build_from_vectors(raster, vectors, tmp_path / "atlanta", tile_size=256)
    report = check_dataset(out)
    assert report.ok, report.problems
    got, placed = stitch(out, raster)
    expected = burn_whole(raster, vectors)
    np.testing.assert_array_equal(got, expected)  # the tiles add up to the whole raster burnt at once
    # The burnt area matches the polygons' area (0.25 m2 pixels), to within the pixel-edge rounding.
    area = gpd.read_file(vectors).clip(shapely.box(733601.0, 3724689.0, 734051.0, 3725139.0)).area.sum()
    assert abs((got == 1).sum() * 0.25 - area) / area < 0.01
    # sample_fp_mask.tif in the same folder is NOT a rasterisation of these 43 polygons (it comes from a
    # different label set of solaris' fixtures: IoU 0.04 with them), so it cannot serve as the reference.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # a plain 0/255 image
        with rasterio.open(folder / "sample_fp_mask.tif") as fp:
            footprint = fp.read(1) > 0
    assert ((got == 1) != footprint).mean() > 0.1
    with rasterio.open(out / "images" / "sample_geotiff_r256_c512.tif") as tile:
        assert tile.crs.to_epsg() == 32616 and tile.dtypes[0] == "uint16"
        assert tile.transform == Affine(0.5, 0.0, 733601.0 + 256, 0.0, -0.5, 3725139.0 - 128)


@pytest.mark.realdata
def test_custom_albers_landsat(tmp_path: Path) -> None:
    folder = shared_data("spacenet_geotiff", "custom_proj_landsat")
    raster, vectors = folder / "sample_geotiff_custom_proj.tif", folder / "geotiff_custom_proj_labels.geojson"
    # the GeoJSON has no "crs" member but holds Albers metres: taken as the raster's CRS, with a warning
    with pytest.warns(UserWarning, match="not degrees"):
        out = build_from_vectors(raster, vectors, tmp_path / "landsat", tile_size=128)
    report = check_dataset(out)
    assert report.ok, report.problems
    got, placed = stitch(out, raster)
    with rasterio.open(raster) as src:
        frame = gpd.read_file(vectors)
        expected = rasterio.features.rasterize(
            zip(frame.geometry, [1] * len(frame), strict=False), out_shape=src.shape, transform=src.transform,
            dtype="uint8",
        )
        east = frame.total_bounds[2] > src.bounds.right
        crs = src.crs
    assert east  # the polygons run past the east edge and are clipped to the raster
    for r, c, h, w in placed.values():
        np.testing.assert_array_equal(got[r : r + h, c : c + w], expected[r : r + h, c : c + w])
    assert (got == 1).sum() == (expected == 1).sum()  # every labelled pixel is in some tile
    with rasterio.open(out / "masks" / f"{next(iter(placed))}.tif") as m:
        assert m.crs == crs and m.crs.to_epsg() is None


# --- Hugging Face datasets -------------------------------------------------------------


def test_hf_missing_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes "import datasets" fail
    with pytest.raises(ModuleNotFoundError, match=r"pip install samadapt\[hf\]"):
        from_hf_dataset(tmp_path / "saved", tmp_path / "out")


def _hf_rows(n: int, seed: int, mask_key: str, *, palette: bool = False) -> dict[str, list[object]]:
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        images.append(Image.fromarray(rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)))
        ids = rng.integers(0, 3, size=(9, 11), dtype=np.uint8)
        mask = Image.fromarray(ids)
        if palette:  # colours for display, indices = class ids
            mask = Image.frombytes("P", (11, 9), ids.tobytes())
            mask.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
        masks.append(mask)
    return {"image": images, mask_key: masks}


def test_from_hf_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    datasets = pytest.importorskip("datasets")

    def part(n: int, seed: int) -> object:
        rows = _hf_rows(n, seed, "label")
        ds = datasets.Dataset.from_dict(rows)
        return ds.cast_column("image", datasets.Image()).cast_column("label", datasets.Image())

    saved = tmp_path / "saved"
    datasets.DatasetDict(train=part(3, 0), validation=part(2, 1)).save_to_disk(str(saved))
    out = from_hf_dataset(saved, tmp_path / "ds")
    ds = SegDataset.open(out)
    assert ds.stems("train") == ["train_0", "train_1", "train_2"]
    assert ds.stems("val") == ["validation_0", "validation_1"]
    assert ds.classes == {0: "background", 1: "class 1", 2: "class 2"}
    expected = _hf_rows(2, 1, "label")
    np.testing.assert_array_equal(ds.read_image("validation_1").pixels, np.asarray(expected["image"][1]))
    np.testing.assert_array_equal(ds.read_mask("validation_1"), np.asarray(expected["label"][1]))
    assert check_dataset(out).ok
    # the command replaces the dataset it wrote only with --overwrite, and a user's folder never
    command = ["data", "from-hf", str(saved), "--out"]
    code, text = run_cli([*command, str(out)], monkeypatch, capsys)
    assert code == 2 and "exists; pass --overwrite to replace the dataset it holds" in text, text
    code, text = run_cli([*command, str(out), "--overwrite"], monkeypatch, capsys)
    assert code == 0 and SegDataset.open(out).stems("val") == ["validation_0", "validation_1"], text
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("x")
    code, text = run_cli([*command, str(tmp_path / "mine"), "--overwrite"], monkeypatch, capsys)
    assert code == 2 and "did not write as a dataset (thesis.txt)" in text, text
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "x"

    only = from_hf_dataset(saved, tmp_path / "only", split="validation", classes={0: "bg", 1: "a", 2: "b"})
    assert SegDataset.open(only).stems() == ["validation_0", "validation_1"]
    with pytest.raises(InputError, match="split 'dev' is not in .*; its splits are: train, validation"):
        from_hf_dataset(saved, tmp_path / "x", split="dev")
    with pytest.raises(InputError, match="mask column 'seg' is not in the dataset; its columns are: image, label"):
        from_hf_dataset(saved, tmp_path / "x", mask_column="seg")

    plain = tmp_path / "plain"
    rows = _hf_rows(2, 2, "annotation", palette=True)
    rows["notes"] = ["a", "b"]
    columns = {"pixel_values": rows["image"], "annotation": rows["annotation"]}
    datasets.Dataset.from_dict(columns).cast_column("annotation", datasets.Image()).save_to_disk(str(plain))
    out = from_hf_dataset(plain, tmp_path / "plain-ds", image_format="tif")  # columns found among the usual names
    assert SegDataset.open(out).stems() == ["0", "1"]
    np.testing.assert_array_equal(SegDataset.open(out).read_mask("1"), np.asarray(rows["annotation"][1]))
    weird = tmp_path / "weird"
    datasets.Dataset.from_dict({"picture": rows["image"], "notes": rows["notes"]}).save_to_disk(str(weird))
    with pytest.raises(InputError, match="found no image column among picture, notes"):
        from_hf_dataset(weird, tmp_path / "x")
