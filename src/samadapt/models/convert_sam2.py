"""Load Meta's official SAM 2 / 2.1 ``.pt`` checkpoints into transformers' ``Sam2Model``.

The official files (``sam2.1_hiera_tiny.pt`` and siblings) hold ``{"model": state_dict}`` of the
``sam2`` package's ``SAM2Base``: the image encoder (``image_encoder.trunk`` = Hiera,
``image_encoder.neck`` = FPN), ``sam_prompt_encoder``, ``sam_mask_decoder``, and the video
parts (memory attention and encoder, object pointers, temporal encodings). samadapt segments
images, so the video parts are left out on purpose and the rest is renamed to the layout of
``transformers.Sam2Model`` (the image model; the same names as in ``Sam2VideoModel``).

As for SAM, three steps: :func:`convert_meta_sam2_state_dict` renames (one reshape: the four
point embeddings become one table; the prompt encoder's Gaussian matrix is stored twice, as
transformers keeps it), :func:`infer_sam2_config` reads the architecture, and
:func:`load_meta_sam2` loads strictly. Widths, depths and stage boundaries are read off the
tensor shapes; head counts, window sizes and global-attention blocks leave no trace in any
shape, so they are taken from the published facts (``published.json``) of the one size
whose shapes match, and a checkpoint of no published size is refused.

Preprocessing is SAM 2's: the image squashed to 1024 x 1024 (no aspect kept, no padding),
ImageNet normalisation, prompts in pixels of that frame; the official predictor and
transformers agree on it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from samadapt.errors import CheckpointError
from samadapt.models.convert_common import PROMPT_AND_DECODER_RENAMES, check_keys

__all__ = ["convert_meta_sam2_state_dict", "infer_sam2_config", "load_meta_sam2"]

#: Official keys of the video parts, which ``Sam2Model`` has no use for.
VIDEO_ONLY = re.compile(
    r"^(memory_attention\.|memory_encoder\.|mask_downsample\.|obj_ptr_proj\.|obj_ptr_tpos_proj\."
    r"|maskmem_tpos_enc$|no_mem_pos_enc$|no_obj_ptr$|no_obj_embed_spatial$)"
)

_HEADS3 = r"(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head))"
_RENAMES = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^no_mem_embed$", "no_memory_embedding"),
        (r"^image_encoder\.trunk\.", "vision_encoder.backbone."),
        (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
        (r"^(vision_encoder\.backbone)\.patch_embed\.proj\.", r"\1.patch_embed.projection."),
        (r"^(vision_encoder\.backbone\.blocks\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
        (r"^(vision_encoder\.backbone\.blocks\.\d+\.mlp)\.layers\.0\.", r"\1.proj_in."),
        (r"^(vision_encoder\.backbone\.blocks\.\d+\.mlp)\.layers\.1\.", r"\1.proj_out."),
        (r"^sam_prompt_encoder\.", "prompt_encoder."),
        (r"^sam_mask_decoder\.", "mask_decoder."),
        *PROMPT_AND_DECODER_RENAMES,
        (r"^(mask_decoder\..*)\.out_proj\.", r"\1.o_proj."),
        (r"^(mask_decoder\.transformer\.layers\.\d+\.mlp)\.layers\.0\.", r"\1.proj_in."),
        (r"^(mask_decoder\.transformer\.layers\.\d+\.mlp)\.layers\.1\.", r"\1.proj_out."),
        # Three-layer heads: the official list [0, 1, 2] is transformers' proj_in, layers.0, proj_out.
        (rf"^{_HEADS3}\.layers\.0\.", r"\1.proj_in."),
        (rf"^{_HEADS3}\.layers\.1\.", r"\1.layers.0."),
        (rf"^{_HEADS3}\.layers\.2\.", r"\1.proj_out."),
    )
)
_POINT_EMBEDDING = re.compile(r"^sam_prompt_encoder\.point_embeddings\.(\d+)\.weight$")
_GAUSSIAN = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_HF_GAUSSIANS = ("prompt_encoder.shared_embedding.positional_embedding", "shared_image_embedding.positional_embedding")


def convert_meta_sam2_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official SAM 2 / 2.1 state dict to the layout of ``transformers.Sam2Model``.

    The video parts (:data:`VIDEO_ONLY`) are left out. Keys this function does not know pass
    through unchanged, so that strict loading names them.

    Args:
        state_dict: Tensors keyed as in ``sam2.modeling.sam2_base.SAM2Base.state_dict()``.

    Returns:
        Tensors keyed as in ``transformers.Sam2Model.state_dict()``.
    """
    converted: dict[str, torch.Tensor] = {}
    points: dict[int, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if VIDEO_ONLY.match(key):
            continue
        if match := _POINT_EMBEDDING.match(key):
            points[int(match[1])] = tensor  # nn.Embedding(1, C) each
            continue
        if key == _GAUSSIAN:
            for new_key in _HF_GAUSSIANS:
                converted[new_key] = tensor
            continue
        new_key = key
        for pattern, replacement in _RENAMES:
            new_key = pattern.sub(replacement, new_key, count=1)
        converted[new_key] = tensor
    if points:
        if sorted(points) != list(range(len(points))):
            raise CheckpointError(
                f"the checkpoint's point embeddings are numbered {sorted(points)}; expected 0, 1, 2, …"
            )
        converted["prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in range(len(points))], dim=0)
    return converted


def infer_sam2_config(state_dict: Mapping[str, torch.Tensor]):  # noqa: ANN201 - a transformers Sam2Config
    """The ``Sam2Config`` of an official SAM 2 / 2.1 state dict.

    The Hiera width, its blocks per stage and stage widths (a block that changes width has a
    ``proj``), and the window position embedding's size are read off the shapes; the published
    size they match supplies the head counts, window sizes and global-attention blocks.

    Raises:
        CheckpointError: the shapes match none of the published SAM 2.1 sizes.
    """
    from transformers import Sam2Config

    from samadapt.models.registry import REGISTRY

    patch = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    window = state_dict.get("image_encoder.trunk.pos_embed_window")
    background = state_dict.get("image_encoder.trunk.pos_embed")
    if patch is None or window is None or background is None:
        raise CheckpointError("the checkpoint lacks the Hiera patch and position embeddings every SAM 2 checkpoint has")
    indexes = {int(m[1]) for k in state_dict if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))}
    if not indexes:
        raise CheckpointError("the checkpoint has no Hiera blocks (image_encoder.trunk.blocks.*)")
    depth = 1 + max(indexes)
    starts = [0] + [i for i in range(depth) if f"image_encoder.trunk.blocks.{i}.proj.weight" in state_dict]
    blocks = [b - a for a, b in zip(starts, starts[1:] + [depth], strict=False)]
    widths = [int(patch.shape[0])] + [int(state_dict[f"image_encoder.trunk.blocks.{i}.proj.weight"].shape[0])
                                      for i in starts[1:]]
    found = {"hidden_size": int(patch.shape[0]), "blocks_per_stage": blocks, "embed_dim_per_stage": widths,
             "window_positional_embedding_background_size": list(background.shape[-2:])}
    for spec in REGISTRY.values():
        backbone = spec.config.get("vision_config", {}).get("backbone_config")
        if backbone and all(backbone.get(k) == v for k, v in found.items()):
            parts = {k: v for k, v in spec.config.items() if k not in ("model_type", "architectures")}
            return Sam2Config(**parts)
    raise CheckpointError(
        f"the checkpoint's Hiera ({found}) is none of the published SAM 2.1 sizes (tiny, small, base-plus, large); "
        "its head counts and attention windows cannot be read from the weights"
    )


def load_meta_sam2(path: Path, state_dict: Mapping[str, torch.Tensor]):  # noqa: ANN201 - a transformers Sam2Model
    """Build ``Sam2Model`` from an official SAM 2 / 2.1 state dict and load it strictly, in eval mode.

    Raises:
        CheckpointError: the shapes match no published size, or keys are missing, unexpected or
            of the wrong shape (listed in transformers' names).
    """
    from transformers import Sam2Model

    config = infer_sam2_config(state_dict)
    converted = convert_meta_sam2_state_dict(state_dict)
    model = Sam2Model(config)
    check_keys(model, converted, path)
    model.load_state_dict(converted, strict=True)
    return model.eval()
