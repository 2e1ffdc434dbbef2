"""SAM 3: its published layout, one embedding for tracker and concept prompts, and the gated download.

A tiny ``Sam3VideoModel`` saved as ``facebook/sam3`` publishes its model (``sam3_video`` config,
``detector_model.`` / ``tracker_model.`` / ``tracker_neck.`` weights, a CLIP tokenizer) stands in
for the 3.4 GB checkpoint, which cannot be fetched here. The numbers are compared with transformers'
own SAM 3 code run from pixels, not with fixed values.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from helpers.fake_hub import FakeHub
from samadapt.errors import CheckpointError, DownloadError
from samadapt.imagery.preprocess import prepare
from samadapt.models.loading import load_model, locate
from samadapt.models.registry import get_spec, preprocessing_for
from samadapt.models.sam3 import CONCEPT_THRESHOLD, PREFIXES
from samadapt.models.tiny import save_tiny_model
from samadapt.predict.segmenter import Segmenter
from samadapt.prompts.types import box, point
from samadapt.text.search import TextQuery, segment_text
from samadapt.text.types import Thresholds


@pytest.fixture(scope="module")
def tiny_sam3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("sam3") / "model", "sam3")


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.integers(20, 80, size=(90, 150, 3), dtype=np.uint8)
    image[20:60, 40:100] = 210
    return image


def test_tiny_sam3_is_laid_out_as_the_published_checkpoint(tiny_sam3: Path) -> None:
    config = json.loads((tiny_sam3 / "config.json").read_text())
    spec = get_spec("sam3")
    assert (config["model_type"], config["architectures"]) == (spec.model_type, spec.config["architectures"])
    assert set(spec.files) <= {p.name for p in tiny_sam3.iterdir()}
    with safe_open(tiny_sam3 / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert {k.split(".")[0] + "." for k in keys} == set(PREFIXES)
    # the tracker's keys carry its prefix once, as the published file's do (transformers 5 saves it twice)
    assert "tracker_model.mask_decoder.iou_token.weight" in keys
    assert not any(k.startswith("tracker_model.tracker_model.") for k in keys)


def test_sam3_preprocessing_is_the_published_processors() -> None:
    """Sam3ImageProcessor: a square resize to 1008 px, no padding, (x / 255 - 0.5) / 0.5."""
    spec = get_spec("sam3")
    assert spec.input_size == 1008 and spec.gated
    pre = spec.preprocessing
    assert (pre.size, pre.resize) == (1008, "square")
    image = np.full((10, 20, 3), 255, np.uint8)
    image[:, :10] = 0
    x, geometry = prepare(image, pre)
    assert x.shape == (3, 1008, 1008) and geometry.resized_hw == (1008, 1008)
    assert x[:, :, 0].eq(-1).all() and x[:, :, -1].eq(1).all()  # black is -1 and white +1 after (x/255 - .5)/.5
    assert preprocessing_for("sam2", 1024).mean != pre.mean


def test_loads_strictly_and_a_missing_tracker_weight_is_one_error(tiny_sam3: Path, tmp_path: Path) -> None:
    loaded = load_model(tiny_sam3)
    assert loaded.family == "sam3" and not loaded.trusted and loaded.preprocessing.size == 112
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_sam3.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(broken / "model.safetensors")
    del weights["tracker_model.mask_decoder.iou_token.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="1 missing .*tracker_model.mask_decoder.iou_token"):
        load_model(broken)


@torch.no_grad()
def test_tracker_features_from_the_cached_vit_are_the_video_models(tiny_sam3: Path) -> None:
    """The tracker reads the ViT output through its own neck, as Sam3VideoModel does for a frame."""
    from transformers import Sam3VideoModel

    loaded = load_model(tiny_sam3, runtime=None)
    video = Sam3VideoModel.from_pretrained(tiny_sam3).eval()
    assert video.tracker_model.no_memory_embedding.abs().sum() > 0  # else adding it could not be checked
    x, _ = prepare(_image(), loaded.preprocessing)
    vit = loaded.model.get_image_embeddings(x[None])
    ours = loaded.model.tracker_embeddings(vit)
    maps, _ = video.get_vision_features_for_tracker(video.detector_model.get_vision_features(pixel_values=x[None]))
    maps[-1] = maps[-1] + video.tracker_model.no_memory_embedding
    sizes = video.config.tracker_config.vision_config.backbone_feature_sizes
    reference = [m.permute(1, 2, 0).reshape(1, -1, *s) for m, s in zip(maps, sizes, strict=True)]
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_one_embedding_serves_boxes_points_and_phrases(tiny_sam3: Path) -> None:
    segmenter = Segmenter(tiny_sam3, cache=False)
    image = _image()
    prompted = segmenter.segment(image, [box(40, 20, 100, 60), point(70, 40)])
    assert prompted.shape == (90, 150) and len(prompted) == 2 and np.isfinite(prompted.scores).all()
    found = segment_text(segmenter, image, TextQuery(("square", "pit"), Thresholds(box=0.0)))
    assert segmenter.encoder_calls == 1  # the phrases read the embedding the prompts made
    assert set(found.phrases or ()) == {"square", "pit"} and len(found) > 0


@torch.no_grad()
def test_concept_masks_and_scores_are_sam3s_own_from_pixels(tiny_sam3: Path) -> None:
    """The same instances, scores and masks as transformers' Sam3Model run on the pixels, post-processed
    as Sam3Processor does (score = query x presence probability; mask = resized probability > 0.5)."""
    from transformers import AutoTokenizer, Sam3Model

    segmenter = Segmenter(tiny_sam3, cache=False, runtime="fp32")
    image = _image()
    threshold = 0.25
    found = segment_text(segmenter, image, TextQuery(("square",), Thresholds(box=threshold)))

    detector = Sam3Model.from_pretrained(tiny_sam3).eval()
    x, _ = prepare(image, segmenter.loaded.preprocessing)
    ids = AutoTokenizer.from_pretrained(tiny_sam3)(["square"], padding="max_length", max_length=32,
                                                    return_tensors="pt")
    out = detector(pixel_values=x[None], input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    probs = out.pred_logits[0].sigmoid() * out.presence_logits[0].sigmoid()
    keep = torch.argsort(probs, descending=True)
    keep = keep[probs[keep] > threshold]
    assert 0 < len(keep) < len(probs)  # the threshold must both keep and drop for the comparison to mean much
    np.testing.assert_allclose(found.detector_scores, probs[keep].numpy(), rtol=1e-4)
    masks = F.interpolate(out.pred_masks[0, keep].sigmoid()[None], (90, 150), mode="bilinear",
                          align_corners=False)[0] > 0.5
    agree = (found.masks == masks.numpy()).mean()
    assert agree > 0.999, agree
    assert CONCEPT_THRESHOLD == 0.3


def test_gated_sam3_names_hf_token_and_downloads_with_it(tiny_sam3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = get_spec("sam3")
    files = {name: (tiny_sam3 / name).read_bytes() for name in spec.files}
    with FakeHub({spec.repo_id: files}) as hub:
        monkeypatch.delenv("SAMADAPT_HF_ENDPOINT", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.token = "hf_sam3"
        with pytest.raises(DownloadError, match="gated repository.*set HF_TOKEN"):
            load_model("sam3", progress=False)
        monkeypatch.setenv("HF_TOKEN", "hf_sam3")
        loaded = load_model("sam3", progress=False)
    assert loaded.family == "sam3" and locate("sam3")[0] == "hf-cache"


@torch.no_grad()
def test_exemplar_boxes_reach_the_concept_model_as_sam3_takes_them(tiny_sam3: Path) -> None:
    """An exemplar (x0, y0, x1, y1 in image pixels) is read as Sam3Processor passes it: centre and size as
    shares of the image, label 1 or 0; the cached-embedding path equals SAM 3 run on the pixels."""
    from transformers import AutoTokenizer, Sam3Model
    from transformers.models.sam3 import modeling_sam3

    from samadapt.models.roi_align import torchvision_stand_in

    segmenter = Segmenter(tiny_sam3, cache=False, runtime="fp32")
    image = _image()  # 90 x 150
    query = TextQuery(("square",), Thresholds(box=0.0))
    boxes, labels = [(40.0, 20.0, 100.0, 60.0), (0.0, 0.0, 30.0, 15.0)], [1, 0]
    found = segment_text(segmenter, image, query, exemplars=boxes, exemplar_labels=labels)
    plain = segment_text(segmenter, image, query)
    assert not np.allclose(found.detector_scores, plain.detector_scores)  # the exemplars were read

    detector = Sam3Model.from_pretrained(tiny_sam3).eval()
    x, _ = prepare(image, segmenter.loaded.preprocessing)
    ids = AutoTokenizer.from_pretrained(tiny_sam3)(["square"], padding="max_length", max_length=32,
                                                    return_tensors="pt")
    normalised = torch.tensor([[[70 / 150, 40 / 90, 60 / 150, 40 / 90], [15 / 150, 7.5 / 90, 30 / 150, 15 / 90]]])
    with torchvision_stand_in(modeling_sam3):
        out = detector(pixel_values=x[None], input_ids=ids["input_ids"], attention_mask=ids["attention_mask"],
                       input_boxes=normalised, input_boxes_labels=torch.tensor([labels]))
    probs = out.pred_logits[0].sigmoid() * out.presence_logits[0].sigmoid()
    np.testing.assert_allclose(found.detector_scores, torch.sort(probs, descending=True).values.numpy(), rtol=1e-4)


def test_exemplars_are_sam3s_alone(tiny_sam3: Path, tmp_path: Path) -> None:
    from samadapt.errors import InputError

    with pytest.raises(InputError, match="not a box inside the 150 x 90 image"):
        segment_text(Segmenter(tiny_sam3, cache=False), _image(), TextQuery(("pit",)), exemplars=[(0, 0, 200, 10)])
    sam = save_tiny_model(tmp_path / "sam", "sam")
    with pytest.raises(InputError, match="exemplar boxes are SAM 3's concept prompt"):
        segment_text(Segmenter(sam, cache=False), _image(), TextQuery(("pit",)), exemplars=[(0, 0, 20, 10)])
