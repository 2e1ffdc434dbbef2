"""``samadapt segment --text``: phrases to polygons that carry their phrase, through SAM 3 or a detector."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from helpers.cli import run_cli
from helpers.rasters import GRID, write_geotiff
from helpers.text import KnownBoxDetector
from samadapt.models.tiny import save_tiny_model
from samadapt.text.options import TextSearch
from samadapt.text.tiny_detectors import save_tiny_detector


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("text-models")
    return {"sam3": save_tiny_model(root / "sam3", "sam3"), "sam": save_tiny_model(root / "sam", "sam"),
            "dino": save_tiny_detector(root / "dino", "grounding-dino")}


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    data = rng.integers(20, 60, size=(3, 200, 300), dtype=np.uint8)
    data[:, 60:140, 100:220] = 220
    return write_geotiff(tmp_path / "scene.tif", data)


def test_sam3_answers_a_phrase_with_polygons_that_carry_it(models: dict[str, Path], scene: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.gpkg"
    code, text = run_cli(["segment", str(scene), "--model", str(models["sam3"]), "--text", "square",
                          "--out", str(out)], monkeypatch, capsys)
    assert code == 0, text
    assert len(gpd.read_file(out)) >= 0  # a layer, maybe empty: random weights rarely pass the 0.3 score
    out2 = tmp_path / "all.gpkg"
    code, text = run_cli(["segment", str(scene), "--model", str(models["sam3"]), "--text", "square", "--text", "pit",
                          "--box-threshold", "0", "--out", str(out2)], monkeypatch, capsys)
    assert code == 0, text
    frame = gpd.read_file(out2)
    assert len(frame) > 0 and set(frame["phrase"]) == {"square", "pit"}
    assert ((frame["detector_score"] > 0) & (frame["detector_score"] <= 1)).all()


def test_a_detector_gives_sam_its_boxes(models: dict[str, Path], scene: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.gpkg"
    code, text = run_cli(["segment", str(scene), "--model", str(models["sam"]), "--detector", str(models["dino"]),
                          "--text", "square", "--out", str(out)], monkeypatch, capsys)
    assert code == 0, text
    assert out.is_file()


def test_polygons_lie_in_the_known_box_and_carry_phrase_and_score(models: dict[str, Path], scene: Path,
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    fake = KnownBoxDetector({"square": [(100, 60, 220, 140)], "pit": [(10, 10, 40, 30)]}, score=0.8)
    monkeypatch.setattr(TextSearch, "open_detector", lambda self, device: fake)
    out = tmp_path / "o.geojson"
    code, text = run_cli(["segment", str(scene), "--model", str(models["sam"]), "--detector", "grounding-dino-tiny",
                          "--text", "square", "--text", "pit", "--out", str(out)], monkeypatch, capsys)
    assert code == 0, text
    assert fake.calls == [((200, 300, 3), ("square", "pit"))]
    frame = gpd.read_file(out)
    assert list(frame["phrase"]) == ["square", "pit"] and np.allclose(frame["detector_score"], 0.8)
    for phrase, (x0, y0, x1, y1) in (("square", (100, 60, 220, 140)), ("pit", (10, 10, 40, 30))):
        (mx0, my1), (mx1, my0) = GRID * (x0, y0), GRID * (x1, y1)  # rows grow downwards, y upwards
        geom = frame.loc[frame["phrase"] == phrase, "geometry"].iloc[0]
        assert shapely.box(mx0, my0, mx1, my1).buffer(1e-6).contains(geom), phrase


@pytest.mark.parametrize(("args", "message"), [
    (["--text", "pit"], "cannot read text; add --detector"),
    (["--detector", "grounding-dino-tiny"], "--detector applies to a text search"),
    (["--text", "pit", "--box", "1,1,5,5", "--detector", "grounding-dino-tiny"], "--text finds its own objects"),
    (["--text", "pit", "--text", "pit", "--detector", "grounding-dino-tiny"], "given twice"),
    (["--text", " ", "--detector", "grounding-dino-tiny"], "phrase is empty"),
    (["--text", "pit", "--detector", "grounding-dino-tiny", "--box-threshold", "1.5"], "between 0 and 1"),
])
def test_text_options_are_checked_before_any_model_loads(models: dict[str, Path], scene: Path, tmp_path: Path,
                                                         args: list[str], message: str,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli(["segment", str(scene), "--model", str(models["sam"]), *args, "--out",
                          str(tmp_path / "o.gpkg")], monkeypatch, capsys)
    assert code == 2 and message in text, text
    assert not (tmp_path / "o.gpkg").exists()


def test_sam3_refuses_a_detector_and_a_text_threshold(models: dict[str, Path], scene: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    base = ["segment", str(scene), "--model", str(models["sam3"]), "--text", "pit", "--out", str(tmp_path / "o.gpkg")]
    code, text = run_cli([*base, "--detector", "owlv2-base"], monkeypatch, capsys)
    assert code == 2 and "SAM 3 reads text itself" in text
    code, text = run_cli([*base, "--text-threshold", "0.3"], monkeypatch, capsys)
    assert code == 2 and "--text-threshold applies to GroundingDINO only" in text


def test_sam3_exemplars_with_and_without_a_phrase(models: dict[str, Path], scene: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    base = ["segment", str(scene), "--model", str(models["sam3"]), "--box-threshold", "0"]
    code, text = run_cli([*base, "--text", "square", "--exemplar", "100,60,220,140", "--out",
                          str(tmp_path / "a.gpkg")], monkeypatch, capsys)
    assert code == 0, text
    assert set(gpd.read_file(tmp_path / "a.gpkg")["phrase"]) == {"square"}
    code, text = run_cli([*base, "--exemplar", "100,60,220,140,1", "--exemplar", "0,0,30,30,0", "--out",
                          str(tmp_path / "b.gpkg")], monkeypatch, capsys)
    assert code == 0, text
    assert set(gpd.read_file(tmp_path / "b.gpkg")["phrase"]) == {"visual"}  # what SAM 3 reads for boxes alone
    code, text = run_cli([*base, "--exemplar", "100,60,220", "--out", str(tmp_path / "c.gpkg")], monkeypatch, capsys)
    assert code == 2 and "--exemplar takes x0,y0,x1,y1" in text
    code, text = run_cli(["segment", str(scene), "--model", str(models["sam"]), "--exemplar", "1,1,9,9",
                          "--out", str(tmp_path / "d.gpkg")], monkeypatch, capsys)
    assert code == 2 and "SAM 3's concept prompt" in text
