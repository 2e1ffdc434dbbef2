"""Load official Meta SAM (and SAM-HQ) ``.pth`` checkpoints into ``transformers`` models.

SAM 2 / 2.1 ``.pt`` files are detected here and converted by :mod:`samadapt.models.convert_sam2`.

Three steps, each its own function: :func:`convert_meta_sam_state_dict` renames the keys of the
``segment_anything`` layout (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``) to the
``transformers.SamModel`` layout (a pure function, like timm's checkpoint filters);
:func:`infer_sam_config` reads the architecture off the tensor shapes; :func:`load_meta_sam` reads
a file safely (``weights_only=True``), checks its family and loads strictly.
:func:`convert_meta_checkpoint` writes the result in the Hugging Face folder layout, to cache it.
The configuration keeps the official two-way transformer's LayerNorm eps (1e-5; the Hub's SAM
configs say 1e-6), so the converted model reproduces the official one to fp32 precision.

Prompt conventions are the same on both sides: points and boxes in pixels of the resized model
input (the ``image_size`` frame: longest side resized to 1024 for the official models), ``(x, y)``
order, boxes XYXY; both add 0.5 (pixel centre) inside the prompt encoder, so the caller does not.
Only the batching differs: the reference's prompt batch B (points (B, N, 2), labels (B, N), boxes
(B, 4)) is the "point batch" of transformers (``input_points`` (1, B, N, 2), ``input_labels``
(1, B, N), ``input_boxes`` (1, B, 4)); ``input_masks`` (1, 1, 4g, 4g) is one mask per image,
shared by all its prompts.

SAM-HQ checkpoints (``sam_hq_vit_b.pth`` …; keys ``mask_decoder.hf_token`` etc.) load into
``transformers.SamHQModel``. Their weights land correctly, but ``SamHQMaskDecoder.forward`` of
transformers 5.23 upscales the image embedding from before the two-way transformer instead of
after it, so its masks differ from the official SAM-HQ ones (the tests mark this as a known failure).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import torch
from transformers import Sam2Model, SamConfig, SamHQConfig, SamHQModel, SamModel

from samadapt._io import atomic_dir
from samadapt.errors import CheckpointError, ModelNotFoundError, OutputExistsError
from samadapt.models.convert_common import PROMPT_AND_DECODER_RENAMES, check_keys

__all__ = [
    "CheckpointFamily",
    "convert_meta_checkpoint",
    "convert_meta_sam_state_dict",
    "detect_checkpoint_family",
    "infer_sam_config",
    "load_meta_sam",
]

CheckpointFamily = Literal["sam", "sam-hq", "sam2", "transformers", "unknown"]

_GAUSSIAN = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_HF_GAUSSIANS = (
    "shared_image_embedding.positional_embedding",
    "prompt_encoder.shared_embedding.positional_embedding",
)
# The official two-way transformer uses nn.LayerNorm's default eps, not the 1e-6 of the rest.
_DECODER_LAYER_NORM_EPS = 1e-5
_DEFAULT_DECODER_HEADS = 8

_RENAMES = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        *PROMPT_AND_DECODER_RENAMES,
        (r"^image_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection."),
        (r"^image_encoder\.pos_embed$", "vision_encoder.pos_embed"),
        (r"^image_encoder\.blocks\.(\d+)\.norm([12])\.", r"vision_encoder.layers.\1.layer_norm\2."),
        (r"^image_encoder\.blocks\.(\d+)\.(attn|mlp)\.", r"vision_encoder.layers.\1.\2."),
        (r"^image_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
        (r"^image_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
        (r"^image_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
        (r"^image_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
        (r"^prompt_encoder\.point_embeddings\.(\d+)\.", r"prompt_encoder.point_embed.\1."),
        # SAM-HQ additions to the mask decoder.
        (r"^mask_decoder\.hf_token\.", "mask_decoder.hq_token."),
        (r"^mask_decoder\.compress_vit_feat\.0\.", "mask_decoder.compress_vit_conv1."),
        (r"^mask_decoder\.compress_vit_feat\.1\.", "mask_decoder.compress_vit_norm."),
        (r"^mask_decoder\.compress_vit_feat\.3\.", "mask_decoder.compress_vit_conv2."),
        (r"^mask_decoder\.embedding_encoder\.0\.", "mask_decoder.encoder_conv1."),
        (r"^mask_decoder\.embedding_encoder\.1\.", "mask_decoder.encoder_norm."),
        (r"^mask_decoder\.embedding_encoder\.3\.", "mask_decoder.encoder_conv2."),
        (r"^mask_decoder\.embedding_maskfeature\.0\.", "mask_decoder.mask_conv1."),
        (r"^mask_decoder\.embedding_maskfeature\.1\.", "mask_decoder.mask_norm."),
        (r"^mask_decoder\.embedding_maskfeature\.3\.", "mask_decoder.mask_conv2."),
    )
)
# Meta's MLP keeps its linear layers in one list; transformers' SamFeedForward splits them into
# proj_in, layers[0 .. n-3] and proj_out, so the new name depends on the MLP's depth.
_MLP = re.compile(
    r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head|hf_mlp))\.layers\.(\d+)\.(.+)$"
)
_MLP_PREFIX_RENAMES = {"mask_decoder.hf_mlp": "mask_decoder.hq_mask_mlp"}


def convert_meta_sam_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official SAM / SAM-HQ state dict to the ``transformers`` layout.

    Every tensor keeps its shape and values (the two layouts need no reshaping) and the same
    tensor objects are returned. Meta's prompt-encoder Gaussian matrix, shape (2, F), becomes
    both ``shared_image_embedding.positional_embedding`` and the tied
    ``prompt_encoder.shared_embedding.positional_embedding``. Keys this function does not
    recognise pass through unchanged, so that strict loading reports them.

    Args:
        state_dict: Tensors keyed as in ``segment_anything.modeling.Sam.state_dict()``.

    Returns:
        Tensors keyed as in ``transformers.SamModel.state_dict()`` (``SamHQModel`` for SAM-HQ).
    """
    mlp_depths: dict[str, int] = {}
    for key in state_dict:
        match = _MLP.match(key)
        if match:
            mlp_depths[match[1]] = max(mlp_depths.get(match[1], 0), int(match[2]) + 1)
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key == _GAUSSIAN:
            for new_key in _HF_GAUSSIANS:
                converted[new_key] = tensor
            continue
        converted[_rename(key, mlp_depths)] = tensor
    return converted


def _rename(key: str, mlp_depths: Mapping[str, int]) -> str:
    match = _MLP.match(key)
    if match:
        prefix, index, rest = match[1], int(match[2]), match[3]
        new_prefix = _MLP_PREFIX_RENAMES.get(prefix, prefix)
        if index == 0:
            return f"{new_prefix}.proj_in.{rest}"
        if index == mlp_depths[prefix] - 1:
            return f"{new_prefix}.proj_out.{rest}"
        return f"{new_prefix}.layers.{index - 1}.{rest}"
    for pattern, replacement in _RENAMES:
        new_key, count = pattern.subn(replacement, key, count=1)
        if count:
            return new_key
    return key


def detect_checkpoint_family(keys: Iterable[str]) -> CheckpointFamily:
    """Tell which model family a state dict belongs to, from its key names alone.

    Args:
        keys: The state dict's keys.

    Returns:
        ``"sam2"`` for SAM 2 / 2.1 (``image_encoder.trunk.*``, ``sam_mask_decoder.*``),
        ``"transformers"`` for a state dict already in the ``transformers`` layout,
        ``"sam-hq"`` for official SAM-HQ, ``"sam"`` for official SAM with a ViT image encoder,
        ``"unknown"`` otherwise (MobileSAM, EfficientSAM, anything else).
    """
    names = set(keys)
    if any(k.startswith(("image_encoder.trunk.", "sam_mask_decoder.", "sam_prompt_encoder.", "memory_attention."))
           for k in names):
        return "sam2"
    if any(k.startswith(("vision_encoder.", "shared_image_embedding.")) for k in names):
        return "transformers"
    has_vit = any(k.startswith("image_encoder.blocks.") for k in names)
    has_decoder = any(k.startswith("mask_decoder.") for k in names)
    if has_vit and has_decoder:
        return "sam-hq" if "mask_decoder.hf_token.weight" in names else "sam"
    return "unknown"


def infer_sam_config(
    state_dict: Mapping[str, torch.Tensor],
    *,
    vision_num_heads: int | None = None,
    decoder_num_heads: int | None = None,
) -> SamConfig | SamHQConfig:
    """Derive the ``transformers`` configuration of an official SAM / SAM-HQ state dict.

    Everything is read off tensor shapes (Meta layout): width, depth, patch and image size
    (``pos_embed`` is (1, g, g, C), image = g * patch), MLP widths, neck channels, prompt and
    decoder widths, ``mask_in_chans``, the IoU head. The relative-position tables, shape
    (2 * s - 1, C / heads), give the rest: blocks whose tables span the whole grid (s = g)
    attend globally, the others give the window size, and the tables' width is the head
    dimension, hence the ViT head count (12 for vit_b, 16 for vit_l and vit_h). Decoder heads
    do not show in any shape; every official model uses 8.

    Args:
        state_dict: Tensors keyed as in ``segment_anything.modeling.Sam.state_dict()``.
        vision_num_heads: Expected ViT head count; checked against the relative-position tables.
        decoder_num_heads: Head count of the two-way transformer; 8 when not given.

    Returns:
        A ``SamConfig``, or a ``SamHQConfig`` when the state dict has SAM-HQ's decoder.

    Raises:
        CheckpointError: A needed tensor is missing or the shapes do not fit together.
    """
    sd = state_dict
    hidden, in_channels, patch, _ = _shape(sd, "image_encoder.patch_embed.proj.weight", 4)
    grid = _shape(sd, "image_encoder.pos_embed", 4)[1]
    depth = _count(sd, r"image_encoder\.blocks\.(\d+)\.")
    head_dims, rows = set(), []
    for i in range(depth):
        height_rows, head_dim = _shape(sd, f"image_encoder.blocks.{i}.attn.rel_pos_h", 2)
        head_dims.add(head_dim)
        rows.append(height_rows)
    if len(head_dims) != 1 or hidden % min(head_dims):
        raise CheckpointError(
            f"The relative-position tables have widths {sorted(head_dims)}, which do not give one head "
            f"dimension dividing the ViT width {hidden}; the checkpoint is not a SAM ViT."
        )
    heads = hidden // head_dims.pop()
    if vision_num_heads is not None and vision_num_heads != heads:
        raise CheckpointError(
            f"vision_num_heads={vision_num_heads} does not match the checkpoint, whose relative-position "
            f"tables give {heads} heads for width {hidden}; leave vision_num_heads unset."
        )
    global_indexes = [i for i, r in enumerate(rows) if r == 2 * grid - 1]
    window_rows = {r for r in rows if r != 2 * grid - 1}
    if len(window_rows) > 1 or any(r % 2 == 0 for r in window_rows):
        raise CheckpointError(
            f"The windowed blocks' relative-position tables have {sorted(window_rows)} rows; SAM needs "
            f"one odd count (2 * window - 1)."
        )
    window = (window_rows.pop() + 1) // 2 if window_rows else grid
    out_channels = _shape(sd, "image_encoder.neck.0.weight", 4)[0]
    pos_feats = _shape(sd, _GAUSSIAN, 2)[1]
    prompt_hidden = _shape(sd, "prompt_encoder.no_mask_embed.weight", 2)[1]
    decoder_hidden = _shape(sd, "mask_decoder.iou_token.weight", 2)[1]
    if not out_channels == prompt_hidden == decoder_hidden == 2 * pos_feats:
        raise CheckpointError(
            f"The neck outputs {out_channels} channels, the prompt encoder is {prompt_hidden} wide, the "
            f"decoder {decoder_hidden} and the Gaussian matrix has {pos_feats} columns; SAM needs the "
            f"three widths equal and twice the column count."
        )
    internal = _shape(sd, "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight", 2)[0]
    decoder_heads = _DEFAULT_DECODER_HEADS if decoder_num_heads is None else decoder_num_heads
    if decoder_heads < 1 or internal % decoder_heads or decoder_hidden % internal:
        raise CheckpointError(
            f"decoder_num_heads={decoder_heads} does not divide the decoder's attention width {internal} "
            f"(of {decoder_hidden}); pass a decoder_num_heads that divides it."
        )
    vision = {
        "hidden_size": hidden,
        "output_channels": out_channels,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "num_channels": in_channels,
        "image_size": grid * patch,
        "patch_size": patch,
        "qkv_bias": "image_encoder.blocks.0.attn.qkv.bias" in sd,
        "mlp_dim": _shape(sd, "image_encoder.blocks.0.mlp.lin1.weight", 2)[0],
        "use_abs_pos": True,
        "use_rel_pos": True,
        "window_size": window,
        "global_attn_indexes": global_indexes,
        "num_pos_feats": pos_feats,
        "layer_norm_eps": 1e-6,
    }
    prompt = {
        "hidden_size": prompt_hidden,
        "image_size": grid * patch,
        "patch_size": patch,
        "mask_input_channels": _shape(sd, "prompt_encoder.mask_downscaling.3.weight", 4)[0],
        "num_point_embeddings": _count(sd, r"prompt_encoder\.point_embeddings\.(\d+)\."),
        "layer_norm_eps": 1e-6,
    }
    decoder = {
        "hidden_size": decoder_hidden,
        "mlp_dim": _shape(sd, "mask_decoder.transformer.layers.0.mlp.lin1.weight", 2)[0],
        "num_hidden_layers": _count(sd, r"mask_decoder\.transformer\.layers\.(\d+)\."),
        "num_attention_heads": decoder_heads,
        "attention_downsample_rate": decoder_hidden // internal,
        "num_multimask_outputs": _shape(sd, "mask_decoder.mask_tokens.weight", 2)[0] - 1,
        "iou_head_depth": _count(sd, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
        "iou_head_hidden_dim": _shape(sd, "mask_decoder.iou_prediction_head.layers.0.weight", 2)[0],
        "layer_norm_eps": _DECODER_LAYER_NORM_EPS,
    }
    if "mask_decoder.hf_token.weight" in sd:
        decoder["vit_dim"] = _shape(sd, "mask_decoder.compress_vit_feat.0.weight", 4)[0]
        if decoder["vit_dim"] != hidden:
            raise CheckpointError(
                f"SAM-HQ's compress_vit_feat takes {decoder['vit_dim']} channels but the ViT is {hidden} wide; "
                f"the HQ decoder does not belong to this image encoder."
            )
        return SamHQConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def _shape(state_dict: Mapping[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...]:
    if key not in state_dict:
        raise CheckpointError(f"The checkpoint has no tensor {key!r}, which every official SAM checkpoint has.")
    shape = tuple(state_dict[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"Tensor {key!r} has shape {shape}; an official SAM checkpoint's has {ndim} axes.")
    return shape


def _count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    """Number of consecutive indexes 0..n-1 captured by ``pattern`` at the start of the keys."""
    regex = re.compile(pattern)
    indexes = {int(m[1]) for key in state_dict if (m := regex.match(key))}
    if not indexes or indexes != set(range(len(indexes))):
        raise CheckpointError(
            f"The checkpoint's keys matching {pattern!r} have indexes {sorted(indexes)}; expected 0, 1, 2, …"
        )
    return len(indexes)


def load_meta_sam(path: Path, *, vision_num_heads: int | None = None) -> SamModel | SamHQModel | Sam2Model:
    """Load an official SAM, SAM-HQ or SAM 2 / 2.1 checkpoint file into a ``transformers`` model.

    The file is read with ``torch.load(map_location="cpu", weights_only=True)`` (a
    ``.safetensors`` file with the same keys works too); a state dict wrapped as
    ``{"model": ...}`` or ``{"state_dict": ...}``, or saved from a ``DistributedDataParallel``
    wrapper (``module.`` prefixes), is unwrapped. Loading is strict.

    Args:
        path: The checkpoint, e.g. ``sam_vit_b_01ec64.pth`` or ``sam_hq_vit_l.pth``.
        vision_num_heads: Expected ViT head count; read from the weights when not given.

    Returns:
        A ``SamModel`` (``SamHQModel`` for SAM-HQ, ``Sam2Model`` for SAM 2, see
        :mod:`samadapt.models.convert_sam2`) in eval mode, on the CPU.

    Raises:
        ModelNotFoundError: The file does not exist.
        CheckpointError: The file is not a weights-only pickle, is not an official SAM / SAM-HQ /
            SAM 2 checkpoint (others are named), or its keys or shapes do not match.
    """
    path = Path(path)
    state_dict = _read_state_dict(path)
    family = detect_checkpoint_family(state_dict)
    if family == "sam2":
        from samadapt.models.convert_sam2 import load_meta_sam2

        return load_meta_sam2(path, state_dict)
    if family not in ("sam", "sam-hq"):
        raise CheckpointError(_WRONG_FAMILY[family].format(path=path, keys=", ".join(list(state_dict)[:3])))
    config = infer_sam_config(state_dict, vision_num_heads=vision_num_heads)
    converted = convert_meta_sam_state_dict(state_dict)
    # a SamHQConfig exactly when family is "sam-hq": both follow mask_decoder.hf_token
    model = SamHQModel(config) if isinstance(config, SamHQConfig) else SamModel(config)
    check_keys(model, converted, path)
    model.load_state_dict(converted, strict=True)
    return model.eval()


_WRONG_FAMILY: dict[str, str] = {
    "transformers": (
        "{path} is already in the transformers SamModel layout (keys such as 'vision_encoder.*'); "
        "load it from a Hugging Face layout folder instead of as a Meta .pth."
    ),
    "unknown": (
        "{path} does not look like an official SAM checkpoint with a ViT image encoder (its first keys are "
        "{keys}); MobileSAM and EfficientSAM are not supported, use an official sam_vit_*.pth or a registry "
        "name such as 'sam-vit-base'."
    ),
}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelNotFoundError(
            f"Checkpoint {path} does not exist; pass the path of an official SAM file such as sam_vit_b_01ec64.pth."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint (it is not a valid pickle).") from exc
        raise CheckpointError(
            f"Refused to unpickle {path}: it holds a {found[1]} object, and only weights-only checkpoints "
            f"(tensors in plain containers) are loaded with torch.load(weights_only=True); re-save it as a state dict."
        ) from exc
    except Exception as exc:  # torch and safetensors raise assorted errors on corrupt files
        raise CheckpointError(
            f"{path} cannot be read as a PyTorch or safetensors checkpoint ({type(exc).__name__}: {exc})."
        ) from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors.")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise CheckpointError(f"{path} is not a state dict of tensors: entry {bad[0]!r} is not a named tensor.")
    state_dict: dict[str, torch.Tensor] = dict(obj)
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return state_dict


def convert_meta_checkpoint(
    path: Path,
    out_dir: Path,
    *,
    vision_num_heads: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an official SAM / SAM-HQ file to a Hugging Face layout folder (safetensors + config).

    The folder is written next to ``out_dir`` under a temporary name and renamed into place,
    so ``out_dir`` either does not exist or is complete. If another process finishes the same
    conversion first, its folder is kept.

    Args:
        path: The official checkpoint, e.g. ``sam_vit_b_01ec64.pth``.
        out_dir: Folder to create; ``transformers.AutoModel.from_pretrained(out_dir)`` reads it.
        vision_num_heads: Expected ViT head count; read from the weights when not given.
        overwrite: Replace ``out_dir`` if it exists.

    Returns:
        ``out_dir``.

    Raises:
        OutputExistsError: ``out_dir`` exists and ``overwrite`` is false.
        ModelNotFoundError, CheckpointError: As :func:`load_meta_sam`.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"Output folder {out_dir} exists; remove it or pass overwrite=True.")
    model = load_meta_sam(Path(path), vision_num_heads=vision_num_heads)
    # overwrite=True was asked for by name, so the folder is replaced whatever it holds; without
    # it, a folder that another process converted meanwhile is kept.
    with atomic_dir(out_dir, overwrite=True, kind="converted model", owned=lambda _: True,
                    keep_if_present=not overwrite) as tmp:
        model.save_pretrained(tmp)
    return out_dir
