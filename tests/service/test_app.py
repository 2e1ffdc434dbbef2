"""The HTTP service end to end: a local tile server, a tiny model, a decoder that follows its prompts.

``box_decoder`` replaces SAM's mask decoder with one that segments exactly its box (or a
24-model-pixel square around its first point), so any error in the chain lng/lat -> frame
pixels -> window -> model input -> mask -> polygon -> lng/lat moves the polygon off the prompt.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import shapely.geometry
from fastapi.testclient import TestClient

import samadapt.predict.segmenter
from helpers.decoders import box_decoder
from helpers.tileserver import DISC_VALUE, serve_tiles, write_disc_geotiff
from samadapt.imagery.preprocess import Preprocessing
from samadapt.predict.segmenter import Segmenter
from samadapt.service.app import create_app
from samadapt.service.settings import ServiceSettings
from samadapt.service.sources import lnglat_to_world
from samadapt.train.adapter import Prediction

ZOOM = 12
LNG, LAT = 10.0, 45.0  # the tile server's disc


def bbox(lng: float = LNG, lat: float = LAT, half: float = 0.08) -> dict[str, Any]:
    """A view of about 470 x 460 px at zoom 12 around (lng, lat)."""
    return {"ne": {"lat": lat + half * 0.7, "lng": lng + half}, "sw": {"lat": lat - half * 0.7, "lng": lng - half}}


def point(lng: float = LNG, lat: float = LAT, label: int = 1) -> dict[str, Any]:
    return {"type": "point", "data": {"lat": lat, "lng": lng}, "label": label}


def payload(**kw: Any) -> dict[str, Any]:
    body = {"bbox": bbox(), "prompt": [point()], "zoom": ZOOM, "source_type": "tiles"}
    body.update(kw)
    return body


def settings_for(url_template: str, **kw: Any) -> ServiceSettings:
    sources = {"tiles": {"type": "xyz", "url": url_template, "max_zoom": 19}, **kw.pop("extra_sources", {})}
    return ServiceSettings(sources=sources, default_source="tiles", **kw)


@pytest.fixture
def segmenter(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Segmenter:
    seg = Segmenter(tiny_models["sam"], cache=False)
    monkeypatch.setattr(samadapt.predict.segmenter, "decode", box_decoder(seg))
    return seg


@pytest.fixture
def tiles() -> Iterator[Any]:
    with serve_tiles(lng=LNG, lat=LAT, radius_deg=0.02) as srv:
        yield srv


@pytest.fixture
def client(segmenter: Segmenter, tiles: Any) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(tiles.url_template), segmenter)) as c:
        yield c


def pixel_polygon(feature: dict[str, Any], zoom: int = ZOOM) -> shapely.geometry.Polygon:
    """The feature's geometry in global mercator pixels at ``zoom``."""
    geom = shapely.geometry.shape(feature["geometry"])
    return shapely.transform(geom, lambda c: np.column_stack(lnglat_to_world(c[:, 0], c[:, 1], zoom)))


@pytest.mark.parametrize("mode", ["grid", "view"])
def test_point_polygon_lies_on_the_point(client: TestClient, mode: str) -> None:
    r = client.post("/segment", json=payload(mode=mode))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "FeatureCollection" and out["body"] == "Earth" and out["crs"] == "EPSG:4326"
    assert out["mode"] == mode and out["source"] == "tiles" and out["model"] == "sam" and out["trusted"] is False
    assert set(out["timings_ms"]) == {"fetch", "encode", "decode", "vectorise", "total"}
    (feature,) = out["features"]
    assert feature["geometry"]["type"] == "Polygon" and feature["properties"]["object"] == 0
    poly = pixel_polygon(feature)
    px, py = lnglat_to_world(LNG, LAT, ZOOM)
    assert poly.contains(shapely.geometry.Point(px, py))
    # the stand-in decoder draws a 24-model-pixel square: 24 px in a grid cell, ~1.8x that in the 470 px view
    side = 24 if mode == "grid" else 24 * 470 / 256
    assert poly.area == pytest.approx(side**2, rel=0.35)
    assert poly.centroid.distance(shapely.geometry.Point(px, py)) < 0.2 * side


@pytest.mark.parametrize("mode", ["grid", "view"])
def test_rectangle_polygon_matches_the_rectangle(client: TestClient, mode: str) -> None:
    # 0.05 deg x 0.03 deg ~ 146 x 175 px: in grid mode it crosses a cell edge and is decoded re-centred
    rect = {"ne": {"lat": LAT + 0.015, "lng": LNG + 0.03}, "sw": {"lat": LAT - 0.015, "lng": LNG - 0.02}}
    r = client.post("/segment", json=payload(mode=mode, prompt=[{"type": "rectangle", "data": rect}]))
    assert r.status_code == 200, r.text
    (feature,) = r.json()["features"]
    poly = pixel_polygon(feature)
    x0, y1 = lnglat_to_world(rect["sw"]["lng"], rect["sw"]["lat"], ZOOM)
    x1, y0 = lnglat_to_world(rect["ne"]["lng"], rect["ne"]["lat"], ZOOM)
    box = shapely.geometry.box(float(x0), float(y0), float(x1), float(y1))
    assert poly.intersection(box).area / poly.union(box).area > 0.9


def test_second_request_on_the_view_is_a_cache_hit(client: TestClient, segmenter: Segmenter, tiles: Any) -> None:
    first = client.post("/segment", json=payload()).json()
    assert first["cache_hit"] is False and first["timings_ms"]["encode"] > 0
    fetched, encoded = len(tiles.requests), segmenter.encoder_calls
    assert fetched > 0 and encoded == 1
    for prompt in ([point()], [point(LNG + 0.01, LAT - 0.005), point(LNG, LAT, 0)]):  # same, then another prompt
        again = client.post("/segment", json=payload(prompt=prompt)).json()
        assert again["cache_hit"] is True
        assert again["timings_ms"]["encode"] == 0 and again["timings_ms"]["fetch"] == 0
        assert len(again["features"]) == 1
    assert len(tiles.requests) == fetched and segmenter.encoder_calls == encoded


def test_small_pan_reuses_grid_cells_but_not_views(client: TestClient, segmenter: Segmenter) -> None:
    client.post("/segment", json=payload(mode="grid"))
    client.post("/segment", json=payload(mode="view"))
    assert segmenter.encoder_calls == 2
    panned = bbox(LNG + 0.004, LAT + 0.002)  # ~12 px east, ~8 px north
    grid = client.post("/segment", json=payload(mode="grid", bbox=panned)).json()
    assert grid["cache_hit"] is True and segmenter.encoder_calls == 2
    view = client.post("/segment", json=payload(mode="view", bbox=panned)).json()
    assert view["cache_hit"] is False and segmenter.encoder_calls == 3


def _run_concurrently(app: Any, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
                return list(await asyncio.gather(*(c.post("/segment", json=b) for b in bodies)))

    return asyncio.run(main())


def test_concurrent_identical_requests_share_one_encode(segmenter: Segmenter, tiles: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    embed = segmenter.embed
    monkeypatch.setattr(segmenter, "embed", lambda image: calls.append(1) or embed(image))
    tiles.fail, tiles.delay_s = "slow", 0.2  # every request arrives while the first fetch is running
    app = create_app(settings_for(tiles.url_template), segmenter)
    responses = _run_concurrently(app, [payload()] * 4)
    assert [r.status_code for r in responses] == [200] * 4
    assert len(calls) == 1 and segmenter.encoder_calls == 1
    geoms = {str(r.json()["features"][0]["geometry"]) for r in responses}
    assert len(geoms) == 1


def test_a_failed_computation_reaches_every_waiter_and_is_not_cached(segmenter: Segmenter, tiles: Any) -> None:
    tiles.fail = "500"
    app = create_app(settings_for(tiles.url_template), segmenter)
    responses = _run_concurrently(app, [payload()] * 3)
    assert [r.status_code for r in responses] == [502] * 3
    assert all("HTTP 500" in r.json()["error"] for r in responses)
    tiles.fail = None
    with TestClient(app) as c:
        assert c.post("/segment", json=payload()).status_code == 200


@pytest.mark.parametrize(("body", "where"), [
    ({"prompt": [point()], "zoom": ZOOM, "source_type": "tiles"}, "bbox"),
    (payload(bbox={"ne": {"lat": 95, "lng": 10}, "sw": {"lat": 44, "lng": 9}}), "bbox.ne.lat"),
    (payload(bbox={"ne": {"lat": 44, "lng": 10}, "sw": {"lat": 45, "lng": 9}}), "north-east"),
    (payload(prompt=[{"type": "circle", "data": {"lat": LAT, "lng": LNG}}]), "prompt.0"),
    (payload(prompt=[]), "prompt"),
    (payload(prompt=[point(label=2)]), "label"),
    (payload(zoom="high"), "zoom"),
    (payload(mode="tiles"), "mode"),
])
def test_malformed_payloads_are_422_with_a_readable_message(client: TestClient, body: dict[str, Any],
                                                              where: str) -> None:
    r = client.post("/segment", json=body)
    assert r.status_code == 422
    out = r.json()
    assert out["error"].startswith("invalid request: ") and where in out["error"]
    assert isinstance(out["detail"], list) and out["detail"]


def test_invalid_json_is_422(client: TestClient) -> None:
    r = client.post("/segment", content=b'{"bbox": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]


def raw(body: dict[str, Any], old: str, new: str) -> bytes:
    """The JSON of ``body`` with one piece of text replaced (values json.dumps would not write)."""
    text = json.dumps(body)
    assert old in text
    return text.replace(old, new, 1).encode()


DIGITS = sys.get_int_max_str_digits()
HOSTILE = {  # body -> (status, what the sentence must say)
    "not UTF-8": (b'{"bbox": "\xff\xfe", "zoom": 12}', 422, "the body is not UTF-8 text (byte 0xff at offset 10)"),
    "Latin-1 text": (json.dumps(payload(source_type="t\u00e9les"), ensure_ascii=False).encode("latin-1"), 422,
                     "not UTF-8 text (byte 0xe9 at offset"),
    "30000 nested lists": (b"[" * 30000 + b"]" * 30000, 422, "nests arrays or objects too deeply"),
    "nesting in a field": (b'{"bbox": ' + b"[" * 30000 + b"]" * 30000 + b"}", 422, "too deeply"),
    "a number of many digits": (raw(payload(), '"zoom": 12', f'"zoom": {"9" * (DIGITS + 1)}'), 422,
                                f"a number in the body has more than {DIGITS} digits"),
    "a long integer latitude": (raw(payload(), '"data": {"lat": 45.0', f'"data": {{"lat": {"9" * 4000}'), 422,
                                "prompt.0.point.data.lat: input should be a valid number"),
    "1e400": (raw(payload(), '"lng": 10.0}, "label"', '"lng": 1e400}, "label"'), 422,
              "prompt.0.point.data.lng: input should be a finite number"),
    "NaN": (raw(payload(), '"data": {"lat": 45.0', '"data": {"lat": NaN'), 422,
            "prompt.0.point.data.lat: input should be a finite number"),
    "Infinity in the bbox": (raw(payload(), '"lng": 10.08}', '"lng": Infinity}'), 422,
                             "bbox.ne.lng: input should be a finite number"),
    "-Infinity": (raw(payload(), '"lng": 9.92}', '"lng": -Infinity}'), 422, "bbox.sw.lng: input should be a finite"),
    "empty prompt list": (json.dumps(payload(prompt=[])).encode(), 422, "prompt: list should have at least 1 item"),
    "unknown prompt type": (json.dumps(payload(prompt=[{"type": "polygon", "data": {}}])).encode(), 422,
                            "does not match any of the expected tags: 'point', 'rectangle'"),
    "prompt without a type": (json.dumps(payload(prompt=[{"data": {}}])).encode(), 422, "prompt.0"),
    "a list body": (b"[]", 422, "the request body: input should be a valid dictionary"),
    "null": (b"null", 422, "the request body"),
    "several MB": (json.dumps(payload(prompt=[point()] * 60_000)).encode(), 413, "larger than 65536 bytes"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_bodies_get_a_4xx_sentence_never_a_500(client: TestClient, tiles: Any, case: str) -> None:
    body, status, says = HOSTILE[case]
    r = client.post("/segment", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert says in error
    assert "\n" not in error and ". " not in error and len(error) < 300  # one sentence
    assert tiles.requests == []


def test_100000_nested_lists_are_422_under_a_larger_body_limit(segmenter: Segmenter, tiles: Any) -> None:
    with TestClient(create_app(settings_for(tiles.url_template, max_body_bytes=300_000), segmenter)) as c:
        r = c.post("/segment", content=b"[" * 100_000 + b"]" * 100_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert r.json() == {"error": "invalid request: the body nests arrays or objects too deeply to read",
                        "detail": [{"loc": ["body"], "msg": "the body nests arrays or objects too deeply to read",
                                    "type": "json_invalid"}]}


MAP_BODY = {"bbox": bbox(), "zoom": ZOOM, "source_type": "tiles"}


@pytest.mark.parametrize(("body", "says"), [
    (HOSTILE["not UTF-8"][0], "not UTF-8"),
    (HOSTILE["30000 nested lists"][0], "too deeply"),
    (raw(MAP_BODY, '"zoom": 12', f'"zoom": {"9" * (DIGITS + 1)}'), f"more than {DIGITS} digits"),
    (raw(MAP_BODY, '"lng": 10.08}', '"lng": NaN}'), "bbox.ne.lng: input should be a finite number"),
])
def test_map_reads_bodies_as_segment_does(segmenter: Segmenter, tiles: Any, body: bytes, says: str) -> None:
    with TestClient(create_app(settings_for(tiles.url_template), segmenter, DiscAdapter())) as c:
        r = c.post("/map", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and says in r.json()["error"]


def tiny_bbox(pixels: float) -> dict[str, Any]:
    """A bbox about ``pixels`` wide and high at ZOOM around the disc."""
    half = pixels / 2 * 360 / (256 * 2**ZOOM)
    return {"ne": {"lat": LAT + half * 0.7, "lng": LNG + half}, "sw": {"lat": LAT - half * 0.7, "lng": LNG - half}}


@pytest.mark.parametrize("mode", ["grid", "view"])
def test_a_view_of_a_few_pixels_is_400_too_small(client: TestClient, tiles: Any, mode: str) -> None:
    r = client.post("/segment", json=payload(mode=mode, bbox=tiny_bbox(0.2)))
    assert r.status_code == 400
    error = r.json()["error"]
    assert re.fullmatch(r"bbox too small for zoom 12: it spans [12] x [12] pixels and at least 8 per side are needed; "
                        r"zoom in or choose a larger area", error), error
    assert client.post("/segment", json=payload(mode=mode, bbox=tiny_bbox(12))).status_code == 200
    assert "channel" not in error


def test_map_of_a_few_pixels_is_400_too_small(segmenter: Segmenter, tiles: Any) -> None:
    with TestClient(create_app(settings_for(tiles.url_template), segmenter, DiscAdapter())) as c:
        r = c.post("/map", json={"bbox": tiny_bbox(3), "zoom": ZOOM, "source_type": "tiles"})
    assert r.status_code == 400 and "bbox too small for zoom 12" in r.json()["error"]


def test_a_damaged_local_raster_is_502_without_its_path(segmenter: Segmenter, tiles: Any, tmp_path: Path) -> None:
    whole = write_disc_geotiff(tmp_path / "whole.tif", "Mars")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.path.read_bytes()[: whole.path.stat().st_size // 2])
    settings = settings_for(tiles.url_template, extra_sources={"mars": {"type": "local", "path": str(cut)}})
    body = {"bbox": bbox(whole.lng, whole.lat, 0.05), "prompt": [point(whole.lng, whole.lat)], "zoom": 10,
            "source_type": "mars"}
    with TestClient(create_app(settings, segmenter)) as c:
        r = c.post("/segment", json=body)
    assert r.status_code == 502
    error = r.json()["error"]
    assert error.startswith("source 'mars': its raster file is damaged, truncated or gone")
    assert str(tmp_path) not in error


def test_bad_requests_are_400_and_fetch_nothing(segmenter: Segmenter, tiles: Any) -> None:
    with TestClient(create_app(settings_for(tiles.url_template, max_prompts=2), segmenter)) as c:
        cases = {
            "bbox too large for zoom 18": payload(zoom=18),
            "too many prompts: 3, at most 2": payload(prompt=[point(), point(LNG + 0.01), point(LNG - 0.01)]),
            "lies outside the bbox": payload(prompt=[point(LNG + 0.5)]),
            "unknown source 'nowhere'": payload(source_type="nowhere"),
            "unknown source 'http": payload(source_type=tiles.url_template),  # a URL is just an unknown name
            "outside source 'tiles'": payload(zoom=20),
            "background points only": payload(prompt=[point(label=0)]),
        }
        for message, body in cases.items():
            r = c.post("/segment", json=body)
            assert r.status_code == 400, (message, r.text)
            assert message in r.json()["error"]
    assert tiles.requests == []


def test_token_guards_the_api_but_not_the_page(segmenter: Segmenter, tiles: Any) -> None:
    with TestClient(create_app(settings_for(tiles.url_template, token="s3cret"), segmenter)) as c:
        assert c.post("/segment", json=payload()).status_code == 401
        wrong = c.post("/segment", json=payload(), headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "token" in wrong.json()["error"]
        assert c.get("/sources").status_code == 401 and c.get("/models").status_code == 401
        assert c.get(f"/tiles/tiles/{ZOOM}/2161/1473.png").status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.post("/segment", json=payload(), headers=ok).status_code == 200
        assert c.get("/sources", headers=ok).status_code == 200
        assert c.get(f"/tiles/tiles/{ZOOM}/2161/1473.png", params={"token": "s3cret"}).status_code == 401
        assert c.get(f"/tiles/tiles/{ZOOM}/2161/1473.png", headers=ok).status_code == 200  # never in URLs
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200


def test_large_bodies_are_413(segmenter: Segmenter, tiles: Any) -> None:
    with TestClient(create_app(settings_for(tiles.url_template, max_body_bytes=2048), segmenter)) as c:
        big = payload(prompt=[point()] * 40)
        r = c.post("/segment", json=big)
        assert r.status_code == 413 and "2048 bytes" in r.json()["error"]
        streamed = c.post("/segment", content=iter([b'{"bbox": "', b"x" * 4000, b'"}']),
                          headers={"Content-Type": "application/json"})  # no Content-Length: counted while read
        assert streamed.status_code == 413
    assert tiles.requests == []


@pytest.mark.parametrize(("fail", "reason"), [("500", "HTTP 500"), ("garbage", "/12/2161/1473.png"),
                                              ("hang", "timed out")])
def test_tile_failures_are_502_with_the_reason(segmenter: Segmenter, tiles: Any, fail: str, reason: str) -> None:
    tiles.fail = fail
    with TestClient(create_app(settings_for(tiles.url_template, fetch_timeout_s=0.5), segmenter)) as c:
        t0 = time.monotonic()
        r = c.post("/segment", json=payload())
        assert r.status_code == 502 and reason in r.json()["error"]
        assert time.monotonic() - t0 < 30  # a hang guard, not a speed target


def test_cors_is_off_unless_configured(segmenter: Segmenter, tiles: Any) -> None:
    origin = {"Origin": "https://maps.example.org"}
    with TestClient(create_app(settings_for(tiles.url_template), segmenter)) as c:
        assert "access-control-allow-origin" not in c.get("/health", headers=origin).headers
    settings = settings_for(tiles.url_template, cors_origins=["https://maps.example.org"])
    with TestClient(create_app(settings, segmenter)) as c:
        r = c.get("/health", headers=origin)
        assert r.headers["access-control-allow-origin"] == "https://maps.example.org"
        pre = c.options("/segment", headers={**origin, "Access-Control-Request-Method": "POST",
                                             "Access-Control-Request-Headers": "content-type"})
        assert pre.status_code == 200 and "POST" in pre.headers["access-control-allow-methods"]
        other = c.get("/health", headers={"Origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in other.headers


def test_info_endpoints_page_and_openapi(client: TestClient, tiles: Any) -> None:
    assert client.get("/health").json() == {"status": "ok", "model": "sam", "trusted": False, "adapter": None,
                                            "text_prompts": False, "detector": None}
    models = client.get("/models").json()
    assert models["model"]["input_size"] == 256 and "sam-vit-base" in models["available"]
    sources = client.get("/sources").json()
    assert sources["default"] == "tiles" and sources["sources"][0]["tiles"] == "/tiles/tiles/{z}/{x}/{y}.png"
    tile = client.get(f"/tiles/tiles/{ZOOM}/2161/1473.png")
    assert tile.status_code == 200 and tile.content.startswith(b"\x89PNG")
    assert "max-age" in tile.headers["cache-control"]
    assert client.get("/tiles/elsewhere/1/0/0.png").status_code == 404
    assert client.get("/tiles/tiles/3/9/0.png").status_code == 400  # no such tile at zoom 3
    schema = client.get("/openapi.json").json()
    assert {"/segment", "/map", "/health", "/models", "/sources"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert client.get("/nowhere").json()["error"] == "nothing here: /nowhere"


def test_unexpected_errors_are_500_json_without_traceback(segmenter: Segmenter, tiles: Any) -> None:
    async def broken(request: Any) -> None:
        raise RuntimeError("secret detail /etc/passwd")

    app = create_app(settings_for(tiles.url_template), segmenter)
    with TestClient(app, raise_server_exceptions=False) as c:
        app.state.engine.segment = broken
        r = c.post("/segment", json=payload())
    assert r.status_code == 500
    assert r.json() == {"error": "internal error (RuntimeError); see the server log"}


def test_mars_geotiff_source_answers_in_mars_coordinates(segmenter: Segmenter, tiles: Any, tmp_path: Path) -> None:
    mars = write_disc_geotiff(tmp_path / "mars.tif", "Mars")
    settings = settings_for(tiles.url_template, extra_sources={"mars": {"type": "local", "path": str(mars.path)}})
    body = {"bbox": bbox(mars.lng, mars.lat, 0.05), "prompt": [point(mars.lng, mars.lat)], "zoom": 10,
            "source_type": "mars"}
    with TestClient(create_app(settings, segmenter)) as c:
        out = c.post("/segment", json=body).json()
    assert out["body"] == "Mars" and out["crs"] != "EPSG:4326"
    geom = shapely.geometry.shape(out["features"][0]["geometry"])
    assert geom.contains(shapely.geometry.Point(mars.lng, mars.lat))
    assert tiles.requests == []


class DiscAdapter:
    """A stand-in adapter: class 1 where the image is the tile server's bright disc (pixelwise)."""

    needs_prompts = False

    def __init__(self, tile: int = 128) -> None:
        self.classes = {0: "background", 1: "disc"}
        self.config = {"method": "pixelwise"}
        self.method = SimpleNamespace(num_classes=2, preprocessing=Preprocessing(size=tile))
        self.calls = 0

    def predict_sample(self, sample: Any) -> Prediction:
        self.calls += 1
        p = (sample.pixels[:, :, 0] == DISC_VALUE).astype(np.float32) * 0.9 + 0.05
        return Prediction(labels=(p > 0.5).astype(np.uint8), probabilities=np.stack([1 - p, p]))


def test_map_returns_class_polygons_over_a_tiled_view(segmenter: Segmenter, tiles: Any) -> None:
    adapter = DiscAdapter(tile=128)
    with TestClient(create_app(settings_for(tiles.url_template), segmenter, adapter, adapter_name="discs")) as c:
        r = c.post("/map", json={"bbox": bbox(), "zoom": ZOOM, "source_type": "tiles"})
        assert c.get("/health").json()["adapter"] == "discs"
    assert r.status_code == 200, r.text
    out = r.json()
    assert adapter.calls > 4  # a ~470 px view in 128 px tiles
    (feature,) = out["features"]  # one disc, whole across tile seams
    assert feature["properties"]["class"] == 1 and feature["properties"]["name"] == "disc"
    assert feature["properties"]["probability"] == pytest.approx(0.95, abs=0.01)
    disc = shapely.geometry.shape(feature["geometry"])
    assert disc.contains(shapely.geometry.Point(LNG, LAT))
    assert disc.area == pytest.approx(np.pi * 0.02**2 / np.cos(np.radians(LAT)), rel=0.1)


def test_map_with_a_trained_tiny_adapter_and_without_one(segmenter: Segmenter, tiles: Any, tmp_path: Path) -> None:
    from samadapt.methods import build_method
    from samadapt.train.adapter import load_adapter, save_adapter

    method = build_method("domain-decoder", segmenter.loaded, width=16)
    adapter = load_adapter(save_adapter(method, tmp_path / "ad", classes={0: "ground", 1: "crater"}),
                           base=segmenter.loaded)
    body = {"bbox": bbox(half=0.03), "zoom": ZOOM, "source_type": "tiles"}
    with TestClient(create_app(settings_for(tiles.url_template), segmenter, adapter)) as c:
        out = c.post("/map", json=body).json()
    assert out["type"] == "FeatureCollection" and out["adapter"] == "ad"
    for f in out["features"]:  # random weights: whatever it finds is a valid class polygon
        assert f["properties"]["name"] == "crater" and 0 <= f["properties"]["probability"] <= 1
    with TestClient(create_app(settings_for(tiles.url_template), segmenter)) as c:
        r = c.post("/map", json=body)
    assert r.status_code == 404 and "--adapter" in r.json()["error"]
