"""Pieces the adaptation methods share: losses, the output frame, input scaling, freezing.

Targets are label masks with :data:`~samadapt.prompts.types.IGNORE` (255) for pixels that
carry no label (padding included); every loss here leaves those pixels out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samadapt.errors import InputError
from samadapt.imagery.preprocess import Geometry, Preprocessing
from samadapt.prompts.types import IGNORE

if TYPE_CHECKING:
    from transformers import Sam2Model, SamHQModel, SamModel

    from samadapt.models.loading import LoadedModel


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


def transformers_model(base: LoadedModel) -> SamModel | SamHQModel | Sam2Model:
    """The base model's transformers model, typed as the classes the sam, sam-hq and sam2 families load.

    ``LoadedModel.model`` is typed as any ``nn.Module``, whose parts read by name (prompt
    encoder, mask decoder) would type as tensors too.
    """
    return cast("SamModel | SamHQModel | Sam2Model", base.model)


def model_config(base: LoadedModel) -> Any:
    """The base model's transformers config (``SamConfig``, ``SamHQConfig`` or ``Sam2Config``).

    Typed ``Any`` because transformers types the sub-configs read here (``vision_config``,
    ``mask_decoder_config``) as ``dict | PreTrainedConfig | None``, though a loaded model's are
    always config objects, read by attribute.
    """
    return transformers_model(base).config


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
            assert self.conv.bias is not None  # built with bias=True
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
        in_rows = rows[None, :, None] < geometry_hw[:, 0, None, None]
        inside = in_rows & (cols[None, None, :] < geometry_hw[:, 1, None, None])
        x = x * inside[:, None].to(x.dtype)
    return x


def candidate_losses(masks: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy + Dice of every candidate mask against its object, ignoring 255.

    Args:
        masks: (..., K, h, w) logits, K candidates per object, e.g. (B, N, K, h, w).
        targets: (..., h, w) long, 1 = object, 0 = not, 255 = ignore, e.g. (B, N, h, w).

    Returns:
        (..., K) losses (the per-object form of :func:`segmentation_loss` for one class).
    """
    keep = (targets != IGNORE).unsqueeze(-3).float()
    y = (targets == 1).unsqueeze(-3).float()
    bce = F.binary_cross_entropy_with_logits(masks, y.expand_as(masks), reduction="none")
    bce = (bce * keep).sum((-2, -1)) / keep.sum((-2, -1)).clamp(min=1.0)
    p = torch.sigmoid(masks) * keep
    dice = 1 - (2 * (p * y).sum((-2, -1)) + 1) / (p.sum((-2, -1)) + (y * keep).sum((-2, -1)) + 1)
    return bce + dice


def candidate_ious(masks: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of every thresholded candidate mask (logit > 0) with its object, ignoring 255.

    Args:
        masks: (..., K, h, w) logits.
        targets: (..., h, w) long, 1 = object, 0 = not, 255 = ignore.

    Returns:
        (..., K) IoUs in [0, 1]; 1 where both the mask and the object are empty.
    """
    keep = targets != IGNORE
    pred = (masks > 0) & keep.unsqueeze(-3)
    y = ((targets == 1) & keep).unsqueeze(-3)
    inter = (pred & y).sum((-2, -1)).float()
    union = (pred | y).sum((-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))
