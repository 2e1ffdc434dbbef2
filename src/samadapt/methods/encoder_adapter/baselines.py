"""How the encoder-adaptation abstract scores its model: the U-Net alone, SAM alone and the adapted model."""

from __future__ import annotations

from typing import get_args

import numpy as np
import torch

from samadapt.errors import InputError
from samadapt.imagery.preprocess import Geometry
from samadapt.methods.base import AdaptationMethod, Sample
from samadapt.methods.encoder_adapter.method import EncoderAdapterMethod
from samadapt.methods.encoder_adapter.parts import PARTS, PromptSource
from samadapt.train.metrics import MetricAccumulator


def compare_baselines(method: EncoderAdapterMethod, samples: list[Sample], *,
                      prompts: PromptSource = "truth") -> dict[str, float]:
    """Foreground IoU of the U-Net alone, SAM alone and the adapted model, as the encoder-adaptation abstract reports.

    All three are scored at the original image size on the same labelled samples, pooled
    over every pixel (mean over foreground classes when there are several). SAM alone and the
    adapted model get the same prompts: each ground-truth region's interior point with
    ``prompts="truth"`` (as in the abstract), or the U-Net's predicted regions' with ``"unet"``.
    Both pick the mask with the highest predicted IoU.

    Args:
        method: a (trained) encoder-adapter; it is put in eval mode and left as it was.
        samples: labelled samples.
        prompts: the prompt source.

    Returns:
        ``{"unet": iou, "sam": iou, "adapted": iou}``; ``sam`` is NaN for images without 3 bands.

    Raises:
        InputError: if a sample has no target, or ``prompts`` is unknown.
    """
    if prompts not in get_args(PromptSource):
        raise InputError(f"prompts must be 'unet' or 'truth', got {prompts!r}")
    scores = {name: MetricAccumulator(method.num_classes, per_image=False) for name in ("unet", "sam", "adapted")}
    was_training = method.training
    method.eval()
    try:
        with torch.no_grad():
            for sample in samples:
                if sample.target is None:
                    raise InputError(f"{sample.stem} has no target; compare_baselines needs labelled samples")
                batch = {k: v[None] for k, v in method.inputs(sample, prompts=prompts).items()}
                logits = method(batch)
                parts = getattr(logits, PARTS)
                geometry = method.geometry_of(*sample.target.shape)
                outputs = {"unet": parts["unet"][0], "adapted": logits[0]}
                if method.in_channels == 3:
                    keep = parts["valid"][0]
                    outputs["sam"] = method.sam_alone(sample, parts["points"][0][keep], parts["classes"][0][keep])
                for name, out in outputs.items():
                    scores[name].add(_labels(method, out, geometry), sample.target)
    finally:
        method.train(was_training)
    result = {}
    for name, acc in scores.items():
        iou = acc.compute().iou[1:]
        result[name] = float(np.nanmean(iou)) if acc.num_images and not np.isnan(iou).all() else float("nan")
    return result


def _labels(method: AdaptationMethod, logits: torch.Tensor, geometry: Geometry) -> np.ndarray:
    """(C, side, side) logits -> (H, W) uint8 class ids at the original size."""
    probs = method.probabilities(logits[None])[0]
    return method.to_original(probs, geometry).argmax(0).numpy().astype(np.uint8)
