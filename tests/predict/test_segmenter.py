"""Prompted and automatic segmentation with tiny models of every family."""

from __future__ import annotations

import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch
from affine import Affine

import samadapt.predict.segmenter as segment_module
from helpers.decoders import box_decoder
from helpers.rasters import UTM
from samadapt.errors import InputError
from samadapt.imagery.preprocess import masks_to_original
from samadapt.imagery.read import GeoImage, read_image
from samadapt.mapping.outputs import write_segmentation
from samadapt.predict.automatic import (
    AutomaticOptions,
    box_nms,
    mask_boxes,
    point_grid,
    remove_small_regions,
    stability_score,
)
from samadapt.predict.result import SegmentationResult
from samadapt.predict.segmenter import Segmenter
from samadapt.prompts.io import prompts_from_cli
from samadapt.prompts.types import ObjectPrompt, box, point


def _prompts() -> list[ObjectPrompt]:
    return [
        point(120, 150),
        box(300, 60, 420, 140),
        ObjectPrompt(points=[[120, 150], [200, 40]], labels=[1, 0]),
        ObjectPrompt(points=[[350, 100]], labels=[1], box=[300, 60, 420, 140]),
        ObjectPrompt(box=[100, 100, 150, 200], mask=np.zeros((300, 500), bool)),
    ]


def test_batched_objects_equal_one_at_a_time(tiny_model: Path, textured_image: np.ndarray) -> None:
    seg = Segmenter(tiny_model, cache=False)
    prompts = _prompts()
    together = seg.segment(textured_image, prompts, keep_logits=True)
    assert together.masks.shape == (len(prompts), 300, 500) and together.masks.dtype == bool
    for i, p in enumerate(prompts):
        alone = seg.segment(textured_image, [p], keep_logits=True)
        np.testing.assert_allclose(alone.logits[0], together.logits[i], atol=1e-4)
        np.testing.assert_allclose(alone.scores[0], together.scores[i], atol=1e-5)
    assert seg.encoder_calls == 1  # every call after the first reused the embedding


def test_best_of_three_is_the_highest_predicted_iou(tiny_models: dict[str, Path], textured_image: np.ndarray) -> None:
    seg = Segmenter(tiny_models["sam"], cache=False)
    emb = seg.embed(textured_image)
    low, iou = seg.decode(emb, [point(120, 150)], multimask=True)
    res = seg.segment(emb, [point(120, 150)], keep_logits=True)
    best = int(iou[0].argmax())
    assert res.scores[0] == pytest.approx(float(iou[0, best]))
    np.testing.assert_allclose(res.logits[0], low[0, best].numpy())
    single = seg.segment(emb, [point(120, 150)], multimask=False)
    assert single.masks.shape == (1, 300, 500)


def test_nodata_never_in_a_mask(tiny_models: dict[str, Path], utm_raster: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    image = read_image(utm_raster)
    assert not image.valid[:, :20].any()
    seg = Segmenter(tiny_models["sam"], cache=False)
    monkeypatch.setattr(segment_module, "decode", box_decoder(seg))
    res = seg.segment(image, [box(0, 0, 200, 200)])
    assert res.masks[0, :, 25:180].any()
    assert not res.masks[0, :, :20].any()


def test_prompt_outside_image_is_refused(tiny_models: dict[str, Path], textured_image: np.ndarray) -> None:
    seg = Segmenter(tiny_models["sam"], cache=False)
    with pytest.raises(InputError, match=r"point \(600, 10\) lies outside the image, which is 500 x 300"):
        seg.segment(textured_image, [point(600, 10)])
    with pytest.raises(InputError, match="no prompts"):
        seg.segment(textured_image, [])


def test_geotiff_round_trip_puts_polygon_where_the_map_prompt_was(
    tiny_models: dict[str, Path], utm_raster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = read_image(utm_raster)
    x0, y0 = image.transform @ (100, 200)  # map coords of pixel corners: a box in metres
    x1, y1 = image.transform @ (300, 100)
    objects = prompts_from_cli([], [f"{x0},{y0},{x1},{y1}"], crs="EPSG:32616", transform=image.transform,
                               raster_crs=image.crs)
    seg = Segmenter(tiny_models["sam"], cache=False)
    monkeypatch.setattr(segment_module, "decode", box_decoder(seg))
    res = seg.segment(image, objects)
    out = write_segmentation(tmp_path / "m.gpkg", res, crs=image.crs, transform=image.transform, valid=image.valid)
    frame = gpd.read_file(out)
    assert frame.crs.to_epsg() == 32616
    bx0, by0, bx1, by1 = frame.geometry.iloc[0].bounds
    # one low-resolution cell of the model is 500/64 ~ 8 pixels: 4 m in x, 6 m in y here
    assert bx0 == pytest.approx(x0, abs=4.5) and bx1 == pytest.approx(x1, abs=4.5)
    assert by0 == pytest.approx(y0, abs=6.5) and by1 == pytest.approx(y1, abs=6.5)
    tif = write_segmentation(tmp_path / "m.tif", res, crs=image.crs, transform=image.transform, valid=image.valid)
    import rasterio

    with rasterio.open(tif) as ds:
        assert ds.crs == image.crs and ds.transform == image.transform and ds.shape == (300, 500)


def test_everything_mode_returns_deduplicated_masks(tiny_model: Path, textured_image: np.ndarray) -> None:
    seg = Segmenter(tiny_model, cache=False)
    opts = AutomaticOptions(points_per_side=4, pred_iou_thresh=-1.0, stability_score_thresh=0.0, box_nms_thresh=0.7)
    res = seg.segment_everything(textured_image, opts)
    assert res.masks.shape[1:] == (300, 500) and len(res) >= 1
    boxes = mask_boxes(res.masks)
    assert len(box_nms(boxes, res.scores, 0.7)) == len(res)  # nothing left to suppress
    strict = seg.segment_everything(textured_image, AutomaticOptions(points_per_side=4, pred_iou_thresh=2.0))
    assert len(strict) == 0 and strict.masks.shape == (0, 300, 500)


def test_box_nms_keeps_best_of_overlapping() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], float)
    keep = box_nms(boxes, np.array([0.5, 0.9, 0.1]), 0.5)
    assert keep.tolist() == [1, 2]


def test_stability_score_and_grid_and_small_regions() -> None:
    logits = torch.full((1, 10, 10), -5.0)
    logits[0, 2:8, 2:8] = 5.0
    assert stability_score(logits, 1.0).item() == 1.0
    logits[0, 0:2, :] = 0.5  # soft border: grows under the lower threshold only
    assert stability_score(logits, 1.0).item() == pytest.approx(36 / 56)
    grid = point_grid(100, 200, 4)
    assert grid.shape == (16, 2) and grid[0].tolist() == [25.0, 12.5]
    m = np.zeros((20, 20), bool)
    m[2:12, 2:12] = True
    m[5, 5] = False  # a one-pixel hole
    m[17, 17] = True  # a one-pixel island
    clean = remove_small_regions(m, 4)
    assert clean[5, 5] and not clean[17, 17] and clean[2:12, 2:12].all()


@pytest.mark.parametrize("shape", [(20, 20000, 3), (20000, 20, 3)])
def test_a_long_thin_strip_segments(shape: tuple[int, int, int], tiny_models: dict) -> None:
    """The short side of a strip rounds to 0 px in segment-anything's resize; it is kept at 1 px here."""
    image = np.full(shape, 100, np.uint8)
    result = Segmenter(tiny_models["sam"], cache=False).segment(image, [box(2, 2, 12, 12)])
    assert result.masks.shape == (1, shape[0], shape[1])


UTM_GRID = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0)


def _old_full_size_masks(seg: Segmenter, image: GeoImage, prompts: list[ObjectPrompt], multimask: bool) -> np.ndarray:
    """The masks as segment computed them before masks were cropped: every object's logits resized to
    the whole image at once, thresholded at 0, nodata removed."""
    emb = seg.embed(image)
    low, scores = seg.decode(emb, prompts, multimask=multimask)
    best = low[torch.arange(len(prompts)), scores.argmax(dim=1)]
    return (masks_to_original(best, emb.geometry, seg.loaded.preprocessing) > 0).numpy() & image.valid[None]


@pytest.mark.parametrize("stand_in", [False, True], ids=["tiny-decoder", "box-decoder"])
def test_cropped_masks_equal_the_full_size_masks_pixel_for_pixel(
    stand_in: bool, tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (620, 910, 3), dtype=np.uint8)  # not square, large enough for windows
    valid = np.ones((620, 910), bool)
    valid[:, 880:] = False  # a nodata strip
    image = GeoImage(pixels=pixels, valid=valid)
    seg = Segmenter(tiny_models["sam"], cache=False)
    if stand_in:  # masks the size of their boxes: the windowed resize, not the full-size one
        monkeypatch.setattr(segment_module, "decode", box_decoder(seg))
    prompts = [box(20, 30, 140, 90), box(700, 500, 905, 615), box(400, 10, 430, 600), point(300, 300)]
    for multimask in (False, True):
        result = seg.segment(image, prompts, multimask=multimask)
        old = _old_full_size_masks(seg, image, prompts, multimask)
        assert result.mask_bytes < old.nbytes
        np.testing.assert_array_equal(result.masks, old)
        assert [c.box for c in result.crops] == [tuple(b) for b in mask_boxes(old).astype(int)]
    # the outputs written from crops are the outputs of the full-size masks, byte for byte (but
    # for the GeoJSON's layer name, which is the temporary file's)
    before = SegmentationResult(old, result.scores)
    for name in ("labels.tif", "polygons.geojson"):
        a = write_segmentation(tmp_path / "crops" / name, result, crs=UTM, transform=UTM_GRID, valid=valid)
        b = write_segmentation(tmp_path / "full" / name, before, crs=UTM, transform=UTM_GRID, valid=valid)
        unnamed = [re.sub(rb'"name": "[^"]*"', b"", p.read_bytes(), count=1) for p in (a, b)]
        assert unnamed[0] == unnamed[1]


def test_masks_are_kept_at_the_size_of_their_objects(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """N masks on a large raster hold memory for their objects, not N copies of the raster."""
    image = np.full((3000, 3000, 3), 90, np.uint8)
    seg = Segmenter(tiny_models["sam"], cache=False)
    monkeypatch.setattr(segment_module, "decode", box_decoder(seg))
    boxes = [(100 + 450 * i, 200 + 400 * i, 400 + 450 * i, 400 + 400 * i) for i in range(6)]
    result = seg.segment(image, [box(*b) for b in boxes], multimask=False)
    box_area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes)
    assert 0 < result.mask_bytes <= 4 * box_area  # a full-size mask alone would take 9,000,000 bytes
    for b, c in zip(boxes, result.crops, strict=False):  # each crop lies on its box (one model cell is 47 px here)
        assert np.allclose(c.box, b, atol=50)
    labels = result.label_image()
    assert labels.shape == (3000, 3000) and set(np.unique(labels)) == set(range(7))


def _old_everything(seg: Segmenter, image: np.ndarray, opts: AutomaticOptions) -> tuple[np.ndarray, np.ndarray]:
    """segment_everything as it was before masks were cropped: all masks at full size (one decoder
    batch: opts.points_per_batch must exceed the grid's points)."""
    emb = seg.embed(image)
    h, w = emb.geometry.original_hw
    masks, scores = [], []
    low, iou = seg.decode(emb, [point(*p) for p in point_grid(h, w, opts.points_per_side)], multimask=True)
    low, iou = low.flatten(0, 1), iou.flatten()
    good = iou > opts.pred_iou_thresh
    logits = masks_to_original(low[good], emb.geometry, seg.loaded.preprocessing)
    stable = stability_score(logits, opts.stability_score_offset) >= opts.stability_score_thresh
    for m, s in zip((logits[stable] > 0).numpy(), iou[good][stable].tolist(), strict=False):
        if (m & emb.image.valid).any():
            masks.append(m & emb.image.valid)
            scores.append(s)
    masks_a, scores_a = np.stack(masks), np.asarray(scores, np.float32)
    keep = box_nms(mask_boxes(masks_a), scores_a, opts.box_nms_thresh)
    masks_a = np.stack([remove_small_regions(m, opts.min_region_area) for m in masks_a[keep]])
    nonempty = masks_a.reshape(len(masks_a), -1).any(axis=1)
    return masks_a[nonempty], scores_a[keep][nonempty]


@pytest.mark.parametrize("stand_in", [False, True], ids=["tiny-decoder", "box-decoder"])
def test_everything_mode_equals_the_full_size_computation(
    stand_in: bool, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (560, 740, 3), dtype=np.uint8)
    seg = Segmenter(tiny_models["sam"], cache=False)
    if stand_in:  # small square masks around each point: the windowed resize
        monkeypatch.setattr(segment_module, "decode", box_decoder(seg))
    opts = AutomaticOptions(points_per_side=3, pred_iou_thresh=-1.0, stability_score_thresh=0.0,
                            box_nms_thresh=0.9, min_region_area=40)
    result = seg.segment_everything(image, opts)
    masks, scores = _old_everything(seg, image, opts)
    assert len(result) == (9 if stand_in else 1)
    np.testing.assert_array_equal(result.scores, scores)
    np.testing.assert_array_equal(result.masks, masks)
