"""Pseudo-labels from phrases alone (``annotate --mode text``): masks, classes, provenance, a dataset train takes."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import rasterio

import samadapt.predict.segmenter as segment_module
from helpers.cli import run_cli
from helpers.decoders import box_decoder
from helpers.rasters import write_geotiff
from helpers.text import BrightDetector
from samadapt.annotate.text import annotate_text_dataset, annotate_text_image
from samadapt.imagery.read import from_array
from samadapt.predict.segmenter import Segmenter
from samadapt.text.options import TextSearch
from samadapt.text.search import TextQuery
from samadapt.text.types import Detection, Thresholds

#: Each image's bright square, in its pixels (x0, y0, x1, y1).
BOXES = {"a": (20, 24, 60, 64), "b": (64, 40, 112, 100)}


class FixedDetector:
    """A stand-in detector giving the same detections for any image."""

    name = "fixed"
    trusted = True
    model_id = "fixed:0"

    def __init__(self, detections: list[Detection]) -> None:
        self.detections = detections

    def detect(self, rgb: np.ndarray, phrases: Sequence[str], thresholds: Thresholds) -> list[Detection]:
        return [d for d in self.detections if d.phrase in phrases]


@pytest.fixture
def unlabelled(tmp_path: Path) -> Path:
    """A dataset of two 128 px images, each with a bright square, and no masks at all."""
    root = tmp_path / "unlabelled"
    (root / "images").mkdir(parents=True)
    for stem, (x0, y0, x1, y1) in BOXES.items():
        data = np.random.default_rng(len(stem)).integers(20, 90, size=(3, 128, 128)).astype(np.uint8)
        data[:, y0:y1, x0:x1] = 240
        write_geotiff(root / "images" / f"{stem}.tif", data)
    (root / "splits.json").write_text(json.dumps({"train": ["a"], "val": ["b"]}))
    return root


@pytest.fixture
def segmenter(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Segmenter:
    seg = Segmenter(tiny_models["sam"], cache=False)
    monkeypatch.setattr(segment_module, "decode", box_decoder(seg))  # segments exactly its box
    return seg


def test_pseudo_labels_fill_the_detected_box_with_the_phrase_class(unlabelled: Path, segmenter: Segmenter,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "pl"
    summary = annotate_text_dataset(unlabelled, out, segmenter=segmenter, query=TextQuery(("pit", "crater")),
                                    detector=BrightDetector())
    assert summary.images == 2 and summary.objects == 2 and summary.empty_objects == 0
    for stem, (x0, y0, x1, y1) in BOXES.items():
        with rasterio.open(out / "masks" / f"{stem}.tif") as ds:
            labels = ds.read(1)
        assert (labels[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] == 1).all()
        outside = np.ones_like(labels, bool)
        outside[y0 - 2 : y1 + 2, x0 - 2 : x1 + 2] = False
        assert (labels[outside] == 0).all()
    assert json.loads((out / "classes.json").read_text()) == {"0": "background", "1": "pit", "2": "crater"}
    assert json.loads((out / "splits.json").read_text()) == {"train": ["a"], "val": ["b"]}
    made = json.loads((out / "annotation.json").read_text())
    assert made["mode"] == "text" and made["phrases"] == ["pit", "crater"]
    assert made["detector"] == {"name": "bright", "id": "bright:0", "trusted": True}
    assert made["model"]["family"] == "sam" and made["thresholds"] == {"box": None, "text": None}
    manifest = json.loads((out / "samadapt.json").read_text())
    assert {"annotation.json", "classes.json", "masks/a.tif", "images/b.tif"} <= set(manifest["files"])
    rows = list(csv.DictReader(open(out / "sources.csv")))
    assert [(r["image"], r["class"], r["source"], r["score"]) for r in rows] == [
        ("a", "1", "text:pit", "0.9000"), ("b", "1", "text:pit", "0.9000")]


def test_where_objects_overlap_the_higher_detector_score_wins(segmenter: Segmenter) -> None:
    image = from_array(np.full((128, 128, 3), 50, np.uint8))
    detector = FixedDetector([Detection((10, 10, 70, 70), "pit", 0.4), Detection((40, 40, 100, 100), "dune", 0.7),
                              Detection((0, 100, 20, 120), "pit", 0.5)])
    ann = annotate_text_image(segmenter, image, "x", TextQuery(("pit", "dune")), detector)
    assert ann.labels[20, 20] == 1 and ann.labels[50, 50] == 2 and ann.labels[90, 90] == 2
    assert ann.labels[110, 10] == 1 and ann.labels[5, 120] == 0
    assert [(r.class_id, r.score) for r in ann.records] == [(1, pytest.approx(0.4)), (2, pytest.approx(0.7)),
                                                            (1, pytest.approx(0.5))]
    assert ann.records[0].pixels < 60 * 60 and ann.records[1].pixels >= 60 * 60 - 8 * 60


def test_cli_text_mode_makes_a_dataset_that_checks_and_trains(
    unlabelled: Path, segmenter: Segmenter, tiny_models: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(TextSearch, "open_detector", lambda self, device: BrightDetector())
    out = tmp_path / "pl"
    code, text = run_cli(["annotate", str(unlabelled), "--mode", "text", "--text", "pit", "-m",
                          str(tiny_models["sam"]), "--detector", "grounding-dino-tiny", "--box-threshold", "0.3",
                          "--out", str(out)], monkeypatch, capsys)
    assert code == 0, text
    assert "annotated 2 images, 2 objects from text (pit)" in text and "random-initialised" in text
    assert json.loads((out / "annotation.json").read_text())["thresholds"] == {"box": 0.3, "text": None}
    code, text = run_cli(["data", "check", str(out)], monkeypatch, capsys)
    assert code == 0, text
    code, text = run_cli(["train", str(out), "-m", str(tiny_models["sam"]), "--epochs", "1", "-o",
                          str(tmp_path / "adapter")], monkeypatch, capsys)
    assert code == 0, text
    assert (tmp_path / "adapter").is_dir()


@pytest.mark.parametrize(("args", "expect"), [
    (["--mode", "text"], "add --text PHRASE"),
    (["--text", "pit", "--detector", "grounding-dino-tiny"], "--text goes with --mode text"),
    (["--mode", "text", "--text", "pit", "--detector", "grounding-dino-tiny", "--compare"], "needs no labels"),
])
def test_cli_text_mode_refuses_what_does_not_go_with_it(
    unlabelled: Path, tiny_models: dict[str, Path], tmp_path: Path, args: list[str], expect: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    code, text = run_cli(["annotate", str(unlabelled), "-m", str(tiny_models["sam"]), *args, "--out",
                          str(tmp_path / "pl")], monkeypatch, capsys)
    assert code == 2 and expect in text, text
    assert not (tmp_path / "pl").exists()
