"""Text prompts on ``POST /segment``: phrases searched for over the whole view.

A fake detector finds the bright disc of a local GeoTIFF in the view it is given and returns its
bounding box in view pixels; with ``box_decoder`` standing in for SAM's mask decoder, the polygon is
that box, so it must come back around the disc's lng/lat, carrying the phrase and the detector's score.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely.geometry
from fastapi.testclient import TestClient

import samadapt.predict.segmenter
from helpers.decoders import box_decoder
from helpers.tileserver import DISC_VALUE, DiscRaster, write_disc_geotiff
from samadapt.errors import InputError, ModelNotFoundError
from samadapt.predict.segmenter import Segmenter
from samadapt.service.app import create_app
from samadapt.service.geometry import bbox_extent, view_window
from samadapt.service.schemas import MAX_PHRASE, BBox
from samadapt.service.settings import ServiceSettings
from samadapt.service.sources import LocalSource
from samadapt.service.text import TextPrompts, open_text_prompts
from samadapt.text.search import MAX_PHRASE as SEARCH_MAX_PHRASE
from samadapt.text.types import Detection, Thresholds

ZOOM = 15
SCORE = 0.87


class DiscDetector:
    """A stand-in detector: the bounding box, in the pixels it is given, of the bright disc (if in view)."""

    name = "disc-finder"
    trusted = True
    model_id = "fake:disc"

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], tuple[str, ...], Thresholds]] = []
        self.boxes: list[tuple[float, float, float, float]] = []

    def detect(self, rgb: np.ndarray, phrases: Sequence[str], thresholds: Thresholds) -> list[Detection]:
        self.calls.append((rgb.shape, tuple(phrases), thresholds))
        rows, cols = np.nonzero((rgb == DISC_VALUE).all(axis=2))
        if not len(rows):
            return []
        box = (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))
        self.boxes.append(box)
        return [Detection(box, phrases[0], SCORE)]


def view_bbox(disc: DiscRaster, half: float = 0.003) -> dict[str, Any]:
    return {"ne": {"lat": disc.lat + half * 0.7, "lng": disc.lng + half},
            "sw": {"lat": disc.lat - half * 0.7, "lng": disc.lng - half}}


def text(phrase: str) -> dict[str, Any]:
    return {"type": "text", "data": phrase}


def body(disc: DiscRaster, *prompts: dict[str, Any]) -> dict[str, Any]:
    return {"bbox": view_bbox(disc), "prompt": list(prompts), "zoom": ZOOM, "source_type": "disc"}


def settings_for(disc: DiscRaster, **kw: Any) -> ServiceSettings:
    return ServiceSettings(sources={"disc": {"type": "local", "path": str(disc.path)}}, default_source="disc", **kw)


@pytest.fixture
def disc(tmp_path: Path) -> DiscRaster:
    return write_disc_geotiff(tmp_path / "disc.tif")


@pytest.fixture
def segmenter(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Segmenter:
    seg = Segmenter(tiny_models["sam"], cache=False)
    monkeypatch.setattr(samadapt.predict.segmenter, "decode", box_decoder(seg))
    return seg


@pytest.fixture(scope="module")
def sam3_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from samadapt.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-sam3") / "sam3", "sam3")


@pytest.fixture
def detector() -> DiscDetector:
    return DiscDetector()


@pytest.fixture
def client(segmenter: Segmenter, disc: DiscRaster, detector: DiscDetector) -> Iterator[TestClient]:
    app = create_app(settings_for(disc), segmenter, text=TextPrompts("sam", detector))
    with TestClient(app) as c:
        yield c


def test_detector_box_comes_back_as_a_polygon_around_the_disc(client: TestClient, disc: DiscRaster,
                                                              detector: DiscDetector) -> None:
    r = client.post("/segment", json=body(disc, text("pit")))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["mode"] == "view" and out["detector"] == "disc-finder" and out["trusted"] is False  # random SAM
    assert out["cache_hit"] is False and set(out["timings_ms"]) == {"fetch", "encode", "decode", "vectorise", "total"}
    (feature,) = out["features"]
    assert feature["properties"] == {"score": 1.0, "object": 0, "phrase": "pit", "detector_score": SCORE}
    # The detector saw the whole view, in the view's pixels.
    source = LocalSource("disc", disc.path)
    frame = source.frame(ZOOM)
    view = view_window(frame, bbox_extent(frame, BBox.model_validate(view_bbox(disc))), ZOOM, 4096)
    ((shape, phrases, thresholds),) = detector.calls
    assert shape == (view[3] - view[1], view[2] - view[0], 3) and phrases == ("pit",) and thresholds == Thresholds()
    # In map coordinates: the polygon holds the disc's centre and is about the disc's size ...
    poly = shapely.geometry.shape(feature["geometry"])
    assert poly.is_valid and poly.contains(shapely.geometry.Point(disc.lng, disc.lat))
    # ... and, brought back to frame pixels, it is the detector's box moved to the view's place.
    x0, y0, x1, y1 = detector.boxes[0]
    box = shapely.geometry.box(view[0] + x0, view[1] + y0, view[0] + x1, view[1] + y1)
    in_pixels = shapely.transform(poly, lambda c: np.column_stack(frame.to_pixel(c[:, 0], c[:, 1])))
    assert box.buffer(1.5).contains(in_pixels)
    assert in_pixels.intersection(box).area / in_pixels.union(box).area > 0.85


def test_several_phrases_each_found_objects_carry_their_phrase(client: TestClient, disc: DiscRaster,
                                                                detector: DiscDetector) -> None:
    r = client.post("/segment", json=body(disc, text(" bright   disc "), text("crater"), text("bright disc")))
    assert r.status_code == 200, r.text
    assert detector.calls[0][1] == ("bright disc", "crater")  # spaces collapsed, each phrase once
    assert [f["properties"]["phrase"] for f in r.json()["features"]] == ["bright disc"]


def test_a_view_without_a_match_is_an_empty_collection(client: TestClient, disc: DiscRaster) -> None:
    far = {**body(disc, text("pit")), "bbox": {"ne": {"lat": disc.lat - 0.0011, "lng": disc.lng + 0.004},
                                               "sw": {"lat": disc.lat - 0.0016, "lng": disc.lng + 0.001}}}
    r = client.post("/segment", json=far)
    assert r.status_code == 200, r.text
    assert r.json()["features"] == []


def test_sam3_answers_text_without_a_detector(sam3_model: Path, disc: DiscRaster) -> None:
    seg = Segmenter(sam3_model, cache=False)
    for thresholds in (Thresholds(), Thresholds(box=0.0)):  # the default, and one every random query passes
        app = create_app(settings_for(disc), seg, text=TextPrompts("sam3", None, thresholds))
        with TestClient(app) as c:
            assert c.get("/health").json()["text_prompts"] is True
            r = c.post("/segment", json=body(disc, text("pit")))
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["type"] == "FeatureCollection" and out["model"] == "sam3" and out["detector"] is None
        for f in out["features"]:
            assert f["properties"]["phrase"] == "pit" and 0.0 <= f["properties"]["detector_score"] <= 1.0
            assert shapely.geometry.shape(f["geometry"]).is_valid
    assert out["features"], "with a threshold of 0 every query of the random model is an object"
    # Without text arguments the app still answers text: SAM 3 needs no detector.
    with TestClient(create_app(settings_for(disc), seg)) as c:
        assert c.post("/segment", json=body(disc, text("pit"))).status_code == 200


def test_text_on_a_sam_model_without_a_detector_is_a_400(segmenter: Segmenter, disc: DiscRaster) -> None:
    with TestClient(create_app(settings_for(disc), segmenter)) as c:
        assert c.get("/health").json()["text_prompts"] is False
        r = c.post("/segment", json=body(disc, text("pit")))
    assert r.status_code == 400
    error = r.json()["error"]
    assert "--detector" in error and "sam3" in error and error.count(". ") == 0 and "detail" not in r.json()


@pytest.mark.parametrize(("prompts", "words"), [
    ([text("")], "the phrase is empty"),
    ([text("   ")], "the phrase is empty"),
    ([text("x" * (MAX_PHRASE + 1))], f"keep it to {MAX_PHRASE}"),
    ([text("pit"), {"type": "point", "data": {"lat": 45.0, "lng": 10.0}}], "cannot be mixed"),
    ([{"type": "rectangle", "data": {"ne": {"lat": 45.001, "lng": 10.001}, "sw": {"lat": 45.0, "lng": 10.0}}},
      text("pit")], "cannot be mixed"),
    ([{"type": "text", "data": 3}], "valid string"),
])
def test_bad_text_prompts_are_422(client: TestClient, disc: DiscRaster, prompts: list[dict[str, Any]],
                                  words: str) -> None:
    r = client.post("/segment", json=body(disc, *prompts))
    assert r.status_code == 422, r.text
    assert words in r.json()["error"] and r.json()["error"].startswith("invalid request: ")


def test_the_phrase_limit_is_the_text_search_one() -> None:
    assert MAX_PHRASE == SEARCH_MAX_PHRASE


def test_too_many_text_prompts_is_a_400(segmenter: Segmenter, disc: DiscRaster, detector: DiscDetector) -> None:
    app = create_app(settings_for(disc, max_prompts=2), segmenter, text=TextPrompts("sam", detector))
    with TestClient(app) as c:
        r = c.post("/segment", json=body(disc, text("a"), text("b"), text("c")))
    assert r.status_code == 400 and "too many prompts" in r.json()["error"]
    assert detector.calls == []


def test_text_settings_are_checked_against_the_model(disc: DiscRaster, tmp_path: Path) -> None:
    assert open_text_prompts(settings_for(disc), "sam").available is False
    assert open_text_prompts(settings_for(disc, box_threshold=0.2), "sam3").thresholds == Thresholds(box=0.2)
    with pytest.raises(InputError, match="SAM 3 reads text itself"):
        open_text_prompts(settings_for(disc, detector="grounding-dino-tiny"), "sam3")
    with pytest.raises(InputError, match="--text-threshold applies to GroundingDINO only"):
        open_text_prompts(settings_for(disc, text_threshold=0.3), "sam")
    with pytest.raises(InputError, match="--box-threshold applies to text prompts"):
        open_text_prompts(settings_for(disc, box_threshold=0.3), "sam2")
    with pytest.raises(ModelNotFoundError, match="nope"):
        open_text_prompts(settings_for(disc, detector=str(tmp_path / "nope")), "sam")
    with pytest.raises(InputError, match="box_threshold must be a number between 0 and 1"):
        settings_for(disc, box_threshold=1.5)
    assert settings_for(disc, text_threshold="0.25").text_threshold == 0.25  # from the environment: text


def test_build_service_loads_a_tiny_detector(tiny_models: dict[str, Path], disc: DiscRaster, tmp_path: Path) -> None:
    from samadapt.service.server import build_service
    from samadapt.text.tiny_detectors import save_tiny_detector

    folder = save_tiny_detector(tmp_path / "gdino", "grounding-dino")
    app = build_service(str(tiny_models["sam"]), sources=[f"disc={disc.path}"], detector=str(folder),
                        box_threshold=0.9, text_threshold=0.9)
    served = app.state.served
    assert served.text.detector.trusted is False and served.text.thresholds == Thresholds(box=0.9, text=0.9)
    with TestClient(app) as c:
        health = c.get("/health").json()
        assert health["text_prompts"] is True and health["detector"] == "gdino"
        r = c.post("/segment", json=body(disc, text("pit")))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["detector"] == "gdino" and out["trusted"] is False
    assert all(f["properties"]["phrase"] == "pit" for f in out["features"])
