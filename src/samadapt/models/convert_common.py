"""What the SAM and SAM 2 converters share: the renames laid out alike in both, and the strict key check.

:mod:`samadapt.models.convert` (SAM, SAM-HQ) and :mod:`samadapt.models.convert_sam2` both use
these; the SAM converter hands SAM 2 files to the SAM 2 one, so the shared pieces live here,
below both.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from samadapt.errors import CheckpointError

__all__ = ["PROMPT_AND_DECODER_RENAMES", "check_keys"]

#: Renames SAM and SAM 2 share: their prompt encoders' mask downscaling and their mask decoders'
#: two-way transformer and upscaling are laid out alike on both sides.
PROMPT_AND_DECODER_RENAMES = (
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.", r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
)


def check_keys(model: torch.nn.Module, converted: Mapping[str, torch.Tensor], path: Path) -> None:
    """Raise CheckpointError listing missing, unexpected and misshapen keys (in transformers' names)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(converted[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(expected) & set(converted)
        if converted[k].shape != expected[k].shape
    )
    problems = [
        f"{len(names)} {label} ({', '.join(names[:5])}{', …' if len(names) > 5 else ''})"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("of wrong shape", mismatched))
        if names
    ]
    if problems:
        raise CheckpointError(
            f"{path} does not match the {type(model).__name__} its shapes describe, keys given in transformers "
            f"names: {'; '.join(problems)}."
        )
