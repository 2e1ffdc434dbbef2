"""The interface every adaptation method implements, and the pieces they share.

A method is an ``nn.Module`` built around a loaded SAM-family model (the *base*). Training
and evaluation go through one loop (``samadapt.training``) that only knows this interface:

1. ``make_inputs(sample, train=..., rng=...)`` turns one image (and its mask) into a dict of
   tensors without a batch dimension; the loop stacks them into a batch. Methods with a
   frozen encoder take the image embedding from the embedding cache here, so the encoder
   runs once per image for the whole training.
2. ``forward(batch)`` returns logits (B, C_out, h, w) in the method's output frame (a square
   of the model input, e.g. 256 x 256 for SAM's low-resolution masks).
3. ``loss(logits, batch)`` returns a scalar; ``batch["target"]`` is (B, h, w) long with class
   ids and 255 = ignore (padding included).
4. ``probabilities(logits)`` returns per-class probabilities (B, num_classes, h, w).

Class handling: ``num_classes`` counts background (K + 1). One foreground class (K = 1) uses
one sigmoid channel; more use softmax over K + 1 channels. Outputs are mapped back to the
original image with the same geometry as SAM's own masks (``imagery.preprocess``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samadapt.errors import InputError
from samadapt.imagery.preprocess import Geometry, Preprocessing, masks_to_original, resized_shape
from samadapt.models.loading import LoadedModel

IGNORE = 255
Batch = dict[str, torch.Tensor]


@dataclass
class Sample:
    """One image of a dataset as the methods see it.

    Attributes:
        stem: the image's name in the dataset.
        pixels: (H, W, C) uint8, C = 3 for RGB-like input, any count with a band adapter.
        valid: (H, W) bool, False where the image has no data.
        target: (H, W) uint8 class ids with 255 = ignore, or None when unlabelled.
    """

    stem: str
    pixels: np.ndarray
    valid: np.ndarray
    target: np.ndarray | None = None


class AdaptationMethod(nn.Module):
    """Base class of the four adaptation methods (see the module docstring).

    Args:
        base: the loaded SAM-family model; its weights digest is recorded in artifacts.
        num_classes: classes including background (2 for one foreground class).
        in_channels: bands of the input; != 3 adds a trainable 1x1 band adapter where the
            method runs the encoder.
    """

    name: ClassVar[str] = ""
    #: The side of the square output frame as a fraction of the model input size.
    output_scale: ClassVar[float] = 0.25

    def __init__(self, base: LoadedModel, *, num_classes: int = 2, in_channels: int = 3, **options: Any) -> None:
        super().__init__()
        if num_classes < 2:
            raise InputError(f"num_classes counts background and must be at least 2, got {num_classes}")
        self.base = base
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.options = dict(options)

    # --- what subclasses implement -------------------------------------------------------
    def make_inputs(self, sample: Sample, *, train: bool, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Tensors of one sample (no batch dimension), including "target" when labelled."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> torch.Tensor:  # noqa: D102 - see module docstring
        raise NotImplementedError

    # --- shared behaviour ------------------------------------------------------------------
    def embedding(self, sample: Sample) -> dict[str, torch.Tensor]:
        """The frozen encoder's embedding of a 3-band sample, through the embedding cache.

        The cache (``$SAMADAPT_HOME/embeddings``) makes every epoch after the first, and every
        later run on the same images, skip the encoder.
        """
        if sample.pixels.shape[2] != 3:
            raise InputError(
                f"{self.name} uses cached embeddings of 3-band images; {sample.stem} has {sample.pixels.shape[2]} "
                "bands (choose 3 with --bands, or use the lora method, which trains a band adapter)"
            )
        return self.segmenter.embed(sample.pixels).embedding

    @property
    def segmenter(self) -> Any:
        """The Segmenter, and so the embedding cache, the frozen encoder runs through; made on first use."""
        if getattr(self, "_segmenter", None) is None:
            from samadapt.segment import Segmenter

            object.__setattr__(self, "_segmenter", Segmenter(self.base, cache=getattr(self, "cache", True)))
        return self._segmenter  # type: ignore[attr-defined]

    @property
    def out_channels(self) -> int:
        """1 sigmoid channel for one foreground class, else one softmax channel per class."""
        return 1 if self.num_classes == 2 else self.num_classes

    @property
    def preprocessing(self) -> Preprocessing:
        """The base model's preprocessing."""
        return self.base.preprocessing

    @property
    def output_side(self) -> int:
        """Side of the square output frame in pixels."""
        return int(self.preprocessing.size * self.output_scale)

    def config(self) -> dict[str, Any]:
        """JSON-able settings that rebuild this method around the same base model."""
        return {"method": self.name, "num_classes": self.num_classes, "in_channels": self.in_channels,
                "options": self.options}

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Dice + binary / multi-class cross-entropy, ignoring 255 pixels (padding included)."""
        return segmentation_loss(logits, batch["target"], self.num_classes)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, num_classes, h, w) class probabilities from logits."""
        if self.out_channels == 1:
            p = torch.sigmoid(logits)
            return torch.cat([1 - p, p], dim=1)
        return torch.softmax(logits, dim=1)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changes (what an adapter stores): see :func:`trainable_tensors`."""
        return trainable_tensors(self)

    def geometry_of(self, height: int, width: int) -> Geometry:
        """The preprocessing geometry of an image of this size."""
        return Geometry((height, width), resized_shape(height, width, self.preprocessing))

    def target_tensor(self, target: np.ndarray, geometry: Geometry) -> torch.Tensor:
        """The target mask in the output frame, (side, side) long, padding and ignore = 255."""
        return target_in_frame(target, geometry, self.preprocessing, self.output_side)

    def to_original(self, probs: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """(C, side, side) probabilities in the output frame -> (C, H, W) at the original size."""
        return masks_to_original(probs, geometry, self.preprocessing)


def trainable_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters plus the buffers of every module that owns one (batch-norm statistics).

    Without the running means and variances a reloaded model would predict differently in
    eval mode.
    """
    keep = {n for n, p in module.named_parameters() if p.requires_grad}
    for prefix, sub in module.named_modules():
        if any(p.requires_grad for p in sub.parameters(recurse=False)):
            keep.update(f"{prefix}.{n}" if prefix else n for n, _ in sub.named_buffers(recurse=False))
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items() if k in keep}


def freeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad = False`` on every parameter and return the module."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def target_in_frame(target: np.ndarray, geometry: Geometry, spec: Preprocessing, side: int) -> torch.Tensor:
    """Map an (H, W) label mask into a square output frame of ``side`` pixels.

    The mask is resized (nearest) as the image is, padded with 255 where the image is
    padded, and brought to ``side`` x ``side`` (nearest), so target pixels line up with the
    model's output.
    """
    t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.uint8)).float()[None, None]
    new_h, new_w = geometry.resized_hw
    t = F.interpolate(t, (new_h, new_w), mode="nearest")
    t = F.pad(t, (0, spec.size - new_w, 0, spec.size - new_h), value=IGNORE)
    t = F.interpolate(t, (side, side), mode="nearest")
    return t[0, 0].long()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice + cross-entropy over non-ignored pixels.

    Args:
        logits: (B, 1, h, w) for one foreground class, else (B, num_classes, h, w).
        target: (B, h, w) long class ids, 255 = ignore.
        num_classes: classes including background.
    """
    valid = target != IGNORE
    if not valid.any():
        return logits.sum() * 0.0
    if logits.shape[1] == 1:
        x = logits[:, 0][valid]
        y = (target[valid] > 0).float()
        bce = F.binary_cross_entropy_with_logits(x, y)
        p = torch.sigmoid(x)
        dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        return bce + dice
    safe = torch.where(valid, target, torch.zeros_like(target))
    ce = F.cross_entropy(logits, safe, reduction="none")[valid].mean()
    probs = torch.softmax(logits, dim=1).permute(0, 2, 3, 1)[valid]  # (N, C)
    onehot = F.one_hot(safe[valid], num_classes).float()
    inter = (probs * onehot).sum(0)
    dice = 1 - ((2 * inter + 1) / (probs.sum(0) + onehot.sum(0) + 1)).mean()
    return ce + dice


class BandAdapter(nn.Module):
    """A trainable 1x1 convolution from any number of bands to the encoder's 3 channels.

    Initialised to pass ``rgb`` (indices into the input bands) straight through, so before
    training the model sees exactly the chosen RGB-like bands; the other bands start with
    zero weight and training can bring them in.
    """

    def __init__(self, in_channels: int, rgb: tuple[int, int, int] = (0, 1, 2)) -> None:
        super().__init__()
        if any(not 0 <= i < in_channels for i in rgb):
            raise InputError(f"rgb band indices {rgb} must lie in 0..{in_channels - 1}")
        self.conv = nn.Conv2d(in_channels, 3, kernel_size=1, bias=True)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            for out, i in enumerate(rgb):
                self.conv.weight[out, i, 0, 0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) 0-255 values -> (B, 3, H, W) 0-255 values."""
        return self.conv(x)


def raw_input(pixels: np.ndarray, spec: Preprocessing) -> tuple[torch.Tensor, Geometry]:
    """Resize (H, W, C) uint8 pixels like SAM's preprocessing, without normalising.

    Returns:
        (C, size, size) float 0-255 values, zero-padded bottom-right, and the geometry.
    """
    from samadapt.imagery.preprocess import resize_to_model

    x, geometry = resize_to_model(pixels, spec)
    new_h, new_w = geometry.resized_hw
    return F.pad(x, (0, spec.size - new_w, 0, spec.size - new_h)), geometry


def normalise(raw: torch.Tensor, geometry_hw: torch.Tensor | None, spec: Preprocessing) -> torch.Tensor:
    """ImageNet-normalise (B, 3, S, S) 0-255 values and zero the padding (as SAM's preprocessing)."""
    mean = torch.tensor(spec.mean, device=raw.device, dtype=raw.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=raw.device, dtype=raw.dtype).view(1, 3, 1, 1)
    x = (raw - mean) / std
    if geometry_hw is not None:
        rows = torch.arange(raw.shape[-2], device=raw.device)
        cols = torch.arange(raw.shape[-1], device=raw.device)
        inside = (rows[None, :, None] < geometry_hw[:, 0, None, None]) & (cols[None, None, :] < geometry_hw[:, 1, None, None])
        x = x * inside[:, None].to(x.dtype)
    return x
