"""SAM-HQ's additions to SAM's mask decoder, for the batched pass of :mod:`samadapt.models.sam_decoder`.

SAM-HQ decodes SAM's masks plus one more from an HQ output token. That mask is the HQ
token's hypernetwork row times features made of two parts:

* the upscaled mask features of each object (SAM's own upscaling output) through a 3x3
  convolution, a LayerNorm, a GELU and another 3x3 convolution;
* image-side features from the image embedding and the first early ViT features, each
  through two 2x2 transposed convolutions: they depend on the image alone, so
  :func:`hq_features` computes them once for every prompt of a call.

transformers returns (``hq_token_only=False``) each SAM mask plus the HQ mask, in multimask
mode sorted by predicted IoU; :func:`add_hq_masks` does the same. All runs in the dtype of
the decoder pass (float32 or bfloat16), channels-last, so oneDNN's convolutions need no
layout copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Objects whose SAM-HQ mask convolutions run together (each: 8 + 4 MB of bf16 intermediates at 1024 px).
HQ_OBJECTS = 1


def _channels_first_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SAM-HQ's channels-first LayerNorm of (N, C, H, W) ``x`` that is channels-last in memory."""
    out = F.layer_norm(x.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    return out.permute(0, 3, 1, 2)


def _conv(conv: nn.Module, x: torch.Tensor, transposed: bool = False) -> torch.Tensor:
    """``conv(x)`` with the weights in ``x``'s dtype, channels-last."""
    w, b = conv.weight.to(x.dtype), None if conv.bias is None else conv.bias.to(x.dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    if transposed:
        return F.conv_transpose2d(x, w, b, stride=conv.stride)
    return F.conv2d(x, w.contiguous(memory_format=torch.channels_last), b, padding=conv.padding)


def hq_features(dec: nn.Module, image: torch.Tensor, vit: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """SAM-HQ's image-side mask features, (1, C/8, 4h, 4w) in ``dtype`` (channels-last in memory).

    They depend on the image alone (its embedding (1, C, h, w) and the first early ViT
    features ``vit`` (1, h, w, C_vit)), so one computation serves every prompt of a call.
    """
    x = _conv(dec.encoder_conv1, image.to(dtype), transposed=True)
    x = _conv(dec.encoder_conv2, F.gelu(_channels_first_norm(dec.encoder_norm, x)).to(dtype), transposed=True)
    if vit is not None:
        v = _conv(dec.compress_vit_conv1, vit.permute(0, 3, 1, 2).to(dtype), transposed=True)
        v = _conv(dec.compress_vit_conv2, F.gelu(_channels_first_norm(dec.compress_vit_norm, v)).to(dtype),
                  transposed=True)
        x = x + v
    return x


def add_hq_masks(dec: nn.Module, masks: torch.Tensor, iou: torch.Tensor, upscaled: torch.Tensor,
                 hq: torch.Tensor, hq_rows: torch.Tensor, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM-HQ's masks as transformers returns them (``hq_token_only=False``).

    Args:
        masks: (N, M, H, W) SAM masks of the chosen tokens; iou: (N, M) their predicted IoUs.
        upscaled: (N, H, W, C/8) the upscaled features; hq: (1, C/8, H, W) from :func:`hq_features`.
        hq_rows: (N, C/8) the HQ token's hypernetwork row.

    Returns:
        Logits (N, M, H, W): the SAM masks (in multimask mode sorted by predicted IoU, highest
        first) each plus the HQ mask, and the IoUs (N, M) in the same order.
    """
    n, h, w, c2 = upscaled.shape
    hq = hq.to(upscaled.dtype)
    rows = hq_rows.to(upscaled.dtype)[:, None]  # (N, 1, C/8)
    hq_mask = torch.empty(n, 1, h, w, dtype=torch.float32, device=masks.device)
    for i in range(0, n, HQ_OBJECTS):  # a few objects at a time: their intermediates are reused memory
        j = min(n, i + HQ_OBJECTS)
        x = _conv(dec.mask_conv1, upscaled[i:j].permute(0, 3, 1, 2))
        x = torch._C._nn.gelu_(_channels_first_norm(dec.mask_norm, x).to(upscaled.dtype))
        x = _conv(dec.mask_conv2, x).add_(hq).permute(0, 2, 3, 1).reshape(j - i, h * w, c2)  # channels-last: a view
        hq_mask[i:j].copy_(torch.bmm(rows[i:j], x.transpose(1, 2)).view(j - i, 1, h, w))
    if multimask:
        iou, order = torch.sort(iou, dim=1, descending=True)
        masks = torch.gather(masks, 1, order[:, :, None, None].expand(-1, -1, h, w))
    return masks.add_(hq_mask), iou
