"""A correction for transformers' SAM-HQ mask decoder, applied at load time when needed.

In transformers 5.x (seen in 5.23) ``SamHQMaskDecoder.forward`` keeps the image embedding
from *before* the two-way transformer (``point_embedding, iou_token_out =
self.transformer(...)`` drops the transformer's updated image tokens) and upscales that,
with height and width swapped. The official SAM-HQ upscales the transformer's output, as
SAM does. Two hooks restore that: one keeps the transformer's image tokens, the other
feeds them, laid out as (B * point_batch, C, H, W), to the first upscaling layer. Nothing
is copied from transformers; the fix is applied only when the installed source still has
the faulty line, so a fixed transformers release is left alone.
"""

from __future__ import annotations

import functools
import inspect

import torch

_FAULTY = "point_embedding, iou_token_out = self.transformer("


@functools.lru_cache(maxsize=1)
def needs_hq_decoder_fix() -> bool:
    """True when the installed transformers has the faulty SAM-HQ decoder (read once per process)."""
    try:
        from transformers.models.sam_hq.modeling_sam_hq import SamHQMaskDecoder
    except ImportError:
        return False
    try:
        return _FAULTY in inspect.getsource(SamHQMaskDecoder.forward)
    except (OSError, TypeError):
        return False


def fix_sam_hq_decoder(model: torch.nn.Module) -> bool:
    """Install the correction on a ``SamHQModel``'s mask decoder; returns True if installed.

    Idempotent: a decoder already fixed is left as it is.
    """
    decoder = getattr(model, "mask_decoder", None)
    if decoder is None or getattr(decoder, "_samadapt_fixed", False):
        return False
    state: dict[str, torch.Tensor] = {}

    def keep_image_tokens(_module: torch.nn.Module, _args: object, output: tuple[torch.Tensor, ...]) -> None:
        state["keys"] = output[1]  # (B, point_batch, H*W, C)

    def use_image_tokens(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        keys = state.pop("keys", None)
        if keys is None:
            return args
        (stale,) = args
        b_pb, channels, height, width = stale.shape
        fresh = keys.transpose(-1, -2).reshape(b_pb, channels, height, width)
        return (fresh,)

    decoder.transformer.register_forward_hook(keep_image_tokens)
    decoder.upscale_conv1.register_forward_pre_hook(use_image_tokens)
    decoder._samadapt_fixed = True
    return True
