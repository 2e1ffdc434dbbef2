"""OWLv2 as a :class:`samadapt.text.types.Detector`: one text query per phrase, one box per image patch.

The image is padded to a square at its bottom and right (with 0 after rescaling, i.e. black,
as OWLv2's official implementation and transformers since its padding fix do; OWL-ViT v1
padded with grey 0.5) and resized to the model's square input, so the model's boxes are
relative to that padded square. A box's score is the sigmoid of its best query's logit and
its phrase that query's. As transformers' ``post_process_grounded_object_detection`` does,
no non-maximum suppression is applied (OWLv2's reference applies none to text queries).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from samadapt.errors import CheckpointError, InputError
from samadapt.text.grounding_dino import check_rgb
from samadapt.text.types import Detection, LoadedDetector, Thresholds, ranked_detections

__all__ = ["BOX_THRESHOLD", "Owlv2Detector", "Owlv2Preprocessing", "owlv2_detections"]

#: Default score threshold (transformers' ``post_process_grounded_object_detection`` default).
BOX_THRESHOLD = 0.1

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _gaussian_blur_axis(x: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Gaussian filter along one axis, kernel cut at 4 sigma, edges mirrored about the edge pixel's centre."""
    if sigma <= 0:
        return x
    radius = int(4.0 * sigma + 0.5)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(x, pad, mode="reflect")
    n = x.shape[axis]
    out = np.zeros_like(x)
    for k, weight in enumerate(kernel):
        out += weight * np.take(padded, np.arange(k, k + n), axis=axis)
    return out


def _linear_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear resampling along one axis to ``size`` samples, pixel centres aligned, edges mirrored."""
    n = x.shape[axis]
    if n == size:
        return x
    pos = (np.arange(size, dtype=np.float64) + 0.5) * (n / size) - 0.5
    if n == 1:
        pos = np.zeros(size)
    else:
        period = 2 * (n - 1)
        pos = np.abs(pos) % period
        pos = np.where(pos > n - 1, period - pos, pos)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    shape = [1] * x.ndim
    shape[axis] = size
    frac = frac.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


def resize_antialiased(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an (H, W, C) float image as OWLv2's reference does (scikit-image's ``resize``).

    A Gaussian blur of sigma ``(factor - 1) / 2`` on each downsampled axis, then linear
    interpolation with pixel centres aligned and mirrored edges, then a clip to the input's
    range. Written with numpy alone, equal to transformers' scipy version to float rounding.
    """
    src = image.astype(np.float64)
    out = src
    for axis, size in ((0, height), (1, width)):
        factor = src.shape[axis] / size
        out = _gaussian_blur_axis(out, max(0.0, (factor - 1) / 2), axis)
    for axis, size in ((0, height), (1, width)):
        out = _linear_axis(out, size, axis)
    return np.clip(out, src.min(), src.max())


@dataclass(frozen=True)
class Owlv2Preprocessing:
    """How an RGB image becomes OWLv2's input, as a ``preprocessor_config.json`` states it.

    Attributes:
        size: side of the square model input in pixels.
        rescale_factor: multiplies the 0-255 values.
        mean: per-channel mean subtracted after resizing.
        std: per-channel standard deviation divided by.
        pad_value: value of the padding, after rescaling (0: black).
        do_rescale: rescale at all.
        do_pad: pad to a square at all.
        do_normalize: normalise at all.
    """

    size: int = 960
    rescale_factor: float = 1 / 255
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    pad_value: float = 0.0
    do_rescale: bool = True
    do_pad: bool = True
    do_normalize: bool = True

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Owlv2Preprocessing:
        """Settings from a parsed ``preprocessor_config.json``; what it leaves out takes transformers' defaults.

        Raises:
            CheckpointError: a size that is not square, or resizing turned off (the model reads one size).
        """
        size = dict(config.get("size") or {"height": 960, "width": 960})
        if size.get("height") != size.get("width") or not size.get("height") or not config.get("do_resize", True):
            raise CheckpointError(f"preprocessor_config.json gives size {size}; OWLv2 reads a square, "
                                  "e.g. {'height': 960, 'width': 960}")
        return cls(
            size=int(size["height"]),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
            mean=tuple(config.get("image_mean", CLIP_MEAN)),
            std=tuple(config.get("image_std", CLIP_STD)),
            do_rescale=bool(config.get("do_rescale", True)),
            do_pad=bool(config.get("do_pad", True)),
            do_normalize=bool(config.get("do_normalize", True)),
        )

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """The (1, 3, size, size) float32 input of an (H, W, 3) uint8 RGB image: rescale, pad, resize, normalise."""
        x = rgb.astype(np.float64)
        if self.do_rescale:
            x = (x * self.rescale_factor).astype(np.float32).astype(np.float64)
        if self.do_pad:
            side = max(x.shape[0], x.shape[1])
            x = np.pad(x, ((0, side - x.shape[0]), (0, side - x.shape[1]), (0, 0)), constant_values=self.pad_value)
        x = resize_antialiased(x, self.size, self.size).astype(np.float32)
        if self.do_normalize:
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def owlv2_detections(logits: torch.Tensor, boxes: torch.Tensor, phrases: Sequence[str], image_size: tuple[int, int],
                     *, threshold: float, padded: bool = True) -> list[Detection]:
    """Detections from OWLv2's raw output for one image.

    Args:
        logits: (N, P) logits of each patch box for each phrase's query.
        boxes: (N, 4) boxes as (cx, cy, w, h) relative (0-1) to the padded square input.
        phrases: the P phrases, as the user gave them.
        image_size: (H, W) of the original image, in pixels.
        threshold: minimum score of a kept box.
        padded: the input was padded to a square (so the boxes scale by max(H, W) on both axes).

    Returns:
        Detections with boxes (x0, y0, x1, y1) in pixels of the original image, best first.
    """
    probs = torch.sigmoid(logits.float()).cpu().numpy()
    best = probs.argmax(axis=1)
    score = probs[np.arange(len(best)), best]
    h, w = image_size
    scale = (max(h, w), max(h, w)) if padded else (w, h)
    return ranked_detections(boxes.float().cpu().numpy(), scale, score, best, score >= threshold, phrases)


class Owlv2Detector(LoadedDetector):
    """OWLv2 (transformers' ``Owlv2ForObjectDetection``) with its CLIP tokenizer and
    :class:`Owlv2Preprocessing` (see :class:`~samadapt.text.types.LoadedDetector`)."""

    family = "owlv2"
    preprocessing: Owlv2Preprocessing

    @property
    def max_tokens(self) -> int:
        """Most tokens of one phrase's query (its text config's ``max_position_embeddings``)."""
        config = getattr(self.model, "config", None)
        return int(getattr(getattr(config, "text_config", None), "max_position_embeddings", 16))

    def encode(self, phrases: Sequence[str]) -> dict[str, torch.Tensor]:
        """(P, max_tokens) token ids and attention mask, one query per phrase, padded as transformers' processor does.

        Raises:
            InputError: a phrase longer than the text model reads.
        """
        for phrase in phrases:
            n = len(self.tokenizer(phrase)["input_ids"])
            if n > self.max_tokens:
                raise InputError(f"the phrase {phrase!r} makes {n} tokens; OWLv2 reads {self.max_tokens} "
                                 "(with its start and end tokens): shorten it")
        enc = self.tokenizer(list(phrases), padding="max_length", max_length=self.max_tokens)
        return {k: torch.tensor(enc[k], dtype=torch.long) for k in ("input_ids", "attention_mask")}

    def detect(self, rgb: np.ndarray, phrases: Sequence[str], thresholds: Thresholds) -> list[Detection]:
        """Objects in an (H, W, 3) uint8 RGB image matching any of ``phrases``, best first.

        Args:
            rgb: the image.
            phrases: class names, e.g. ("pit", "dune"); each is one query.
            thresholds: box threshold (default 0.1); a text threshold is refused.

        Returns:
            Boxes (x0, y0, x1, y1) in pixels of ``rgb``, each with its phrase and score.

        Raises:
            InputError: not an (H, W, 3) uint8 image, no phrase, a too-long phrase, or a text threshold.
        """
        if thresholds.text is not None:
            raise InputError("--text-threshold applies to GroundingDINO only; OWLv2 scores each box once, "
                             "so set --box-threshold instead")
        check_rgb(rgb)
        if not phrases:
            raise InputError("give at least one phrase to detect")
        inputs = {k: v.to(self.device) for k, v in self.encode(phrases).items()}
        pixels = self.preprocessing(rgb).to(self.device)
        with torch.no_grad():
            out = self.model(pixel_values=pixels, **inputs)
        threshold = BOX_THRESHOLD if thresholds.box is None else thresholds.box
        return owlv2_detections(out.logits[0], out.pred_boxes[0], list(phrases), (rgb.shape[0], rgb.shape[1]),
                                threshold=threshold, padded=self.preprocessing.do_pad)
