"""GroundingDINO and OWLv2 detectors: preprocessing and post-processing match transformers, boxes land in pixels.

Tiny random detectors stand in for the published ones (same file layout, same loading code);
where a test needs known model output, the model is replaced by a stub returning chosen
logits and boxes, so the expected pixel boxes can be written down by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from samadapt.errors import CheckpointError, InputError, ModelNotFoundError, OutputExistsError
from samadapt.models.digest import file_sha256
from samadapt.text.detectors import load_detector
from samadapt.text.grounding_dino import GroundingDinoDetector, GroundingDinoPreprocessing
from samadapt.text.owlv2 import Owlv2Detector, Owlv2Preprocessing
from samadapt.text.tiny_detectors import save_tiny_detector
from samadapt.text.types import Thresholds

# A non-square image, taller than wide in one test and wider than tall in others, so any
# mix-up of axes, or of OWLv2's padding, moves the boxes.
H, W = 150, 260


@pytest.fixture(scope="session")
def tiny_detectors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-detectors")
    return {family: save_tiny_detector(root / family, family) for family in ("grounding-dino", "owlv2")}


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    img[40:90, 100:180] = 240
    return img


class StubModel:
    """Stands in for a detector model: returns fixed logits and boxes whatever the input."""

    def __init__(self, logits: torch.Tensor, boxes: torch.Tensor, config: Any = None) -> None:
        self.out = SimpleNamespace(logits=logits[None], pred_boxes=boxes[None])
        self.config = config
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **inputs: Any) -> SimpleNamespace:
        self.calls.append(inputs)
        return self.out


# --- preprocessing -------------------------------------------------------------------------

@pytest.mark.parametrize("size", [{"shortest_edge": 128, "longest_edge": 213}, None])
@pytest.mark.parametrize("shape", [(H, W, 3), (W, H, 3)])
def test_grounding_dino_preprocessing_equals_transformers(size: dict[str, int] | None, shape: tuple[int, ...]) -> None:
    from transformers import GroundingDinoImageProcessorPil

    img = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    kwargs = {} if size is None else {"size": size}  # None: transformers' defaults (800 / 1333)
    ref = GroundingDinoImageProcessorPil(**kwargs)(images=img, return_tensors="pt")["pixel_values"]
    ours = GroundingDinoPreprocessing.from_config(kwargs)(img)
    assert ours.shape == ref.shape
    # Both resize the uint8 image with PIL's bilinear filter and normalise in float32: equal to rounding.
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(H, W, 3), (W, H, 3), (40, 70, 3)])
def test_owlv2_preprocessing_equals_transformers(shape: tuple[int, ...]) -> None:
    pytest.importorskip("scipy")  # transformers' OWLv2 processor resizes with scipy; ours needs only numpy
    from transformers import Owlv2ImageProcessorPil

    img = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    size = {"height": 128, "width": 128}  # downsamples (anti-aliased) the first two, upsamples the third
    ref = Owlv2ImageProcessorPil(size=size)(images=img, return_tensors="pt")["pixel_values"]
    ours = Owlv2Preprocessing.from_config({"size": size})(img)
    assert ours.shape == ref.shape == (1, 3, 128, 128)
    # Ours blurs and interpolates in float64, scipy in float32: 1e-5 is a few float32 steps after
    # dividing by CLIP's std (~0.27); padding with the wrong value or on the wrong side moves values by > 0.1.
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_owlv2_default_preprocessing_is_transformers_default() -> None:
    pre = Owlv2Preprocessing.from_config({})
    assert (pre.size, pre.pad_value) == (960, 0.0)
    gd = GroundingDinoPreprocessing.from_config({})
    assert (gd.shortest_edge, gd.longest_edge) == (800, 1333)


# --- post-processing against transformers on a tiny model -------------------------------------

def test_grounding_dino_post_processing_equals_transformers(tiny_detectors: dict[str, Path], rgb: np.ndarray) -> None:
    from transformers import GroundingDinoImageProcessorPil, GroundingDinoProcessor

    det = load_detector(tiny_detectors["grounding-dino"])
    assert isinstance(det, GroundingDinoDetector)
    phrases = ["pit", "crater"]
    inputs, masks = det.encode(phrases)
    with torch.no_grad():
        out = det.model(pixel_values=det.preprocessing(rgb), **inputs)
    # Ours scores a box by its phrases' tokens only; transformers also by [CLS], [SEP] and the
    # separators. With those silenced the two must agree box for box. The tiny model's logits
    # are rescaled so that scores spread over (0, 1) and the thresholds cut somewhere.
    logits = out.logits[0].clone()
    t = masks.shape[1]
    logits[:, :t][:, ~masks.any(axis=0)] = float("-inf")
    finite = torch.isfinite(logits)
    logits[finite] = (logits[finite] - logits[finite].mean()) / logits[finite].std() * 2
    out.logits = logits[None]
    det.model = StubModel(out.logits[0], out.pred_boxes[0])

    ours = det.detect(rgb, phrases, Thresholds(box=0.3, text=0.3))
    processor = GroundingDinoProcessor(GroundingDinoImageProcessorPil(), det.tokenizer)
    ref = processor.post_process_grounded_object_detection(
        out, inputs["input_ids"], threshold=0.3, text_threshold=0.3, target_sizes=[(H, W)])[0]
    assert 0 < len(ours) < logits.shape[0]  # the threshold keeps some boxes and drops others
    order = torch.argsort(ref["scores"], descending=True)
    assert [d.score for d in ours] == pytest.approx(ref["scores"][order].tolist(), abs=1e-6)
    np.testing.assert_allclose([d.box for d in ours], ref["boxes"][order].numpy(), atol=1e-3)
    for d, i in zip(ours, order.tolist(), strict=True):
        assert d.phrase in ref["text_labels"][i].split()  # transformers names every phrase above the threshold


def test_owlv2_post_processing_equals_transformers(tiny_detectors: dict[str, Path], rgb: np.ndarray) -> None:
    from transformers import Owlv2ImageProcessorPil, Owlv2Processor

    det = load_detector(tiny_detectors["owlv2"])
    assert isinstance(det, Owlv2Detector)
    phrases = ["pit", "crater", "dune"]
    with torch.no_grad():
        out = det.model(pixel_values=det.preprocessing(rgb), **det.encode(phrases))
    out.logits = out.logits / out.logits.abs().max() * 4  # spread the tiny model's saturated scores
    det.model = StubModel(out.logits[0], out.pred_boxes[0], det.model.config)

    ours = det.detect(rgb, phrases, Thresholds(box=0.5))
    processor = Owlv2Processor(Owlv2ImageProcessorPil(), det.tokenizer)
    ref = processor.post_process_grounded_object_detection(out, threshold=0.5, target_sizes=[(H, W)],
                                                            text_labels=[phrases])[0]
    assert 0 < len(ours) < out.logits.shape[1]
    order = torch.argsort(ref["scores"], descending=True).tolist()
    assert [d.score for d in ours] == pytest.approx([ref["scores"][i].item() for i in order], abs=1e-6)
    assert [d.phrase for d in ours] == [ref["text_labels"][i] for i in order]
    np.testing.assert_allclose([d.box for d in ours], ref["boxes"][order].numpy(), atol=1e-3)


# --- boxes in pixels, thresholds, phrases (known model output) --------------------------------

def _gd_logits(det: GroundingDinoDetector, phrases: list[str], per_box: list[dict[str, float]]) -> torch.Tensor:
    """(Q, 256) logits: each box's logit on each named phrase's tokens (or "[CLS]"), -10 elsewhere."""
    _, masks = det.encode(phrases)
    logits = torch.full((len(per_box), 256), -10.0)
    for q, wanted in enumerate(per_box):
        for name, value in wanted.items():
            if name == "[CLS]":
                logits[q, 0] = value
            else:
                logits[q, : masks.shape[1]][torch.from_numpy(masks[phrases.index(name)])] = value
    return logits


def test_grounding_dino_boxes_in_original_pixels_thresholds_and_phrases(tiny_detectors: dict[str, Path]) -> None:
    det = load_detector(tiny_detectors["grounding-dino"])
    assert isinstance(det, GroundingDinoDetector)
    phrases = ["Pit", "crater rim"]  # a two-token phrase; the user's spelling comes back
    logits = _gd_logits(det, phrases, [
        {"Pit": 2.0, "crater rim": 1.0},    # 0.881, named Pit
        {"Pit": -1.0, "crater rim": 0.0},   # 0.5, named crater rim
        {"Pit": -0.85, "[CLS]": 10.0},      # 0.299: below 0.35; [CLS] does not count
    ])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.25, 0.1, 0.1, 0.2], [0.5, 0.5, 1.0, 1.0]])
    det.model = StubModel(logits, boxes)
    img = np.zeros((100, 300, 3), np.uint8)  # (H, W): boxes are relative to the whole resized image

    found = det.detect(img, phrases, Thresholds())
    assert [d.phrase for d in found] == ["Pit", "crater rim"]
    assert [d.score for d in found] == pytest.approx([1 / (1 + np.exp(-2.0)), 0.5], abs=1e-6)
    assert found[0].box == pytest.approx((120.0, 30.0, 180.0, 70.0), abs=1e-3)
    assert found[1].box == pytest.approx((60.0, 0.0, 90.0, 20.0), abs=1e-3)
    # the model saw the image resized to the tiny input (short side 128, long side capped at 213)
    assert det.model.calls[-1]["pixel_values"].shape == (1, 3, 71, 213)

    assert [d.phrase for d in det.detect(img, phrases, Thresholds(box=0.6))] == ["Pit"]
    assert det.detect(img, phrases, Thresholds(box=0.1, text=0.9)) == []  # the best phrase is under 0.9
    assert len(det.detect(img, phrases, Thresholds(box=0.25))) == 3


def test_owlv2_boxes_undo_the_square_padding(tiny_detectors: dict[str, Path]) -> None:
    det = load_detector(tiny_detectors["owlv2"])
    assert isinstance(det, Owlv2Detector)
    phrases = ["pit", "dune"]
    logits = torch.tensor([[-3.0, 1.0], [2.0, 0.5], [-3.0, -2.5]])  # dune 0.731; pit 0.881; 0.076 < 0.1
    # relative to the padded 300 x 300 square: the image fills its top 100 rows
    boxes = torch.tensor([[0.5, 1 / 6, 0.2, 0.1], [0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1]])
    det.model = StubModel(logits, boxes, det.model.config)
    img = np.zeros((100, 300, 3), np.uint8)

    found = det.detect(img, phrases, Thresholds())
    assert [d.phrase for d in found] == ["pit", "dune"]
    assert found[1].box == pytest.approx((120.0, 35.0, 180.0, 65.0), abs=1e-3)  # not (…, 11.7, …, 21.7)
    assert found[0].box == pytest.approx((15.0, 15.0, 45.0, 45.0), abs=1e-3)
    assert [d.phrase for d in det.detect(img, phrases, Thresholds(box=0.8))] == ["pit"]
    ids = det.model.calls[-1]["input_ids"]
    assert ids.shape == (2, 16)  # one query per phrase, padded as the published tokenizer pads

    with pytest.raises(InputError, match="--text-threshold applies to GroundingDINO only"):
        det.detect(img, phrases, Thresholds(text=0.3))


# --- loading -------------------------------------------------------------------------------

def test_tiny_detector_round_trip(tiny_detectors: dict[str, Path], rgb: np.ndarray, tmp_path: Path) -> None:
    for family, folder in tiny_detectors.items():
        det = load_detector(folder, device="cpu")
        assert det.trusted is False
        assert det.model_id == f"{family}:{file_sha256(folder / 'model.safetensors')}"
        assert det.name == str(folder)
        text = 0.0 if family == "grounding-dino" else None
        found = det.detect(rgb, ["pit", "crater"], Thresholds(box=0.0, text=text))
        assert found and all(d.phrase in ("pit", "crater") and 0 <= d.score <= 1 for d in found)
        assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
        assert not any(p.requires_grad and p.grad is not None for p in det.model.parameters())  # type: ignore[attr-defined]
        assert not det.model.training  # type: ignore[attr-defined]

    copy = tmp_path / "published-like"
    shutil.copytree(tiny_detectors["owlv2"], copy)
    (copy / "samadapt.json").unlink()  # no marker: the weights are taken as published ones
    assert load_detector(copy).trusted is True


def test_save_tiny_detector_layout_and_overwrite(tmp_path: Path) -> None:
    out = save_tiny_detector(tmp_path / "gd", "grounding-dino", seed=3)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "vocab.txt", "tokenizer_config.json",
            "special_tokens_map.json", "samadapt.json"} <= names
    assert json.loads((out / "samadapt.json").read_text()) == {"random_init": True, "family": "grounding-dino",
                                                               "seed": 3}
    assert (out / "model.safetensors").stat().st_size < 5e6
    with pytest.raises(OutputExistsError):
        save_tiny_detector(out, "grounding-dino")
    save_tiny_detector(out, "grounding-dino", seed=3, overwrite=True)
    owl = save_tiny_detector(tmp_path / "owl", "owlv2")
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= {p.name for p in owl.iterdir()}
    with pytest.raises(InputError, match="unknown detector family"):
        save_tiny_detector(tmp_path / "x", "yolo")  # type: ignore[arg-type]


def test_wrong_folders_are_refused(tmp_path: Path, tiny_detectors: dict[str, Path]) -> None:
    sam = tmp_path / "sam"
    sam.mkdir()
    (sam / "config.json").write_text(json.dumps({"model_type": "sam"}))
    with pytest.raises(CheckpointError, match="holds a 'sam' model, not a detector"):
        load_detector(sam)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_detector(tmp_path / "nowhere")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_detector(tmp_path)
    with pytest.raises(CheckpointError, match="not a detector"):
        load_detector("sam-vit-base")
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        load_detector("no-such-detector")


def test_weights_load_strictly(tmp_path: Path, tiny_detectors: dict[str, Path]) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_detectors["owlv2"], broken)
    weights = load_file(broken / "model.safetensors")
    dropped = sorted(weights)[0]
    del weights[dropped]
    weights["extra.weight"] = torch.zeros(2)
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"1 missing .*1 unexpected \(extra.weight\)"):
        load_detector(broken)


def test_bad_images_and_phrases_are_refused(tiny_detectors: dict[str, Path]) -> None:
    det = load_detector(tiny_detectors["grounding-dino"])
    with pytest.raises(InputError, match=r"\(H, W, 3\) uint8"):
        det.detect(np.zeros((10, 10), np.uint8), ["pit"], Thresholds())
    with pytest.raises(InputError, match="reads 256"):
        det.detect(np.zeros((10, 10, 3), np.uint8), [f"pit {i}" for i in range(100)], Thresholds())
    owl = load_detector(tiny_detectors["owlv2"])
    with pytest.raises(InputError, match="OWLv2 reads 16"):
        owl.detect(np.zeros((10, 10, 3), np.uint8), ["a very long description of a crater"], Thresholds())
