"""Parity with the reference segment-anything implementation, end to end.

A tiny random model built from segment-anything's own classes is saved as an official
``.pth``; samadapt loads it through its converter, and its preprocessing, prompt handling
and post-processing must give what the reference ``SamPredictor`` gives for the same image
and prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.sam_reference import build_tiny_reference_sam, import_segment_anything
from samadapt.imagery.preprocess import Preprocessing, boxes_to_model, coords_to_model, masks_to_original, prepare
from samadapt.predict.segmenter import Segmenter
from samadapt.prompts.types import ObjectPrompt

SIZES = [(300, 500), (513, 257), (37, 91), (256, 256), (999, 1001)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    sam = build_tiny_reference_sam(seed=3).eval()
    path = tmp_path_factory.mktemp("ref") / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    return sam, path


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    img[h // 4 : h // 2, w // 3 : w // 2] = 240
    return img


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_preprocessing_matches_reference(h: int, w: int, reference: tuple[object, Path]) -> None:
    sa = import_segment_anything()
    sam, _ = reference
    resize = sa.utils.transforms.ResizeLongestSide(256)
    img = _image(h, w)
    ref_resized = resize.apply_image(img)
    ref_input = sam.preprocess(torch.as_tensor(ref_resized).permute(2, 0, 1)[None].float())[0]
    ours, geometry = prepare(img, Preprocessing(size=256))
    assert geometry.resized_hw == ref_resized.shape[:2]
    torch.testing.assert_close(ours, ref_input, rtol=0, atol=1e-5)
    coords = np.array([[0.0, 0.0], [w - 1.0, h - 1.0], [w / 3, h / 5]])
    np.testing.assert_allclose(coords_to_model(coords, geometry), resize.apply_coords(coords, (h, w)))
    boxes = np.array([[1.0, 2.0, w / 2, h / 2]])
    np.testing.assert_allclose(boxes_to_model(boxes, geometry), resize.apply_boxes(boxes, (h, w)))
    low = torch.randn(2, 3, 64, 64)
    ref_masks = sam.postprocess_masks(low, geometry.resized_hw, (h, w))
    torch.testing.assert_close(masks_to_original(low, geometry, Preprocessing(size=256)), ref_masks)


@pytest.mark.parametrize(
    "prompt",
    [
        ObjectPrompt(points=[[200.0, 110.0]], labels=[1]),
        ObjectPrompt(points=[[200.0, 110.0], [20.0, 250.0]], labels=[1, 0]),
        ObjectPrompt(box=[160.0, 70.0, 260.0, 160.0]),
        ObjectPrompt(points=[[210.0, 100.0]], labels=[1], box=[160.0, 70.0, 260.0, 160.0]),
    ],
    ids=["point", "points+background", "box", "box+point"],
)
@pytest.mark.parametrize("multimask", [True, False])
def test_segmenter_matches_sam_predictor(prompt: ObjectPrompt, multimask: bool, reference: tuple[object, Path]) -> None:
    sa = import_segment_anything()
    sam, path = reference
    img = _image(300, 500, seed=1)
    predictor = sa.SamPredictor(sam)
    predictor.set_image(img)
    ref_masks, ref_iou, ref_low = predictor.predict(
        point_coords=prompt.points if len(prompt.points) else None,
        point_labels=prompt.labels if len(prompt.points) else None,
        box=prompt.box,
        multimask_output=multimask,
        return_logits=True,
    )
    seg = Segmenter(path, cache=False)  # the .pth goes through samadapt's converter
    emb = seg.embed(img)
    low, iou = seg.decode(emb, [prompt], multimask=multimask)
    np.testing.assert_allclose(low[0].numpy(), ref_low, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(iou[0].numpy(), ref_iou, atol=1e-5, rtol=1e-4)
    result = seg.segment(emb, [prompt], multimask=multimask)
    best = int(np.argmax(ref_iou))
    ref_best = ref_masks[best] > sam.mask_threshold
    agree = (result.masks[0] == ref_best).mean()
    assert agree > 0.999, agree
