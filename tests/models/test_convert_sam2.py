"""Official SAM 2.1 ``.pt`` checkpoints: converted by samadapt, checked against Meta's own predictor.

A full-size sam2.1_hiera_tiny is built from the official package's classes (random weights,
every parameter non-zero), saved as Meta publishes it (``{"model": state_dict}``), loaded
through ``load_model`` like a user's file, and decoded with samadapt's pipeline. The official
``SAM2ImagePredictor`` decodes the same prompts on the same image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers.cli import run_cli
from helpers.sam2_reference import build_reference_sam21_tiny, reference_predictor
from samadapt.errors import CheckpointError
from samadapt.models.convert_sam2 import VIDEO_ONLY, convert_meta_sam2_state_dict, infer_sam2_config
from samadapt.models.loading import load_model
from samadapt.models.registry import get_spec
from samadapt.predict.segmenter import Segmenter
from samadapt.prompts.types import box, point

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    model = build_reference_sam21_tiny()
    path = tmp_path_factory.mktemp("official") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return model, path


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """1024 x 1024, the model input size, so that both sides feed the encoder the same pixels."""
    rng = np.random.default_rng(3)
    img = rng.integers(40, 110, size=(1024, 1024, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:1024, :1024]
    img[(xx - 400) ** 2 + (yy - 520) ** 2 < 150**2] = 220
    return img


def test_conversion_keeps_every_image_weight_and_drops_only_the_video_parts(official: Any) -> None:
    from transformers import Sam2Model

    model, _ = official
    state = model.state_dict()
    converted = convert_meta_sam2_state_dict(state)
    expected = Sam2Model(infer_sam2_config(state)).state_dict()
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)
    dropped = {k for k in state if VIDEO_ONLY.match(k)}
    assert any(k.startswith("memory_attention.") for k in dropped) and "no_obj_embed_spatial" in dropped
    assert torch.equal(converted["no_memory_embedding"], state["no_mem_embed"])
    assert torch.equal(converted["prompt_encoder.point_embed.weight"][2],
                       state["sam_prompt_encoder.point_embeddings.2.weight"][0])


def test_config_is_the_published_tiny(official: Any) -> None:
    config = infer_sam2_config(official[0].state_dict())
    published = get_spec("sam2.1-hiera-tiny").config["vision_config"]["backbone_config"]
    backbone = config.vision_config.backbone_config
    for key in ("hidden_size", "blocks_per_stage", "global_attention_blocks", "num_attention_heads_per_stage",
                "window_size_per_stage", "window_positional_embedding_background_size"):
        assert list(np.atleast_1d(getattr(backbone, key))) == list(np.atleast_1d(published[key])), key


def test_a_hiera_of_no_published_size_is_refused(official: Any) -> None:
    state = {k: v for k, v in official[0].state_dict().items() if not k.startswith("image_encoder.trunk.blocks.11.")}
    with pytest.raises(CheckpointError, match="none of the published SAM 2.1 sizes"):
        infer_sam2_config(state)


@pytest.mark.parametrize("multimask", [True, False])
def test_masks_match_the_official_predictor_for_a_point_and_a_box(
    official: Any, image: np.ndarray, multimask: bool
) -> None:
    model, path = official
    loaded = load_model(path, runtime="fp32")
    assert loaded.family == "sam2" and loaded.preprocessing.resize == "square"
    segmenter = Segmenter(loaded, cache=False)
    embedded = segmenter.embed(image)
    predictor = reference_predictor(model)
    with torch.inference_mode():
        predictor.set_image(image)
    cases = [
        (dict(point_coords=np.array([[400.0, 520.0]]), point_labels=np.array([1])), point(400, 520)),
        (dict(box=np.array([250.0, 370.0, 550.0, 670.0])), box(250, 370, 550, 670)),
    ]
    for reference_prompt, ours in cases:
        with torch.inference_mode():
            ref_masks, ref_iou, ref_low = predictor.predict(**reference_prompt, multimask_output=multimask,
                                                            return_logits=True)
        low, iou = segmenter.decode(embedded, [ours], multimask=multimask)
        np.testing.assert_allclose(low[0].clamp(-32, 32).numpy(), ref_low, atol=2e-4)  # the predictor clamps
        np.testing.assert_allclose(iou[0].numpy(), ref_iou, atol=1e-5)
        result = segmenter.segment(embedded, [ours], multimask=multimask)
        best = int(np.argmax(ref_iou))
        disagree = np.mean(result.masks[0] != (ref_masks[best] > 0))
        assert disagree < 1e-4, disagree


def test_models_check_and_convert_accept_the_official_file(
    official: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = official
    code, text = run_cli(["models", "check", str(path), "--runtime", "fp32"], monkeypatch, capsys)
    assert code == 0, text
    assert "sam2" in text and "1024 px" in text and "unknown" in text and "check passed" in text
    code, text = run_cli(["models", "convert", str(path), str(tmp_path / "hf")], monkeypatch, capsys)
    assert code == 0, text
    assert load_model(tmp_path / "hf", runtime=None).family == "sam2"
