"""Mapping whole rasters: tiles, blending, CRS and transform kept, resumable, failures isolated."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from helpers.cli import run_cli
from helpers.decoders import box_decoder
from helpers.rasters import write_geotiff
from helpers.realdata import shared_data
from samadapt.errors import InputError
from samadapt.imagery.preprocess import Preprocessing
from samadapt.imagery.windows import raster_limits, read_tile
from samadapt.mapping.tiled import (
    MapOptions,
    blend_window,
    predict_raster,
    predict_rasters,
)
from samadapt.methods import build_method
from samadapt.models.loading import load_model
from samadapt.train.adapter import Prediction, load_adapter, save_adapter

GRID = from_origin(500000.0, 4000000.0, 0.5, 0.8)  # 0.5 m x 0.8 m pixels, in UTM unless a test says otherwise


class PixelAdapter:
    """A stand-in adapter whose probability is a pixelwise function of brightness.

    Its prediction at a pixel does not depend on the tile it comes from, so a correct tiled
    mapping must give exactly the untiled result, and a shape crossing tile edges must come
    out whole.
    """

    bands = None

    def __init__(self, tile: int = 64) -> None:
        self.method = SimpleNamespace(num_classes=2, preprocessing=Preprocessing(size=tile))
        self.calls = 0

    def predict_sample(self, sample):
        self.calls += 1
        p = sample.pixels[:, :, 0].astype(np.float32) / 255.0
        labels = (p > 0.5).astype(np.uint8)
        labels[~sample.valid] = 255
        return Prediction(labels=labels, probabilities=np.stack([1 - p, p]))


def _disc_image(h: int = 150, w: int = 230) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    img = np.full((h, w), 60, np.uint8)
    img[(xx - 100) ** 2 + (yy - 70) ** 2 < 45**2] = 220  # crosses the tile edges at 64 and 128
    img[:, :6] = 0  # nodata border
    return img


def test_tiled_equals_untiled_and_keeps_georeferencing(tmp_path: Path) -> None:
    raster = write_geotiff(tmp_path / "scene.tif", _disc_image(), transform=GRID, nodata=0)
    ad = PixelAdapter(tile=64)
    result = predict_raster(ad, raster, tmp_path / "out", MapOptions(overlap=16, probabilities=True))
    assert result.tiles > 4 and ad.calls == result.tiles
    with rasterio.open(raster) as src, rasterio.open(result.outputs["classes"]) as out:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
        labels = out.read(1)
    img = _disc_image()
    expected = (img > 127).astype(np.uint8)
    expected[img == 0] = 255
    np.testing.assert_array_equal(labels, expected)
    frame = gpd.read_file(result.outputs["polygons"])
    assert len(frame) == 1 and frame.crs.to_epsg() == 32616  # one disc, one polygon, across 6 tiles
    assert frame["area"].iloc[0] == pytest.approx((expected == 1).sum() * 0.5 * 0.8, rel=1e-6)
    assert frame["mean_probability"].iloc[0] > 0.8


def test_one_tile_raster_equals_the_adapter_on_the_whole_image(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (3, 200, 180), dtype=np.uint8)
    raster = write_geotiff(tmp_path / "small.tif", data, transform=GRID)
    method = build_method("domain-decoder", load_model(tiny_models["sam"]), width=16)
    ad = load_adapter(save_adapter(method, tmp_path / "ad"))
    result = predict_raster(ad, raster, tmp_path / "out", MapOptions(probabilities=True))
    assert result.tiles == 1
    whole = ad.predict(raster)
    with rasterio.open(result.outputs["classes"]) as out:
        np.testing.assert_array_equal(out.read(1), whole.labels)


def test_two_band_rasters_are_masked_as_read_image_masks_them(tmp_path: Path) -> None:
    """An unmarked 0/255 second band is alpha (nodata where 0); a second band of SAR data is not."""
    from samadapt.imagery.read import read_image

    grey = _disc_image()
    grey[:, :6] = 90  # no nodata value: validity comes from band 2 alone
    alpha = np.full_like(grey, 255)
    alpha[:, 200:] = 0
    raster = write_geotiff(tmp_path / "grey_alpha.tif", np.stack([grey, alpha]), transform=GRID)
    result = predict_raster(PixelAdapter(), raster, tmp_path / "out", MapOptions(polygons=None))
    with rasterio.open(result.outputs["classes"]) as out:
        classes = out.read(1)
    assert (classes[:, 200:] == 255).all() and (classes[:, :200] != 255).all()
    np.testing.assert_array_equal(classes != 255, read_image(raster).valid)

    rng = np.random.default_rng(0)
    sar = np.stack([rng.normal(-12, 3, grey.shape), rng.normal(-19, 3, grey.shape)]).astype(np.float32)
    raster = write_geotiff(tmp_path / "s1.tif", sar, transform=GRID)
    result = predict_raster(PixelAdapter(), raster, tmp_path / "out_sar", MapOptions(polygons=None))
    with rasterio.open(result.outputs["classes"]) as out:
        assert (out.read(1) != 255).all()


def test_rerun_skips_and_failures_are_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    good = [write_geotiff(tmp_path / f"g{i}.tif", _disc_image(), transform=GRID, nodata=0) for i in range(2)]
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    ad = PixelAdapter()
    results = predict_rasters(ad, [good[0], bad, good[1]], tmp_path / "out", MapOptions(polygons=None))
    assert [r.status for r in results] == ["done", "failed", "done"]
    assert "broken.tif" in results[1].error
    mtime = results[0].outputs["classes"].stat().st_mtime_ns
    again = predict_rasters(ad, good, tmp_path / "out", MapOptions(polygons=None))
    assert [r.status for r in again] == ["skipped", "skipped"]
    assert results[0].outputs["classes"].stat().st_mtime_ns == mtime
    assert not list((tmp_path / "out").glob(".*"))  # no scratch or temporary files left


def test_mars_crs_is_kept(tmp_path: Path) -> None:
    raster = write_geotiff(tmp_path / "mars.tif", _disc_image(), crs="IAU_2015:49910", transform=GRID, nodata=0)
    result = predict_raster(PixelAdapter(), raster, tmp_path / "out", MapOptions(polygons="geojson"))
    with rasterio.open(result.outputs["classes"]) as out:
        assert "Mars" in out.crs.to_wkt()
    assert "Mars" in gpd.read_file(result.outputs["polygons"]).crs.to_wkt()


def test_16_bit_scaling_is_raster_wide(tmp_path: Path) -> None:
    from samadapt.imagery.stretch import scale_to_uint8

    data = np.zeros((100, 200), np.uint16)
    data[:, :100] = np.linspace(100, 400, 100, dtype=np.uint16)[None]  # dark half
    data[:, 100:] = np.linspace(1000, 4000, 100, dtype=np.uint16)[None]  # bright half
    raster = write_geotiff(tmp_path / "u16.tif", data, transform=GRID)
    with rasterio.open(raster) as ds:
        limits = raster_limits(ds, (1, 1, 1))
        whole = scale_to_uint8(np.repeat(data[None], 3, 0), limits)
        for col in (0, 100):
            tile, _ = read_tile(ds, rasterio.windows.Window(col, 0, 100, 100), (1, 1, 1), limits)
            np.testing.assert_array_equal(tile[:, :, 0], whole[0, :, col : col + 100])
    assert whole[0, :, :100].max() < 60  # the dark half stays dark instead of being stretched per tile


def test_blend_window_is_smooth_and_positive() -> None:
    w = blend_window(64, 16)
    assert w.min() > 0 and w[32, 32] == 1.0 and w[0, 0] < 0.01
    assert np.all(np.diff(w[32, :32]) >= 0)


def test_predict_command(tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    method = build_method("domain-decoder", load_model(tiny_models["sam"]), width=16)
    ad = save_adapter(method, tmp_path / "ad")
    for i in range(2):
        write_geotiff(tmp_path / f"t{i}.tif", np.repeat(_disc_image()[None], 3, 0), transform=GRID, nodata=0)
    (tmp_path / "bad.tif").write_text("x")

    def cli(*args: str) -> tuple[int, str]:
        return run_cli(list(args), monkeypatch, capsys)

    code, text = cli("predict", str(ad), str(tmp_path / "t*.tif"), "--out", str(tmp_path / "maps"))
    assert code == 0, text
    assert (tmp_path / "maps" / "t0_classes.tif").is_file() and (tmp_path / "maps" / "t1_polygons.gpkg").is_file()
    # tiles are seen once: their embeddings (4 MB each with ViT-B) must not fill the disk cache
    from samadapt._home import embeddings_dir

    assert not list(embeddings_dir().rglob("*.safetensors"))
    code, text = cli("predict", str(ad), str(tmp_path / "t0.tif"), str(tmp_path / "bad.tif"), "--out",
                     str(tmp_path / "maps"))
    assert code == 1 and "skipped" in text and "failed" in text


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["atlanta_buildings/sample_geotiff.tif", "vegas_roads/road_mask_input.tif",
                                  "custom_proj_landsat", "rotterdam_ms_pan/ms1.tif"])
def test_real_geotiffs_map_and_keep_their_crs(name: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = shared_data("spacenet_geotiff", *name.split("/"))
    raster = folder if folder.is_file() else sorted(p for p in folder.glob("*.tif") if "mask" not in p.name)[0]
    method = build_method("domain-decoder", load_model(tiny_models["sam"]), width=16)
    ad = load_adapter(save_adapter(method, tmp_path / "ad"))
    result = predict_raster(ad, raster, tmp_path / "out", MapOptions(polygons=None))
    with rasterio.open(raster) as src, rasterio.open(result.outputs["classes"]) as out:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape


@pytest.mark.slow
def test_local_cluster_gives_identical_class_rasters(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("dask.distributed")
    from samadapt.mapping.tiled import dask_client

    raster = write_geotiff(tmp_path / "scene.tif", np.repeat(_disc_image(300, 420)[None], 3, 0),
                           transform=GRID, nodata=0)
    method = build_method("domain-decoder", load_model(tiny_models["sam"]), width=16)
    ad = load_adapter(save_adapter(method, tmp_path / "ad"))
    local = predict_raster(ad, raster, tmp_path / "local", MapOptions(polygons=None, overlap=32))
    client = dask_client("processes:2")
    try:
        distributed = predict_raster(ad, raster, tmp_path / "dask", MapOptions(polygons=None, overlap=32),
                                     client=client)
    finally:
        client.close()
    assert local.tiles == distributed.tiles > 1
    assert local.outputs["classes"].read_bytes() == distributed.outputs["classes"].read_bytes()
    with pytest.raises(Exception, match="processes:N|local"):
        dask_client("threads:3")


class _InlineClient:
    """Runs submitted tasks at once, in this process: what a Dask worker would run, without the cluster."""

    def submit(self, fn, *args, pure: bool = True):
        result = fn(*args)
        return SimpleNamespace(result=lambda: result, release=lambda: None)


def test_workers_run_the_encoder_runtime_asked_for(tiny_models: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    from samadapt.mapping import tiled as mapping

    monkeypatch.setattr(mapping, "_WORKER_ADAPTERS", {})
    raster = write_geotiff(tmp_path / "scene.tif", np.repeat(_disc_image(300, 420)[None], 3, 0),
                           transform=GRID, nodata=0)
    method = build_method("domain-decoder", load_model(tiny_models["sam"]), width=16)
    ad = load_adapter(save_adapter(method, tmp_path / "ad"), runtime="bf16,no-fused")
    local = predict_raster(ad, raster, tmp_path / "local", MapOptions(polygons=None, overlap=32))
    inline = predict_raster(ad, raster, tmp_path / "inline", MapOptions(polygons=None, overlap=32),
                            client=_InlineClient())
    [worker_adapter] = mapping._WORKER_ADAPTERS.values()
    assert worker_adapter is not ad
    assert worker_adapter.method.base.runtime.tag == ad.method.base.runtime.tag == "torch-bf16"
    assert local.outputs["classes"].read_bytes() == inline.outputs["classes"].read_bytes()


def test_tile_gsd_resamples_and_maps_back(tmp_path: Path) -> None:
    raster = write_geotiff(tmp_path / "scene.tif", _disc_image(), transform=GRID, nodata=0)  # 0.5 m x 0.8 m pixels
    ad = PixelAdapter(tile=64)
    coarse = predict_raster(ad, raster, tmp_path / "out", MapOptions(tile_gsd=1.3, polygons=None))
    with rasterio.open(coarse.outputs["classes"]) as out, rasterio.open(raster) as src:
        assert out.shape == src.shape and out.transform == src.transform
        labels = out.read(1)
    img = _disc_image()
    truth = img > 127
    agree = ((labels == 1) == truth)[img != 0].mean()
    assert agree > 0.97  # the disc comes back at full resolution, edges blurred by the resampling
    assert coarse.tiles < predict_raster(ad, raster, tmp_path / "fine", MapOptions(polygons=None)).tiles
    with pytest.raises(Exception, match="positive ground distance"):
        predict_raster(ad, raster, tmp_path / "bad", MapOptions(tile_gsd=-1))


def test_prompted_mapping_with_a_prompt_file_and_a_rough_mask(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import samadapt.predict.segmenter as segment_module
    from samadapt.cli import main
    from samadapt.mapping.prompted import predict_prompted_raster
    from samadapt.predict.segmenter import Segmenter
    from samadapt.prompts.types import box

    seg = Segmenter(tiny_models["sam"], cache=False)
    monkeypatch.setattr(segment_module, "decode", box_decoder(seg))  # segments exactly its box
    raster = write_geotiff(tmp_path / "scene.tif", np.repeat(_disc_image(300, 420)[None], 3, 0),
                           transform=GRID, nodata=0)
    result = predict_prompted_raster(seg, raster, tmp_path / "out", [box(40, 30, 120, 90), box(300, 200, 380, 290)])
    with rasterio.open(result.outputs["classes"]) as out:
        labels = out.read(1)
    assert (labels[35:85, 45:115] == 1).all() and (labels[205:285, 305:375] == 1).all()
    assert (labels[150:190, 150:250] == 0).all()
    assert len(gpd.read_file(result.outputs["polygons"])) == 2

    # a 4-band raster with water (green high, NIR low) prompted by NDWI through the command
    data = np.full((4, 200, 260), 1000, np.uint16)
    data[1, 60:140, 80:200], data[3, 60:140, 80:200] = 3000, 300
    water = write_geotiff(tmp_path / "lake.tif", data, transform=GRID, nodata=0)
    monkeypatch.setattr(sys, "argv", ["samadapt", "predict", str(tiny_models["sam"]), str(water), "--rough", "2,4,0",
                                      "--out", str(tmp_path / "lake")])
    with pytest.raises(SystemExit) as exc:
        main()
    text = " ".join(capsys.readouterr().out.split())
    assert exc.value.code in (0, None), text
    with rasterio.open(tmp_path / "lake" / "lake_classes.tif") as out:
        lake = out.read(1)
    assert (lake[62:138, 82:198] == 1).mean() > 0.95 and (lake[:50] == 0).all()


def test_cog_and_probability_outputs(tmp_path: Path) -> None:
    raster = write_geotiff(tmp_path / "scene.tif", _disc_image(300, 300), transform=GRID, nodata=0)
    result = predict_raster(PixelAdapter(), raster, tmp_path / "out",
                            MapOptions(cog=True, probabilities=True, polygons=None))
    for key in ("classes", "probabilities"):
        with rasterio.open(result.outputs[key]) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    with rasterio.open(result.outputs["probabilities"]) as ds:
        probs = ds.read()
    assert probs.shape == (2, 300, 300)
    valid = _disc_image(300, 300) != 0
    assert np.abs(probs[0].astype(int) + probs[1].astype(int) - 255)[valid].max() <= 1  # they sum to one


@pytest.mark.parametrize("method_name", ["domain-decoder", "unet"])
def test_batched_tiles_equal_one_tile_at_a_time(method_name: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    raster = write_geotiff(tmp_path / "scene.tif", np.repeat(_disc_image(300, 420)[None], 3, 0),
                           transform=GRID, nodata=0)
    width = {"width": 16} if method_name != "unet" else {}
    method = build_method(method_name, load_model(tiny_models["sam"]), **width)
    ad = load_adapter(save_adapter(method, tmp_path / "ad"))
    calls: list[int] = []
    batched_predict = ad.predict_samples
    ad.predict_samples = lambda samples: calls.append(len(samples)) or batched_predict(samples)  # type: ignore[method-assign]
    outputs = {}
    for batch in (1, 3):
        options = MapOptions(polygons=None, overlap=32, probabilities=True, batch_size=batch)
        outputs[batch] = predict_raster(ad, raster, tmp_path / f"b{batch}", options)
    assert max(calls) == 3  # tiles really went through the model three at a time
    assert outputs[1].tiles == outputs[3].tiles > 3
    # Batched matrix products round differently in the last float bits: probabilities agree to one
    # level of 255, and a class may flip only where its two best classes are that close (a tie).
    with (rasterio.open(outputs[1].outputs["probabilities"]) as a,
          rasterio.open(outputs[3].outputs["probabilities"]) as b):
        probs1, probs3 = a.read().astype(int), b.read().astype(int)
    assert np.abs(probs1 - probs3).max() <= 1
    with rasterio.open(outputs[1].outputs["classes"]) as a, rasterio.open(outputs[3].outputs["classes"]) as b:
        differ = a.read(1) != b.read(1)
    top2 = np.sort(probs1, axis=0)[-2:]
    assert differ.mean() <= 1e-4
    assert ((top2[1] - top2[0])[differ] <= 2).all()


def test_batch_size_must_be_positive(tmp_path: Path) -> None:
    raster = write_geotiff(tmp_path / "scene.tif", _disc_image(), transform=GRID, nodata=0)
    with pytest.raises(InputError, match="--batch-size must be at least 1, got 0"):
        predict_raster(PixelAdapter(), raster, tmp_path / "out", MapOptions(batch_size=0))
