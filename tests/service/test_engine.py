"""The engine without HTTP: window choice, pixel conventions, escalation out of a cell, single flight."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely.geometry

import samadapt.predict.segmenter
from helpers.decoders import box_decoder
from samadapt.errors import InputError
from samadapt.predict.segmenter import Segmenter
from samadapt.service.engine import SegmentEngine
from samadapt.service.geometry import (
    MIN_VIEW_SIDE,
    FrameObject,
    cell_of,
    inner_edges_touched,
    recentred,
    view_window,
)
from samadapt.service.schemas import SegmentRequest
from samadapt.service.settings import ServiceSettings
from samadapt.service.sources import (
    FetchError,
    Frame,
    MercatorFrame,
    Source,
    SourceError,
    lnglat_to_world,
    world_to_lnglat,
)

ZOOM = 12


class FakeSource(Source):
    """Flat grey imagery of the whole mercator world, counting reads; ``fail`` makes reads raise."""

    kind, body, crs, min_zoom, max_zoom, attribution = "xyz", "Earth", "EPSG:4326", 0, 19, ""

    def __init__(self) -> None:
        self.name = "fake"
        self.reads: list[tuple[int, int, int, int]] = []
        self.fail = False

    def _frame(self, zoom: int) -> Frame:
        side = 256 * 2**zoom
        return MercatorFrame(self.name, zoom, self.body, self.crs, (0, 0, side, side))

    async def read(self, frame: Frame, window: tuple[int, int, int, int], client: Any) -> np.ndarray:
        self.reads.append(window)
        await asyncio.sleep(0.05)  # long enough for concurrent requests to meet
        if self.fail:
            raise FetchError("upstream said no")
        x0, y0, x1, y1 = window
        return np.full((y1 - y0, x1 - x0, 3), 90, np.uint8)

    async def tile_png(self, z: int, x: int, y: int, client: Any) -> bytes:
        return b""


@pytest.fixture
def engine(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[SegmentEngine]:
    seg = Segmenter(tiny_models["sam"], cache=False)
    monkeypatch.setattr(samadapt.predict.segmenter, "decode", box_decoder(seg))
    settings = ServiceSettings(sources={"fake": {"type": "xyz", "url": "http://127.0.0.1:9/{z}/{x}/{y}.png"}},
                               default_source="fake")
    engine = SegmentEngine(seg, {"fake": FakeSource()}, settings)
    yield engine
    engine.close()


def request_at(x: float, y: float, *, mode: str = "grid", half_px: float = 200) -> SegmentRequest:
    """A point request at global pixel (x, y), in a view of about 2 * half_px around it."""
    (lng, lng0, lng1), (lat, lat1, lat0) = world_to_lnglat(np.array([x, x - half_px, x + half_px]),
                                                           np.array([y, y - half_px, y + half_px]), ZOOM)
    return SegmentRequest.model_validate({
        "bbox": {"ne": {"lat": lat1, "lng": lng1}, "sw": {"lat": lat0, "lng": lng0}},
        "prompt": [{"type": "point", "data": {"lat": lat, "lng": lng}, "label": 1}],
        "zoom": ZOOM, "source_type": "fake", "mode": mode,
    })


def pixel_bounds(out: dict[str, Any]) -> tuple[float, float, float, float]:
    geom = shapely.geometry.shape(out["features"][0]["geometry"])
    geom = shapely.transform(geom, lambda c: np.column_stack(lnglat_to_world(c[:, 0], c[:, 1], ZOOM)))
    return geom.bounds


def test_cells_and_recentred_windows() -> None:
    assert cell_of((300.0, 10.0, 300.0, 10.0), 256) == (256, 0, 512, 256)
    assert cell_of((260.0, 10.0, 512.0, 40.0), 256) == (256, 0, 512, 256)  # a box ending on the cell edge
    assert cell_of((250.0, 10.0, 262.0, 20.0), 256) is None
    win = recentred((250.0, 10.0, 262.0, 20.0), 256)
    assert win[2] - win[0] == 256 and win[0] % 64 == 0 and win[1] % 64 == 0
    assert win[0] <= 250 and win[2] >= 262 and win[1] <= 10 and win[3] >= 20
    assert recentred((250.0, 10.0, 262.0, 20.0), 256) == recentred((251.0, 12.0, 263.0, 21.0), 256)  # shared
    wide = recentred((100.0, 0.0, 340.0, 5.0), 256)  # 240 px wide: no quarter-step origin holds it
    assert wide[0] <= 100 and wide[2] >= 340


def test_views_under_8_pixels_a_side_are_refused_before_and_after_clipping() -> None:
    frame = MercatorFrame("local", ZOOM, "Earth", "EPSG:4326", (0, 0, 100, 100))
    assert MIN_VIEW_SIDE == 8
    assert view_window(frame, (10.0, 10.0, 18.0, 18.0), ZOOM, 4096) == (10, 10, 18, 18)
    with pytest.raises(InputError, match="bbox too small for zoom 12: it spans 1 x 2 pixels and at least 8 per side"):
        view_window(frame, (10.2, 10.5, 10.8, 11.5), ZOOM, 4096)
    with pytest.raises(SourceError, match="overlaps the imagery of source 'local' by only 3 x 50 pixels"):
        view_window(frame, (97.0, 20.0, 120.0, 70.0), ZOOM, 4096)
    with pytest.raises(SourceError, match="lies outside the imagery"):
        view_window(frame, (120.0, 20.0, 140.0, 70.0), ZOOM, 4096)


def test_inner_edges_are_not_the_frame_boundary() -> None:
    mask = np.zeros((4, 4), bool)
    mask[1:3, 0] = True
    assert inner_edges_touched(mask, (4, 0, 8, 4), (0, 0, 100, 100))
    assert not inner_edges_touched(mask, (0, 0, 4, 4), (0, 0, 100, 100))


def test_prompts_follow_the_predictor_pixel_convention() -> None:
    obj = FrameObject(points=np.array([[10.5, 20.5]]), labels=np.array([1]), box=np.array([10.0, 20.0, 15.0, 30.0]))
    prompt = obj.in_window((8, 16, 40, 48))
    np.testing.assert_allclose(prompt.points, [[2.0, 4.0]])  # the centre of pixel (col 10, row 20)
    np.testing.assert_allclose(prompt.box, [2.0, 4.0, 7.0, 14.0])  # edges are not shifted


def test_an_object_cut_by_its_cell_is_decoded_again_around_it(engine: SegmentEngine) -> None:
    cell = 2161 * 256
    x, y = cell + 250.0, 1473 * 256 + 100.0  # 6 px from the right edge: the 24 px square crosses it
    out = asyncio.run(engine.segment(request_at(x, y)))
    x0, y0, x1, y1 = pixel_bounds(out)
    assert x0 < x < x1 and y0 < y < y1
    assert x1 - x0 >= 20 and x1 > cell + 256 + 2  # whole, across the cell edge (not cut at it)
    src = engine.sources["fake"]
    assert len(src.reads) == 2 and src.reads[0] == (cell, 1473 * 256, cell + 256, 1474 * 256)
    assert (src.reads[1][2] - src.reads[1][0]) == 256 and src.reads[1][0] % 64 == 0


def test_interior_object_stays_in_its_cell_and_view_mode_uses_the_view(engine: SegmentEngine) -> None:
    x, y = 2161 * 256 + 128.0, 1473 * 256 + 128.0
    asyncio.run(engine.segment(request_at(x, y)))
    asyncio.run(engine.segment(request_at(x, y, mode="view")))
    reads = engine.sources["fake"].reads
    assert reads[0] == (2161 * 256, 1473 * 256, 2162 * 256, 1474 * 256)
    assert reads[1][2] - reads[1][0] == pytest.approx(400, abs=2)


def test_separate_objects_and_shared_background(engine: SegmentEngine) -> None:
    base = request_at(2161 * 256 + 60.0, 1473 * 256 + 60.0).model_dump()
    far = request_at(2161 * 256 + 180.0, 1473 * 256 + 180.0).model_dump()["prompt"][0]
    bg = dict(far, label=0, data={"lat": far["data"]["lat"] + 1e-4, "lng": far["data"]["lng"]})
    base.update(prompt=[base["prompt"][0], far, bg], separate=True)
    out = asyncio.run(engine.segment(SegmentRequest.model_validate(base)))
    assert [f["properties"]["object"] for f in out["features"]] == [0, 1]
    together = asyncio.run(engine.segment(SegmentRequest.model_validate(dict(base, separate=False))))
    assert len(together["features"]) == 1 and together["cache_hit"] is True


def test_single_flight_shares_success_and_failure(engine: SegmentEngine) -> None:
    src = engine.sources["fake"]
    req = request_at(2161 * 256 + 128.0, 1473 * 256 + 128.0)

    async def three() -> list[Any]:
        return await asyncio.gather(*(engine.segment(req) for _ in range(3)), return_exceptions=True)

    src.fail = True
    results = asyncio.run(three())
    assert all(isinstance(r, FetchError) for r in results) and len(src.reads) == 1
    src.fail = False
    results = asyncio.run(three())
    assert [r["cache_hit"] for r in results] == [False] * 3 and len(src.reads) == 2  # the error was not cached
    assert engine.segmenter.encoder_calls == 1
    again = asyncio.run(engine.segment(req))
    assert again["cache_hit"] is True and len(src.reads) == 2
