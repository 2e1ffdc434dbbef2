"""SAM-HQ's additions to SAM's mask decoder, for the batched pass of :mod:`samadapt.models.accel.sam_decoder`.

SAM-HQ decodes SAM's masks plus one more from an HQ output token. That mask is the HQ
token's hypernetwork row times features made of two parts:

* the upscaled mask features of each object (SAM's own upscaling output) through a 3x3
  convolution, a LayerNorm, a GELU and another 3x3 convolution (linear, so the row is folded
  into its weights: one output channel instead of C/8);
* image-side features from the image embedding and the first early ViT features, each
  through two 2x2 transposed convolutions: they depend on the image alone, so
  :func:`hq_features` computes them once for every prompt of a call.

transformers returns (``hq_token_only=False``) each SAM mask plus the HQ mask, in multimask
mode sorted by predicted IoU; :func:`add_hq_masks` does the same. All runs in the dtype of
the decoder pass (float32 or bfloat16), channels-last, so oneDNN's convolutions need no
layout copies.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from samadapt.models.accel.fast_encoder import tensor_identity
from samadapt.models.accel.kept import KeptBeside, KeptPerModule, weights_key
from samadapt.models.accel.sam_fold import centre_scale, foldable_norm, folded_layer_norm, variance_weights

if TYPE_CHECKING:
    from transformers.models.sam_hq.modeling_sam_hq import SamHQMaskDecoder

#: Objects whose SAM-HQ mask convolutions run together (each: 8 MB of bf16 intermediates at 1024 px);
#: one at a time measured fastest (their intermediates stay in reused memory).
HQ_OBJECTS = 1


def _channels_first_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """SAM-HQ's channels-first LayerNorm of (N, C, H, W) ``x`` that is channels-last in memory."""
    out = F.layer_norm(x.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    return out.permute(0, 3, 1, 2)


def _conv(conv: nn.Conv2d | nn.ConvTranspose2d, x: torch.Tensor, transposed: bool = False) -> torch.Tensor:
    """``conv(x)`` with the weights in ``x``'s dtype, channels-last."""
    w, b = conv.weight.to(x.dtype), None if conv.bias is None else conv.bias.to(x.dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    if transposed:
        return F.conv_transpose2d(x, w, b, stride=conv.stride)
    return F.conv2d(x, w.contiguous(memory_format=torch.channels_last), b, padding=conv.padding)


_IMAGE_MODULES = ("encoder_conv1", "encoder_norm", "encoder_conv2", "compress_vit_conv1", "compress_vit_norm",
                  "compress_vit_conv2")


def hq_features(dec: SamHQMaskDecoder, image: torch.Tensor, vit: torch.Tensor | None,
                dtype: torch.dtype) -> torch.Tensor:
    """SAM-HQ's image-side mask features, (1, C/8, 4h, 4w) in ``dtype`` (channels-last in memory).

    They depend on the image alone (its embedding (1, C, h, w) and the first early ViT
    features ``vit`` (1, h, w, C_vit)), so one computation serves every prompt of a call, and
    they are kept beside the embedding tensor while it lives: the next prompts on the same
    embedding (a cached one, as in the service) skip them (17 ms in bf16, 43 ms in fp32 for
    ViT-B on 2 cores). Changed weights or embedding values (their version counters) recompute.
    """
    params = [p for name in _IMAGE_MODULES for p in getattr(dec, name).parameters()]
    key = (dtype, *tensor_identity(image), *(tensor_identity(vit) if vit is not None else ()),
           *(v for p in params for v in tensor_identity(p)))
    return _FEATURES.get(image, key, (vit, dec), lambda: _compute_hq_features(dec, image, vit, dtype))


_WORKSPACE = threading.local()


def workspace(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor kept per thread for the upscaled features of a group of objects (its contents are not kept).

    Freshly allocated tensors this large are new memory maps whose page faults cost more
    than the arithmetic on them; reusing a few buffers avoids that.
    """
    found = getattr(_WORKSPACE, name, None)
    if found is None or found.shape != shape or found.dtype != dtype or found.device != device:
        with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
            found = torch.empty(shape, dtype=dtype, device=device)
        setattr(_WORKSPACE, name, found)
    return found


#: Per image-embedding tensor: the HQ features.
_FEATURES: KeptBeside[torch.Tensor] = KeptBeside()


def _compute_hq_features(dec: SamHQMaskDecoder, image: torch.Tensor, vit: torch.Tensor | None,
                         dtype: torch.dtype) -> torch.Tensor:
    x = _conv(dec.encoder_conv1, image.to(dtype), transposed=True)
    x = _conv(dec.encoder_conv2, F.gelu(_channels_first_norm(dec.encoder_norm, x)).to(dtype), transposed=True)
    if vit is not None:
        v = _conv(dec.compress_vit_conv1, vit.permute(0, 3, 1, 2).to(dtype), transposed=True)
        v = _conv(dec.compress_vit_conv2, F.gelu(_channels_first_norm(dec.compress_vit_norm, v)).to(dtype),
                  transposed=True)
        x = x + v
    return x


#: Per SAM-HQ decoder: ``mask_conv1`` with ``mask_norm``'s centring and weight folded in (:func:`_normed_conv`).
_NORMED: KeptPerModule[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = KeptPerModule()


def _normed_conv(dec: SamHQMaskDecoder, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``mask_conv1``'s weight and bias in ``dtype`` with the LayerNorm after it folded in (its centring and weight
    g, :func:`~samadapt.models.accel.sam_fold.foldable_norm`), and the norm's (C1, 1) variance weights; None where
    the norm is not folded.
    """
    conv, norm = dec.mask_conv1, dec.mask_norm

    def compute() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        g = foldable_norm(norm)
        if g is None:
            return None
        weight, bias = conv.weight.detach().float(), conv.bias
        bias = bias.detach().float() if bias is not None else weight.new_zeros(weight.shape[0])
        weight = centre_scale(weight, g, dim=0)  # over the output channels
        return (weight.to(dtype).contiguous(memory_format=torch.channels_last), centre_scale(bias, g).to(dtype),
                variance_weights(g).to(dtype))

    return _NORMED.get(dec, (dtype, *weights_key(conv.weight, conv.bias, norm.weight)), compute)


def _normed_features(dec: SamHQMaskDecoder, upscaled: torch.Tensor) -> torch.Tensor:
    """``gelu(mask_norm(mask_conv1(x)))`` of upscaled features (n, H, W, C/8), as (n, H W, C1) channels-last."""
    n, h, w, _ = upscaled.shape
    normed = _normed_conv(dec, upscaled.dtype)
    if normed is None:
        x = _conv(dec.mask_conv1, upscaled.permute(0, 3, 1, 2))
        # (n, C1, h, w) channels-last; torch's stub of torch._C._nn lacks the in-place gelu_
        x = torch._C._nn.gelu_(_channels_first_norm(dec.mask_norm, x).to(upscaled.dtype))  # type: ignore[attr-defined]
        return x.permute(0, 2, 3, 1).reshape(n, h * w, -1)
    weight, bias, inverse = normed
    x = F.conv2d(upscaled.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last), weight, bias,
                 padding=dec.mask_conv1.padding)
    flat = x.permute(0, 2, 3, 1).reshape(n * h * w, -1)  # centred and scaled by g
    flat = folded_layer_norm(flat, inverse, dec.mask_norm.bias, dec.mask_norm.eps)
    return torch._C._nn.gelu_(flat).view(n, h * w, -1)  # type: ignore[attr-defined]


def add_hq_masks(dec: SamHQMaskDecoder, masks: torch.Tensor, iou: torch.Tensor, upscaled: torch.Tensor,
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
    dtype = upscaled.dtype
    conv2 = dec.mask_conv2
    bias, padding = conv2.bias, conv2.padding
    assert bias is not None and not isinstance(padding, str)  # transformers builds it with a bias and padding=1
    k2 = conv2.kernel_size[0] * conv2.kernel_size[1]
    # The HQ mask is rows . (conv2(g) + b2 + hq), and conv2 is linear: each object's row folds
    # into conv2's weights, a (C1 -> 1) 3x3 convolution computed as one (C1 x 9) product plus
    # nine shifted sums, instead of a (C1 -> C2) convolution over the whole upscaled grid.
    rows = hq_rows.float()
    folded = torch.einsum("nc,cdk->nkd", rows, conv2.weight.flatten(2).float()).to(dtype)  # (N, 9, C1)
    hq_flat = hq.to(dtype).permute(0, 2, 3, 1).reshape(h * w, c2)  # channels-last: a view
    hq_mask = torch.mm(rows.to(dtype), hq_flat.t()).float().add_((rows @ bias.float())[:, None])
    hq_mask = hq_mask.view(n, 1, h, w)
    pad_y, pad_x = padding

    for block in range(-(-n // HQ_OBJECTS)):  # a few objects at a time: their intermediates are reused memory
        i = block * HQ_OBJECTS
        j = min(n, i + HQ_OBJECTS)
        z = torch.bmm(folded[i:j], _normed_features(dec, upscaled[i:j]).transpose(1, 2))  # (n, 9, hw)
        z = F.pad(z.view(j - i, k2, h, w).float(), (pad_x, pad_x, pad_y, pad_y))
        acc = hq_mask[i:j, 0]
        for k in range(k2):
            ky, kx = divmod(k, conv2.kernel_size[1])
            acc += z[:, k, ky : ky + h, kx : kx + w]
    if multimask:
        iou, order = torch.sort(iou, dim=1, descending=True)
        masks = torch.gather(masks, 1, order[:, :, None, None].expand(-1, -1, h, w))
    return masks.add_(hq_mask), iou
