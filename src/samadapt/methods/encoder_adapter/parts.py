"""The pieces of ``encoder-adapter`` around its model: its option types, the tensors SAM's
decoder reads, the regions it prompts, and the checks of its settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from samadapt.errors import InputError
from samadapt.methods._common import model_config
from samadapt.methods.unet import UNet
from samadapt.prompts.sampling import regions

if TYPE_CHECKING:
    from samadapt.models.loading import LoadedModel

PromptSource = Literal["unet", "truth"]
#: How training proceeds: the abstract's two stages (U-Net, then the 1x1 convolutions) or all at once.
Schedule = Literal["two-stage", "joint"]
#: What one training epoch trains: the U-Net alone, the 1x1 convolutions alone, or both.
Stage = Literal["unet", "adapter", "joint"]
#: Logit of "no object here" in the union of object masks.
NO_OBJECT = -20.0
PARTS = "encoder_adapter_parts"
#: The share of a two-stage run's epochs that train the U-Net alone, unless ``unet_fraction`` says otherwise.
UNET_FRACTION = 0.5


@dataclass(frozen=True)
class EmbeddingSlot:
    """One tensor SAM's mask decoder reads from its image encoder.

    Attributes:
        key: name as in :data:`samadapt.models.sam.Embedding` ("image", "high_res_0", ...).
        channels: channels the decoder expects.
        side: side of the square grid in pixels.
        channels_last: True for SAM-HQ's ViT features, which are (B, h, w, C).
    """

    key: str
    channels: int
    side: int
    channels_last: bool = False


def embedding_slots(base: LoadedModel) -> list[EmbeddingSlot]:
    """The tensors the base model's mask decoder needs, read from its config."""
    cfg = model_config(base)
    if base.family == "sam2":
        hidden = int(cfg.mask_decoder_config.hidden_size)
        sizes = cfg.vision_config.backbone_feature_sizes
        return [
            EmbeddingSlot("high_res_0", hidden // 8, int(sizes[0][0])),
            EmbeddingSlot("high_res_1", hidden // 4, int(sizes[1][0])),
            EmbeddingSlot("image", int(cfg.vision_config.fpn_hidden_size), int(sizes[2][0])),
        ]
    grid = int(cfg.vision_config.image_size) // int(cfg.vision_config.patch_size)
    slots = [EmbeddingSlot("image", int(cfg.vision_config.output_channels), grid)]
    if base.family == "sam-hq":
        slots.append(EmbeddingSlot("vit_0", int(cfg.mask_decoder_config.vit_dim), grid, channels_last=True))
    return slots



def class_regions(label: np.ndarray, num_classes: int, min_area: int) -> list[tuple[np.ndarray, int]]:
    """Connected regions of every foreground class of an (H, W) label mask (255 = ignore).

    Returns:
        ``(region, class_id)`` pairs, regions as (H, W) bool, largest first (ties: lower
        class first, then :func:`~samadapt.prompts.sampling.regions` order).
    """
    found = [(r, k) for k in range(1, num_classes) for r in regions(label, class_id=k, min_area=min_area)]
    found.sort(key=lambda item: -int(item[0].sum()))
    return found


def check_options(unet: UNet, size: int, o: dict[str, Any]) -> None:
    """Refuse settings the U-Net cannot take, and settings the chosen schedule would ignore."""
    side = round(size * o["unet_scale"])
    if side % unet.multiple:
        raise InputError(
            f"the U-Net input side {side} (model input x unet_scale) must be a multiple of "
            f"2**depth = {unet.multiple}; change unet_scale or depth"
        )
    if not -unet.depth - 1 <= o["level"] <= unet.depth:
        raise InputError(
            f"encoder-adapter option level must be an encoder level from 0 to depth={unet.depth} (or -1 for the "
            f"bottleneck), got {o['level']!r}"
        )
    if o["schedule"] == "two-stage":
        if o["detach_features"]:
            raise InputError(
                "encoder-adapter option detach_features applies to schedule joint; the two-stage schedule already "
                "keeps SAM's loss out of the U-Net (stage two freezes it)"
            )
        if o["unet_weight"] == 0:
            raise InputError("encoder-adapter option unet_weight=0 leaves stage one of the two-stage schedule "
                             "nothing to train; give it a weight above 0")
        if o["sam_weight"] == 0 and o["iou_weight"] == 0:
            raise InputError("encoder-adapter options sam_weight=0 and iou_weight=0 leave stage two of the two-stage "
                             "schedule nothing to train; give sam_weight a weight above 0")
    elif o["unet_fraction"] != UNET_FRACTION:
        raise InputError(
            f"encoder-adapter option unet_fraction={o['unet_fraction']} splits the epochs of the two-stage "
            "schedule, but schedule is joint; drop unet_fraction or use schedule=two-stage"
        )


