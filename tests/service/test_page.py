"""The browser page of the service, driven in Debian's chromium by playwright.

The real app runs in-process (uvicorn on 127.0.0.1, a free port) over the local tile server and
a tiny model whose mask decoder is ``helpers.decoders.box_decoder``: a click gives a small square around
the click and a box gives itself, so the page must draw each polygon where the user prompted.
Without chromium or playwright these tests skip, except under ``CI=true``, where a missing
browser is a failure.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
DISC = (10.0, 45.0)  # lng, lat of the bright disc the tile server draws
ZOOM = 12
TOKEN = "page-test-token"


def _require_browser() -> None:
    """Skip without chromium or playwright; under CI=true fail instead, so the test cannot vanish."""
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]'; no `playwright install` needed)")
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI=true a missing browser is a failure, not a skip")
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian chromium (not a playwright-downloaded browser)."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def tiles() -> Iterator[Any]:
    from helpers.tileserver import serve_tiles

    with serve_tiles(lng=DISC[0], lat=DISC[1], radius_deg=0.01) as server:
        yield server


@pytest.fixture(scope="module")
def segmenter(tiny_models: dict[str, Path]) -> Iterator[Any]:
    """The tiny SAM with the box decoder patched in for the whole module."""
    import samadapt.predict.segmenter as segment_module
    from helpers.decoders import box_decoder
    from samadapt.predict.segmenter import Segmenter

    seg = Segmenter(tiny_models["sam"], cache=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(segment_module, "decode", box_decoder(seg))
        yield seg


@contextmanager
def _serve(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread on a free 127.0.0.1 port; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the service did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _app(tiles: Any, segmenter: Any, token: str | None = None, **kw: Any) -> Any:
    from samadapt.service.app import create_app
    from samadapt.service.settings import ServiceSettings

    settings = ServiceSettings(
        sources={"disc": {"type": "xyz", "url": tiles.url_template, "attribution": "generated test tiles",
                          "min_zoom": 0, "max_zoom": 16}},
        default_source="disc", token=token,
    )
    return create_app(settings, segmenter, **kw)


@pytest.fixture(scope="module")
def service(browser: Any, tiles: Any, segmenter: Any) -> Iterator[str]:
    with _serve(_app(tiles, segmenter)) as url:
        yield url


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser tab (own cache and storage); fails the test on any uncaught script error."""
    # Reduced motion: the page then skips Leaflet's fade and zoom animations, so what is loaded is drawn.
    context = browser.new_context(viewport={"width": 960, "height": 640}, accept_downloads=True,
                                  reduced_motion="reduce")
    tab = context.new_page()
    tab.set_default_timeout(15_000)  # a shared, busy CI machine: generous waits, never fixed sleeps
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def _open(page: Any, url: str, lng: float, lat: float) -> tuple[float, float]:
    """Load the page centred on lng/lat at ZOOM; the map centre in page pixels."""
    page.goto(f"{url}/#map={ZOOM}/{lat}/{lng}")
    box = page.locator("#map").bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def _contains(box: dict[str, float], x: float, y: float) -> bool:
    return box["x"] <= x <= box["x"] + box["width"] and box["y"] <= y <= box["y"] + box["height"]


def test_the_page_loads_nothing_from_outside_the_package() -> None:
    """No CDN at run time: every URL the page names is a /static/ file shipped in the package."""
    import re
    from importlib.resources import files

    static = files("samadapt.service") / "static"
    texts = {name: (static / name).read_text() for name in ("index.html", "app.js", "app.css")}
    outside = re.compile(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", re.IGNORECASE)  # http://host/ or //host/
    for name, text in texts.items():
        assert not outside.search(text), f"{name} names an outside URL"
    referenced = re.findall(r'(?:src|href)="/static/([^"]+)"', texts["index.html"])
    assert {"vendor/leaflet/leaflet.js", "vendor/leaflet/leaflet.css", "app.js", "app.css"} <= set(referenced)
    for rel in referenced:
        assert (static / rel).is_file(), f"index.html needs /static/{rel}, which is not in the package"
    # the licence travels with the vendored copy, and the images its CSS asks for are there
    assert "BSD 2-Clause" in (static / "vendor/leaflet/LICENSE").read_text()
    css = (static / "vendor/leaflet/leaflet.css").read_text()
    for image in set(re.findall(r"url\((images/[^)]+)\)", css)):
        assert (static / "vendor/leaflet" / image).is_file(), image


def test_prompts_draw_polygons_that_download_as_geojson(page: Any, service: str, tiles: Any, tmp_path: Path) -> None:
    from PIL import Image
    from playwright.sync_api import expect
    from shapely.geometry import Point, shape

    from helpers.tileserver import DISC_VALUE, lnglat_to_world

    body = page.locator("body")
    cx, cy = _open(page, service, *DISC)
    expect(body).to_have_attribute("data-state", "idle")
    expect(page.locator("#model-warning")).to_be_visible()  # the tiny model is random-initialised

    # The base map comes through the service from the local tile server, placed right:
    # the disc the tile server draws at DISC is under the map centre.
    expect(body).to_have_attribute("data-tiles", "loaded")
    assert page.locator("#map img.leaflet-tile-loaded").count() >= 4
    wx, wy = lnglat_to_world(*DISC, ZOOM)
    assert (ZOOM, int(wx // 256), int(wy // 256)) in tiles.tile_requests()
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    assert shot.getpixel((round(cx), round(cy))) == (DISC_VALUE,) * 3

    # Click: one foreground point, one polygon around it, timings shown as the server sent them.
    with page.expect_response(lambda r: r.url.endswith("/segment")) as answer:
        page.mouse.click(cx, cy)
    first = answer.value.json()
    expect(page.locator("#feature-count")).to_have_text("1")
    expect(page.locator("path.seg-polygon")).to_have_count(1)
    expect(body).to_have_attribute("data-state", "idle")
    polygon = page.locator("path.seg-polygon").bounding_box()
    assert _contains(polygon, cx, cy) and polygon["width"] < 200 and polygon["height"] < 200
    assert page.locator("path.prompt-point.fg").count() == 1
    for stage in ("fetch", "encode", "decode", "vectorise", "total"):
        shown = page.locator(f"#t-{stage}").inner_text()
        assert shown.endswith(" ms") and abs(float(shown[:-3]) - first["timings_ms"][stage]) <= 0.5
    assert page.locator("#cache-hit").inner_text() == ("yes" if first["cache_hit"] else "no")
    assert page.locator("#model-name").inner_text() == first["model"]
    assert page.locator("#body-name").inner_text() == "Earth"

    # Shift-click: a background point for the same object (still one polygon).
    with page.expect_response(lambda r: r.url.endswith("/segment")) as answer:
        page.keyboard.down("Shift")
        page.mouse.click(cx - 40, cy + 30)
        page.keyboard.up("Shift")
    assert [p["label"] for p in json.loads(answer.value.request.post_data)["prompt"]] == [1, 0]
    expect(body).to_have_attribute("data-responses", "2")
    assert page.locator("path.prompt-point.bg").count() == 1
    expect(page.locator("#feature-count")).to_have_text("1")
    assert page.locator("#cache-hit").inner_text() == ("yes" if answer.value.json()["cache_hit"] else "no")

    # A new object from a box drawn with the Box tool: the polygon is the box.
    page.click("#new-object")
    page.click("#box-tool")
    expect(page.locator("#box-tool")).to_have_attribute("aria-pressed", "true")
    x0, y0, x1, y1 = cx - 150, cy - 80, cx - 70, cy - 20
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=4)
    page.mouse.up()
    expect(body).to_have_attribute("data-responses", "3")
    expect(page.locator("#feature-count")).to_have_text("2")
    expect(page.locator("path.seg-polygon")).to_have_count(2)
    assert page.locator("path.prompt-box").count() == 1
    drawn = page.locator("path.seg-polygon").nth(1).bounding_box()
    assert abs(drawn["x"] - x0) < 6 and abs(drawn["y"] - y0) < 6
    assert abs(drawn["x"] + drawn["width"] - x1) < 6 and abs(drawn["y"] + drawn["height"] - y1) < 6

    # Download GeoJSON (from the keyboard): both objects, in lng/lat, the first around the click.
    page.focus("#download")
    with page.expect_download() as download:
        page.keyboard.press("Enter")
    data = json.loads(Path(download.value.path()).read_text())
    assert download.value.suggested_filename.endswith(".geojson")
    assert data["type"] == "FeatureCollection" and data["body"] == "Earth"
    assert sorted(f["properties"]["object"] for f in data["features"]) == [0, 1]
    for feature in data["features"]:
        assert feature["type"] == "Feature" and shape(feature["geometry"]).is_valid
        assert isinstance(feature["properties"]["score"], (int, float))  # JSON writes 1.0 as 1
    clicked = next(f for f in data["features"] if f["properties"]["object"] == 0)
    assert shape(clicked["geometry"]).contains(Point(DISC))

    path = tmp_path / "page.png"
    page.screenshot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000

    page.click("#clear")
    expect(page.locator("#feature-count")).to_have_text("0")
    expect(page.locator("path.seg-polygon")).to_have_count(0)
    assert page.locator("path.prompt-point, path.prompt-box").count() == 0
    expect(page.locator("#download")).to_be_disabled()


def test_a_failing_tile_server_shows_the_error_banner(page: Any, service: str, tiles: Any) -> None:
    from playwright.sync_api import expect

    body = page.locator("body")
    tiles.fail = "500"
    try:
        cx, cy = _open(page, service, DISC[0] + 1.0, DISC[1] + 0.5)  # tiles nobody has fetched yet
        expect(page.locator("#banner")).to_contain_text("Base map tiles failed")
        page.mouse.click(cx, cy)
        expect(body).to_have_attribute("data-state", "error")
    finally:
        tiles.fail = None
    expect(page.locator("#banner")).to_be_visible()
    expect(page.locator("#banner")).to_contain_text("502")
    expect(page.locator("#feature-count")).to_have_text("0")
    assert body.get_attribute("data-responses") == "1"
    page.click("#banner-close")
    expect(page.locator("#banner")).to_be_hidden()
    expect(body).to_have_attribute("data-state", "idle")


def test_a_server_with_a_token_asks_for_it(page: Any, browser: Any, tiles: Any, segmenter: Any) -> None:
    from playwright.sync_api import expect

    with _serve(_app(tiles, segmenter, token=TOKEN)) as url:
        body = page.locator("body")
        cx, cy = _open(page, url, *DISC)
        expect(body).to_have_attribute("data-state", "auth")
        expect(page.locator("#auth")).to_be_visible()
        page.fill("#token", TOKEN)
        page.press("#token", "Enter")
        expect(body).to_have_attribute("data-state", "idle")
        expect(body).to_have_attribute("data-tiles", "loaded")
        assert page.locator("#map img.leaflet-tile-loaded").count() >= 4
        page.mouse.click(cx, cy)
        expect(page.locator("#feature-count")).to_have_text("1")
        assert page.evaluate("sessionStorage.getItem('samadapt.token')") == TOKEN


class DiscDetector:
    """A stand-in detector: the bounding box, in the view's pixels, of the tile server's bright disc."""

    name, trusted, model_id = "disc-finder", True, "fake:disc"

    def detect(self, rgb: Any, phrases: Any, thresholds: Any) -> list[Any]:
        import numpy as np

        from helpers.tileserver import DISC_VALUE
        from samadapt.text.types import Detection

        rows, cols = np.nonzero((rgb == DISC_VALUE).all(axis=2))
        if not len(rows):
            return []
        return [Detection((float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)),
                          phrases[0], 0.87)]


def test_a_typed_phrase_draws_the_polygons_found_with_their_phrase(page: Any, tiles: Any, segmenter: Any) -> None:
    from playwright.sync_api import expect

    from samadapt.service.text import TextPrompts

    with _serve(_app(tiles, segmenter, text=TextPrompts("sam", DiscDetector()))) as url:
        body = page.locator("body")
        cx, cy = _open(page, url, *DISC)
        expect(body).to_have_attribute("data-state", "idle")
        expect(page.locator("#text-prompt")).to_be_enabled()

        # Enter in the text box: one text prompt for the view, one polygon on the disc, labelled.
        page.fill("#text-prompt", "  bright   disc ")
        with page.expect_response(lambda r: r.url.endswith("/segment")) as answer:
            page.press("#text-prompt", "Enter")
        sent = json.loads(answer.value.request.post_data)
        assert sent["prompt"] == [{"id": 0, "type": "text", "data": "bright disc"}]
        assert answer.value.status == 200
        expect(page.locator("#feature-count")).to_have_text("1")
        expect(page.locator("path.seg-polygon")).to_have_count(1)
        expect(page.locator(".text-label")).to_have_text("bright disc 0.87")
        polygon = page.locator("path.seg-polygon").bounding_box()
        assert _contains(polygon, cx, cy) and polygon["width"] < 200 and polygon["height"] < 200

        # The Find button: another phrase is another object; a click afterwards is a point prompt of its own.
        page.fill("#text-prompt", "pit")
        page.click("#text-search")
        expect(body).to_have_attribute("data-responses", "2")
        expect(page.locator("path.seg-polygon")).to_have_count(2)
        expect(page.locator(".text-label").nth(1)).to_have_text("pit 0.87")
        with page.expect_response(lambda r: r.url.endswith("/segment")) as answer:
            page.mouse.click(cx - 100, cy + 80)
        assert [p["type"] for p in json.loads(answer.value.request.post_data)["prompt"]] == ["point"]
        expect(page.locator("#feature-count")).to_have_text("3")
        expect(body).to_have_attribute("data-state", "idle")


def test_the_text_box_says_what_a_server_without_a_detector_needs(page: Any, service: str) -> None:
    from playwright.sync_api import expect

    _open(page, service, *DISC)
    expect(page.locator("#text-prompt")).to_be_disabled()
    assert "--detector" in page.locator("#text-prompt").get_attribute("placeholder")
