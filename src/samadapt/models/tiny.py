"""Tiny random-initialised models of each family, saved in the transformers layout.

They run in milliseconds on a CPU and go through the same loading code as real
checkpoints, so tests, CI and an offline smoke test need no download. Their masks mean
nothing; a ``samadapt.json`` beside the weights marks them so outputs can say so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import torch

from samadapt.errors import InputError
from samadapt.models.registry import Family

if TYPE_CHECKING:
    from transformers import PreTrainedModel

TINY_IMAGE_SIZE = 256
MARKER = "samadapt.json"


class _Parts(TypedDict):
    """The three sub-configs of a SAM-family config, as keyword arguments of its constructor."""

    vision_config: dict[str, Any]
    prompt_encoder_config: dict[str, Any]
    mask_decoder_config: dict[str, Any]


def _sam_parts(hidden: int = 32) -> _Parts:
    return {
        "vision_config": dict(
            hidden_size=hidden, output_channels=hidden, num_hidden_layers=2, num_attention_heads=2,
            image_size=TINY_IMAGE_SIZE, patch_size=16, window_size=4, global_attn_indexes=[1],
            num_pos_feats=hidden // 2, mlp_dim=2 * hidden, initializer_range=0.02,
        ),
        "prompt_encoder_config": dict(
            hidden_size=hidden, image_size=TINY_IMAGE_SIZE, patch_size=16, mask_input_channels=4
        ),
        "mask_decoder_config": dict(
            hidden_size=hidden, mlp_dim=2 * hidden, num_attention_heads=2, iou_head_hidden_dim=hidden
        ),
    }


def tiny_config(family: Family):  # noqa: ANN201 - returns a transformers config of the family
    """Build the transformers config of a tiny model (input 256 px, hidden size 32)."""
    from transformers import Sam2Config, SamConfig, SamHQConfig

    if family == "sam":
        return SamConfig(**_sam_parts())
    if family == "sam-hq":
        parts = _sam_parts()
        parts["mask_decoder_config"]["vit_dim"] = parts["vision_config"]["hidden_size"]
        return SamHQConfig(**parts)
    if family == "sam2":
        parts = _sam_parts()
        s = TINY_IMAGE_SIZE
        parts["vision_config"] = dict(
            backbone_config=dict(
                model_type="sam2_hiera_det_model", hidden_size=8, image_size=[s, s],
                blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[8, 16, 32, 64],
                num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[4, 4, 4, 4],
                global_attention_blocks=[3], window_positional_embedding_background_size=[4, 4],
            ),
            backbone_channel_list=[64, 32, 16, 8],
            backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
            fpn_hidden_size=32,
        )
        return Sam2Config(**parts)
    if family == "edgetam":
        return _edgetam_config()
    if family == "sam3":
        from samadapt.models.sam3 import tiny_sam3_config
        from samadapt.models.tiny_tokenizers import clip_vocab

        return tiny_sam3_config(vocab_size=len(clip_vocab()))
    raise InputError(f"unknown model family {family!r}; use sam, sam2, sam-hq or edgetam")


def _edgetam_config():  # noqa: ANN202 - an EdgeTamConfig
    """EdgeTAM at 256 px: timm's ``repvit_m1`` narrowed to stage widths 8-64 through the timm-wrapper
    ``model_args`` (which timm itself would honour), with SAM 2's tiny neck, prompt encoder and decoder."""
    from transformers import EdgeTamConfig, TimmWrapperConfig

    parts = _sam_parts()
    s = TINY_IMAGE_SIZE
    parts["vision_config"] = dict(
        backbone_config=TimmWrapperConfig(  # an object: from a dict, transformers would ask timm for labels
            architecture="repvit_m1",
            model_args=dict(in_chans=3, features_only=True, out_indices=[0, 1, 2, 3],
                            embed_dim=[8, 16, 32, 64], depth=[1, 1, 2, 1]),
        ),
        backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
        fpn_hidden_size=32,
    )
    return EdgeTamConfig(**parts)


def build_tiny_model(family: Family, seed: int = 0) -> PreTrainedModel:
    """A tiny model of the family with weights drawn from a seeded generator."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    model: PreTrainedModel
    if family == "edgetam":  # its timm backbone is built by samadapt (samadapt.models.edgetam)
        from samadapt.models.edgetam import build_edgetam

        model = build_edgetam(tiny_config(family))
    elif family == "sam3":  # saved as facebook/sam3 is: the video model holding detector and tracker
        from transformers import Sam3VideoModel

        model = Sam3VideoModel(tiny_config(family))
    else:
        model = AutoModel.from_config(tiny_config(family))
    # transformers initialises some SAM parameters to exactly zero; random values everywhere
    # make tests that compare implementations meaningful.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 0 and torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def is_tiny_model_folder(folder: Path) -> bool:
    """True when a folder holds nothing but a tiny model samadapt wrote (so it may be replaced)."""
    try:
        marked = json.loads((folder / MARKER).read_text()).get("random_init") is True
    except (OSError, ValueError, AttributeError):
        return False
    from samadapt.models.tiny_tokenizers import TOKENIZER_FILES

    return marked and {p.name for p in folder.iterdir()} <= {"config.json", "model.safetensors", MARKER,
                                                              *TOKENIZER_FILES}


def save_tiny_model(out_dir: Path, family: Family = "sam", *, seed: int = 0, overwrite: bool = False) -> Path:
    """Write a tiny random model in the transformers layout to ``out_dir``.

    The folder is assembled under a temporary name and renamed, so it is never half-written.

    Raises:
        OutputExistsError: if ``out_dir`` exists and ``overwrite`` is False.
    """
    from transformers.utils import logging as hf_logging

    from samadapt._io import atomic_dir

    hf_logging.disable_progress_bar()
    with atomic_dir(Path(out_dir), overwrite=overwrite, kind="tiny model", owned=is_tiny_model_folder) as tmp:
        build_tiny_model(family, seed).save_pretrained(tmp)
        if family == "sam3":
            from samadapt.models.sam3 import publish_layout
            from samadapt.models.tiny_tokenizers import write_clip_tokenizer

            publish_layout(tmp / "model.safetensors")
            write_clip_tokenizer(tmp, max_length=32, pad_token="<|endoftext|>")
        (tmp / MARKER).write_text(json.dumps({"random_init": True, "family": family, "seed": seed}))
    return Path(out_dir)
