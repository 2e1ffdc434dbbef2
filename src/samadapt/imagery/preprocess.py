"""SAM's and SAM 2's input preprocessing and mask post-processing, written once.

SAM (v1 and HQ) resizes the longest side to the model's input size keeping the aspect ratio
(bilinear, on the uint8 image), normalises with ImageNet statistics in 0-255 units and pads
the bottom and right with zeros to a square. SAM 2 resizes to the square input size without
keeping the aspect ratio. Point and box coordinates follow the same resize. Masks come back
at a quarter of the input size and are resized to the original image with bilinear
interpolation (for SAM, after cropping the padding away).

Coordinates are (x, y) = (column, row) in pixels of the original image, the numbers
segment-anything's ``SamPredictor`` takes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from samadapt.errors import InputError

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Preprocessing:
    """How an image is turned into the model's input tensor.

    Attributes:
        size: side of the square model input in pixels (1024 for every public checkpoint).
        mean: per-channel mean in 0-255 units, RGB order.
        std: per-channel standard deviation in 0-255 units, RGB order.
        resize: "longest" (SAM: keep aspect, pad bottom-right) or "square" (SAM 2: stretch).
    """

    size: int = 1024
    mean: tuple[float, float, float] = IMAGENET_MEAN_255
    std: tuple[float, float, float] = IMAGENET_STD_255
    resize: Literal["longest", "square"] = "longest"

    def key(self) -> str:
        """A short stable hash of these settings, part of every embedding-cache key."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Geometry:
    """Sizes that link an original image to its model input.

    Attributes:
        original_hw: (rows, cols) of the image as read.
        resized_hw: (rows, cols) of the image inside the model input, before padding.
    """

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]


def resized_shape(height: int, width: int, spec: Preprocessing) -> tuple[int, int]:
    """(rows, cols) after the resize step, rounding as segment-anything does, but never below 1 px
    (segment-anything rounds the short side of a very long strip to 0, which no resize can make)."""
    if spec.resize == "square":
        return spec.size, spec.size
    scale = spec.size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def prepare(pixels: np.ndarray, spec: Preprocessing) -> tuple[torch.Tensor, Geometry]:
    """Turn an RGB uint8 image into the model's input.

    Args:
        pixels: (H, W, 3) uint8 RGB image.
        spec: the model's preprocessing.

    Returns:
        A (3, size, size) float32 tensor, normalised and padded, and the geometry needed to
        map prompts in and masks out.

    Raises:
        InputError: if the array is not (H, W, 3) uint8 or is empty.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise InputError(f"expected an (H, W, 3) uint8 RGB image, got shape {pixels.shape} and dtype {pixels.dtype}")
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise InputError(f"the image is empty ({pixels.shape[0]} x {pixels.shape[1]} pixels)")
    x, geometry = resize_to_model(pixels, spec)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)
    x = (x - mean) / std
    new_h, new_w = geometry.resized_hw
    x = F.pad(x, (0, spec.size - new_w, 0, spec.size - new_h))
    return x, geometry


def resize_to_model(pixels: np.ndarray, spec: Preprocessing) -> tuple[torch.Tensor, Geometry]:
    """The resize step alone: (H, W, C) uint8, any C -> (C, h', w') float 0-255, unpadded.

    Bilinear on the uint8 image (PIL resizes each channel on its own, so any band count
    gives what the RGB path gives).
    """
    height, width, channels = pixels.shape
    new_h, new_w = resized_shape(height, width, spec)
    if (new_h, new_w) != (height, width):
        planes = [np.asarray(Image.fromarray(pixels[:, :, i]).resize((new_w, new_h), Image.Resampling.BILINEAR))
                  for i in range(channels)]
        resized = np.stack(planes)
    else:
        resized = np.moveaxis(pixels, 2, 0)
    x = torch.from_numpy(np.array(resized, dtype=np.float32))
    return x, Geometry(original_hw=(height, width), resized_hw=(new_h, new_w))


def coords_to_model(xy: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Scale (..., 2) pixel (x, y) coordinates of the original image into the model input frame."""
    xy = np.asarray(xy, dtype=np.float64)
    (h, w), (new_h, new_w) = geometry.original_hw, geometry.resized_hw
    out = xy.copy()
    out[..., 0] = xy[..., 0] * (new_w / w)
    out[..., 1] = xy[..., 1] * (new_h / h)
    return out


def boxes_to_model(boxes: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Scale (..., 4) XYXY pixel boxes of the original image into the model input frame."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return coords_to_model(boxes.reshape(*boxes.shape[:-1], 2, 2), geometry).reshape(boxes.shape)


def masks_to_original(low_res: torch.Tensor, geometry: Geometry, spec: Preprocessing) -> torch.Tensor:
    """Resize low-resolution mask logits to the original image.

    Args:
        low_res: (..., h, w) float logits as the mask decoder returns them (h = w = size / 4).
        geometry: from :func:`prepare` for the same image.
        spec: the model's preprocessing.

    Returns:
        (..., H, W) float logits at the original image size.
    """
    lead = low_res.shape[:-2]
    x = F.interpolate(logits_before_final_resize(low_res, geometry, spec), geometry.original_hw,
                      mode="bilinear", align_corners=False)
    return x.reshape(*lead, *geometry.original_hw)


def logits_before_final_resize(low_res: torch.Tensor, geometry: Geometry, spec: Preprocessing) -> torch.Tensor:
    """The first steps of :func:`masks_to_original`: (..., h, w) logits -> (M, 1, h', w'), M objects.

    For SAM the decoder's logits resized to the model input with its padding cropped away
    ((h', w') = ``geometry.resized_hw``); for SAM 2 the decoder's logits as they are. The last
    step, a bilinear resize to ``geometry.original_hw``, is left to the caller.
    """
    x = low_res.reshape(-1, 1, *low_res.shape[-2:]).float()
    if spec.resize == "longest":
        x = F.interpolate(x, (spec.size, spec.size), mode="bilinear", align_corners=False)
        x = x[..., : geometry.resized_hw[0], : geometry.resized_hw[1]]
    return x


def mask_prompt_to_model(mask: np.ndarray, geometry: Geometry, spec: Preprocessing,
                         low: int | None = None) -> torch.Tensor:
    """Turn an image-sized mask prompt into the decoder's (1, low, low) mask input (``low``: the side of
    its low-resolution logits, by default a quarter of the input).

    A 0/1 or bool mask becomes logits of +-20 (SAM's mask input is in logit space); float
    arrays with values outside [0, 1] are taken as logits already.
    """
    m = np.asarray(mask)
    if m.dtype == bool or (m.min() >= 0 and m.max() <= 1):
        m = np.where(m > 0.5, 20.0, -20.0)
    t = torch.from_numpy(m.astype(np.float32))[None, None]
    new_h, new_w = geometry.resized_hw
    t = F.interpolate(t, (new_h, new_w), mode="bilinear", align_corners=False)
    t = F.pad(t, (0, spec.size - new_w, 0, spec.size - new_h), value=-20.0)
    low = low or spec.size // 4
    return F.interpolate(t, (low, low), mode="bilinear", align_corners=False)[0]
