"""Pictures a person looks at: masks tinted over the image, prompts drawn on top."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from samadapt._io import atomic_file

PALETTE = np.array(
    [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
     (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)],
    dtype=np.float32,
)


def overlay(
    pixels: np.ndarray, masks: np.ndarray, *, boxes: np.ndarray | None = None,
    points: np.ndarray | None = None, alpha: float = 0.45,
) -> np.ndarray:
    """Tint each mask in its own colour over an RGB image and outline it.

    Args:
        pixels: (H, W, 3) uint8 RGB.
        masks: (N, H, W) bool.
        boxes: optional (K, 4) XYXY pixel boxes drawn as rectangles.
        points: optional (P, 2) (x, y) pixel points drawn as dots.
        alpha: opacity of the tint.

    Returns:
        (H, W, 3) uint8 RGB picture.
    """
    img = pixels.astype(np.float32).copy()
    for i, m in enumerate(masks):
        colour = PALETTE[i % len(PALETTE)]
        img[m] = img[m] * (1 - alpha) + colour * alpha
        edge = m & ~_erode(m)
        img[edge] = colour
    pic = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    for b in [] if boxes is None else boxes:
        draw.rectangle([float(b[0]), float(b[1]), float(b[2]) - 1, float(b[3]) - 1], outline=(255, 255, 255), width=2)
    for x, y in [] if points is None else points:
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(0, 255, 0), outline=(0, 0, 0))
    return np.asarray(pic)


def _erode(m: np.ndarray) -> np.ndarray:
    e = m.copy()
    e[1:] &= m[:-1]
    e[:-1] &= m[1:]
    e[:, 1:] &= m[:, :-1]
    e[:, :-1] &= m[:, 1:]
    return e


def save_png(path: Path, picture: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 picture to a PNG atomically."""
    path = Path(path)
    with atomic_file(path) as tmp:  # creates missing parent folders
        Image.fromarray(picture).save(tmp)
    return path
