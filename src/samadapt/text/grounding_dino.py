"""GroundingDINO as a :class:`samadapt.text.types.Detector`: every phrase in one prompt, boxes named by phrase.

The phrases are joined as transformers' ``GroundingDinoProcessor`` joins class names
("pit. dune."), so the model sees the prompt format it was trained on. Each query box gets,
for each phrase, the highest sigmoid score over that phrase's tokens; the box is kept when
its best phrase reaches the box threshold and named by that phrase when it reaches the text
threshold. Unlike transformers' ``post_process_grounded_object_detection``, the separators,
``[CLS]`` and ``[SEP]`` take no part in a box's score (they name no phrase), and a box is
named by one phrase rather than by the decoded run of tokens above the text threshold.
Like the GroundingDINO reference, no non-maximum suppression is applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from samadapt.errors import CheckpointError, InputError
from samadapt.text.types import Detection, LoadedDetector, Thresholds, ranked_detections

__all__ = ["BOX_THRESHOLD", "TEXT_THRESHOLD", "GroundingDinoDetector", "GroundingDinoPreprocessing", "check_rgb",
           "grounding_dino_detections", "join_phrases"]

#: Default box threshold (the GroundingDINO demo's and Grounded-SAM's).
BOX_THRESHOLD = 0.35
#: Default text threshold (transformers' and the GroundingDINO demo's).
TEXT_THRESHOLD = 0.25

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_rgb(rgb: np.ndarray) -> None:
    """Refuse anything but an (H, W, 3) uint8 RGB image (the input of every detector).

    Raises:
        InputError: naming the shape and dtype given.
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        what = f"{rgb.shape} {rgb.dtype}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise InputError(f"a detector reads an (H, W, 3) uint8 RGB image, got {what}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise InputError(f"a detector needs an image of at least 1x1 pixel, got {rgb.shape[:2]}")


def _resized_size(height: int, width: int, shortest: int, longest: int) -> tuple[int, int]:
    """(height, width) with the short side ``shortest`` unless the long side would pass ``longest``.

    The same rounding as transformers' ``get_size_with_aspect_ratio`` (the DETR rule), so the
    model sees the very pixels it sees through transformers.
    """
    short, long = float(min(height, width)), float(max(height, width))
    target = float(shortest)
    capped = long / short * shortest > longest
    if capped:
        target = longest * short / long
    side = int(round(target)) if capped else shortest
    if min(height, width) == side:
        return height, width
    if width < height:
        return int(target * height / width), side
    return side, int(target * width / height)


@dataclass(frozen=True)
class GroundingDinoPreprocessing:
    """How an RGB image becomes GroundingDINO's input, as a ``preprocessor_config.json`` states it.

    Attributes:
        shortest_edge: target of the short side, or None with ``height`` / ``width``.
        longest_edge: cap on the long side.
        height: fixed output height (when ``size`` gives height and width).
        width: fixed output width.
        resample: PIL resampling filter number (2: bilinear).
        rescale_factor: multiplies the 0-255 values.
        mean: per-channel mean subtracted after rescaling.
        std: per-channel standard deviation divided by.
        do_resize: resize at all.
        do_rescale: rescale at all.
        do_normalize: normalise at all.
    """

    shortest_edge: int | None = 800
    longest_edge: int = 1333
    height: int | None = None
    width: int | None = None
    resample: int = 2
    rescale_factor: float = 1 / 255
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GroundingDinoPreprocessing:
        """Settings from a parsed ``preprocessor_config.json``; what it leaves out takes transformers' defaults.

        Raises:
            CheckpointError: a ``size`` that is neither shortest/longest edge nor height/width.
        """
        size = dict(config.get("size") or {"shortest_edge": 800, "longest_edge": 1333})
        kw: dict[str, Any] = {}
        if "shortest_edge" in size:
            kw["shortest_edge"] = int(size["shortest_edge"])
            kw["longest_edge"] = int(size.get("longest_edge") or config.get("max_size") or 1333)
        elif "height" in size and "width" in size:
            kw.update(shortest_edge=None, height=int(size["height"]), width=int(size["width"]))
        else:
            raise CheckpointError(f"preprocessor_config.json gives size {size}; GroundingDINO needs shortest_edge "
                                  "and longest_edge, or height and width")
        return cls(
            **kw,
            resample=int(config.get("resample", 2)),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
            mean=tuple(config.get("image_mean", IMAGENET_MEAN)),
            std=tuple(config.get("image_std", IMAGENET_STD)),
            do_resize=bool(config.get("do_resize", True)),
            do_rescale=bool(config.get("do_rescale", True)),
            do_normalize=bool(config.get("do_normalize", True)),
        )

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the model input for an image of that size."""
        if not self.do_resize:
            return height, width
        if self.shortest_edge is None:
            return int(self.height or height), int(self.width or width)
        return _resized_size(height, width, self.shortest_edge, self.longest_edge)

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """The (1, 3, h, w) float32 input of an (H, W, 3) uint8 RGB image (PIL resize, then rescale and normalise)."""
        h, w = self.output_size(rgb.shape[0], rgb.shape[1])
        if (h, w) != rgb.shape[:2]:
            rgb = np.asarray(Image.fromarray(rgb).resize((w, h), resample=Image.Resampling(self.resample)))
        x = rgb.astype(np.float64) * (self.rescale_factor if self.do_rescale else 1.0)
        x = x.astype(np.float32)
        if self.do_normalize:
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def join_phrases(phrases: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The prompt transformers' GroundingDINO processor builds ("pit. dune.") and each phrase's character span.

    Phrases are lower-cased and stripped as the processor does; spans index the prompt.
    """
    parts, spans, at = [], [], 0
    for phrase in phrases:
        text = phrase.strip().lower()
        spans.append((at, at + len(text)))
        parts.append(text)
        at += len(text) + 2  # ". "
    return ". ".join(parts) + ".", spans


def phrase_token_masks(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]],
                       length: int) -> np.ndarray:
    """(P, length) bool: which token positions belong to each phrase, from the tokenizer's character offsets.

    Special tokens have the empty offset (0, 0) and belong to no phrase.
    """
    masks = np.zeros((len(spans), length), dtype=bool)
    for t, (a, b) in enumerate(offsets[:length]):
        if b <= a:
            continue
        for p, (s, e) in enumerate(spans):
            if a >= s and b <= e:
                masks[p, t] = True
    return masks


def grounding_dino_detections(logits: torch.Tensor, boxes: torch.Tensor, token_masks: np.ndarray,
                              phrases: Sequence[str], image_size: tuple[int, int], *, box_threshold: float,
                              text_threshold: float) -> list[Detection]:
    """Detections from GroundingDINO's raw output for one image.

    Args:
        logits: (Q, T) token logits of each query box (T ≥ the prompt's tokens; -inf beyond).
        boxes: (Q, 4) boxes as (cx, cy, w, h), relative to the model input (0-1).
        token_masks: (P, T') bool, the token positions of each phrase (see :func:`phrase_token_masks`).
        phrases: the P phrases, as the user gave them.
        image_size: (H, W) of the original image, in pixels.
        box_threshold: minimum best-phrase score of a kept box.
        text_threshold: minimum score of the phrase that names a box; a box whose best phrase is
            below it is dropped.

    Returns:
        Detections with boxes (x0, y0, x1, y1) in pixels of the original image, best first.
    """
    probs = torch.sigmoid(logits.float()).cpu().numpy()
    t = min(probs.shape[1], token_masks.shape[1])
    masks = token_masks[:, :t]
    per_phrase = np.where(masks[None], probs[:, None, :t], 0.0).max(axis=2)  # (Q, P); every phrase has a token
    best = per_phrase.argmax(axis=1)
    score = per_phrase[np.arange(len(best)), best]
    keep = (score >= box_threshold) & (score >= text_threshold)
    h, w = image_size
    return ranked_detections(boxes.float().cpu().numpy(), (w, h), score, best, keep, phrases)


class GroundingDinoDetector(LoadedDetector):
    """GroundingDINO (transformers' ``GroundingDinoForObjectDetection``) with its BERT tokenizer and
    :class:`GroundingDinoPreprocessing` (see :class:`~samadapt.text.types.LoadedDetector`)."""

    family = "grounding-dino"
    preprocessing: GroundingDinoPreprocessing

    @property
    def max_text_len(self) -> int:
        """Most tokens the model reads for the joined prompt (its config's ``max_text_len``)."""
        return int(getattr(getattr(self.model, "config", None), "max_text_len", 256))

    def encode(self, phrases: Sequence[str]) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        """Token ids of the joined prompt and the (P, tokens) mask of each phrase's positions.

        Raises:
            InputError: the prompt is longer than the model reads, or a phrase has no token.
        """
        prompt, spans = join_phrases(phrases)
        enc = self.tokenizer(prompt, return_offsets_mapping=True, return_token_type_ids=True)
        n = len(enc["input_ids"])
        if n > self.max_text_len:
            raise InputError(f"the {len(phrases)} phrases make {n} tokens; GroundingDINO reads {self.max_text_len}: "
                             "give fewer or shorter phrases per search")
        masks = phrase_token_masks([tuple(o) for o in enc["offset_mapping"]], spans, n)
        empty = [p for p, m in zip(phrases, masks, strict=True) if not m.any()]
        if empty:
            raise InputError(f"the phrase {empty[0]!r} has no token GroundingDINO reads; use letters or digits")
        names = ("input_ids", "token_type_ids", "attention_mask")
        inputs = {k: torch.tensor([enc[k]], dtype=torch.long) for k in names}
        return inputs, masks

    def detect(self, rgb: np.ndarray, phrases: Sequence[str], thresholds: Thresholds) -> list[Detection]:
        """Objects in an (H, W, 3) uint8 RGB image matching any of ``phrases``, best first.

        Args:
            rgb: the image.
            phrases: class names, e.g. ("pit", "dune"); all go into one prompt.
            thresholds: box (default 0.35) and text (default 0.25) thresholds.

        Returns:
            Boxes (x0, y0, x1, y1) in pixels of ``rgb``, each with its phrase and score.

        Raises:
            InputError: not an (H, W, 3) uint8 image, no phrase, or too many tokens.
        """
        check_rgb(rgb)
        if not phrases:
            raise InputError("give at least one phrase to detect")
        inputs, masks = self.encode(phrases)
        pixels = self.preprocessing(rgb)
        feed = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.no_grad():
            out = self.model(pixel_values=pixels.to(self.device),
                             pixel_mask=torch.ones(pixels.shape[0], *pixels.shape[2:], dtype=torch.long,
                                                   device=self.device), **feed)
        box = BOX_THRESHOLD if thresholds.box is None else thresholds.box
        text = TEXT_THRESHOLD if thresholds.text is None else thresholds.text
        return grounding_dino_detections(out.logits[0], out.pred_boxes[0], masks, list(phrases),
                                         (rgb.shape[0], rgb.shape[1]), box_threshold=box, text_threshold=text)
