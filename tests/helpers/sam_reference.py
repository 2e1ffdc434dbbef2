"""The official ``segment_anything`` package as a test reference, usable without torchvision.

``segment_anything`` imports torchvision in two places, for two small helpers each:
``segment_anything.utils.transforms`` (``resize``, ``to_pil_image``) and
``segment_anything.automatic_mask_generator`` (``batched_nms``, ``box_area``). torchvision does
not import beside the CPU torch of these machines, so :func:`import_segment_anything` puts a
stand-in for exactly those four functions into ``sys.modules`` while the package is imported,
then takes it out again (so that ``transformers``' own "is torchvision installed?" checks keep
seeing the truth). The stand-ins behave as torchvision does for the inputs the reference passes
them; anything else raises ``TypeError`` instead of guessing.

:func:`build_tiny_reference_sam` builds a small, randomly initialised ``Sam`` from the reference
classes, with every parameter random (the relative-position tables and the absolute position
embedding, which the reference initialises to zeros, included) so that parity tests exercise
every weight. :func:`reference_decode` runs the prompt encoder and mask decoder the way
``SamPredictor.predict_torch`` does.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image

_STUB_MODULES = (
    "torchvision",
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "torchvision.ops",
    "torchvision.ops.boxes",
)


def _to_pil_image(pic: Any, mode: str | None = None) -> Image.Image:
    """torchvision's ``to_pil_image`` for a uint8 HxW or HxWxC numpy array (C in 1, 3, 4)."""
    if not isinstance(pic, np.ndarray) or pic.dtype != np.uint8 or pic.ndim not in (2, 3) or mode is not None:
        raise TypeError("the torchvision stand-in's to_pil_image accepts only uint8 HxW or HxWxC arrays")
    if pic.ndim == 3 and pic.shape[2] == 1:
        pic = pic[:, :, 0]
    return Image.fromarray(pic)


def _resize(img: Any, size: Sequence[int], interpolation: Any = None, **_: Any) -> Image.Image:
    """torchvision's ``resize`` for a PIL image and an explicit ``(h, w)`` size: bilinear PIL resize."""
    if not isinstance(img, Image.Image) or len(size) != 2 or interpolation is not None:
        raise TypeError("the torchvision stand-in's resize accepts only a PIL image and a (h, w) size")
    height, width = int(size[0]), int(size[1])
    return img.resize((width, height), Image.Resampling.BILINEAR)


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of XYXY boxes, shape (N, 4) -> (N,)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS over XYXY boxes; keeps boxes whose IoU with every kept higher-scored box is <= threshold.

    Ties in score are broken by input order (a stable sort); torchvision's C++ kernel uses an
    unstable sort, so exactly tied scores may be ordered differently there.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    areas = _box_area(boxes)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep: list[int] = []
    for position, index in enumerate(order.tolist()):
        if suppressed[index]:
            continue
        keep.append(index)
        rest = order[position + 1 :]
        top_left = torch.maximum(boxes[index, :2], boxes[rest, :2])
        bottom_right = torch.minimum(boxes[index, 2:], boxes[rest, 2:])
        inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
        iou = inter / (areas[index] + areas[rest] - inter)
        suppressed[rest[iou > iou_threshold]] = True
    return torch.tensor(keep, dtype=torch.int64)


def _batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """torchvision's ``batched_nms``: NMS within each category, by offsetting categories apart."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return _nms(boxes + offsets[:, None], scores, iou_threshold)


def _install_torchvision_stub() -> list[str]:
    """Put the stand-in modules into ``sys.modules``; returns the names it added."""
    modules = {name: types.ModuleType(name) for name in _STUB_MODULES}
    for name in ("torchvision", "torchvision.transforms", "torchvision.ops"):
        modules[name].__path__ = []  # marks it as a package
    for name, module in modules.items():  # make each submodule an attribute of its parent
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    functional = modules["torchvision.transforms.functional"]
    functional.resize = _resize  # type: ignore[attr-defined]
    functional.to_pil_image = _to_pil_image  # type: ignore[attr-defined]
    ops_boxes = modules["torchvision.ops.boxes"]
    ops_boxes.batched_nms = _batched_nms  # type: ignore[attr-defined]
    ops_boxes.box_area = _box_area  # type: ignore[attr-defined]
    ops_boxes.nms = _nms  # type: ignore[attr-defined]
    sys.modules.update(modules)
    return list(modules)


def _torchvision_importable() -> bool:
    try:
        importlib.import_module("torchvision.transforms.functional")
        importlib.import_module("torchvision.ops.boxes")
    except Exception:  # a broken torchvision counts as absent
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def import_segment_anything() -> types.ModuleType:
    """Import the official ``segment_anything`` package, standing in for torchvision if it is missing.

    The stand-in is in ``sys.modules`` only during the import: the reference modules keep the
    functions they imported by name, and nothing else can mistake the stand-in for torchvision.

    Returns:
        The ``segment_anything`` module (with ``segment_anything.modeling`` and
        ``segment_anything.utils.transforms`` imported).
    """
    if "segment_anything" in sys.modules:
        return sys.modules["segment_anything"]
    added: list[str] = [] if _torchvision_importable() else _install_torchvision_stub()
    try:
        module = importlib.import_module("segment_anything")
        importlib.import_module("segment_anything.utils.transforms")
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return module


def build_tiny_reference_sam(
    seed: int = 0,
    *,
    image_size: int = 256,
    patch_size: int = 16,
    embed_dim: int = 64,
    depth: int = 3,
    num_heads: int = 4,
    window_size: int = 6,
    global_attn_indexes: Sequence[int] = (1,),
    prompt_dim: int = 32,
    mask_in_chans: int = 16,
    decoder_mlp_dim: int = 64,
    decoder_num_heads: int = 8,
) -> Any:
    """Build a small random ``segment_anything.modeling.Sam`` with the official architecture.

    The layer norms use the official ``eps`` (1e-6 in the image encoder, the library defaults
    elsewhere), the neck outputs ``prompt_dim`` channels as in the official builders, and the
    default window (6) does not divide the default embedding grid (16), so the padded window
    path is exercised. Every parameter is random: weights keep their default random init and
    parameters that start constant (layer norms, biases set to zero, ``pos_embed``, the
    relative-position tables) get Gaussian noise on top. The global RNG is left untouched.

    Args:
        seed: Seed of every random number drawn.
        image_size: Side of the square input, in pixels (the official models use 1024).
        patch_size: Side of a ViT patch in pixels; the embedding grid is ``image_size // patch_size``.
        embed_dim: Width of the ViT image encoder.
        depth: Number of ViT blocks.
        num_heads: Attention heads of the ViT blocks.
        window_size: Side of the attention window of the windowed blocks, in patches.
        global_attn_indexes: Indexes of the blocks that attend globally.
        prompt_dim: Width of the prompt encoder, of the mask decoder and of the image embedding.
        mask_in_chans: Hidden channels of the mask-prompt downscaler.
        decoder_mlp_dim: Hidden width of the two-way transformer's MLPs.
        decoder_num_heads: Attention heads of the two-way transformer.

    Returns:
        A ``segment_anything.modeling.Sam`` in eval mode.
    """
    import_segment_anything()
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    grid = image_size // patch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=image_size,
                patch_size=patch_size,
                embed_dim=embed_dim,
                depth=depth,
                num_heads=num_heads,
                mlp_ratio=4.0,
                out_chans=prompt_dim,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=window_size,
                global_attn_indexes=tuple(global_attn_indexes),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=prompt_dim,
                image_embedding_size=(grid, grid),
                input_image_size=(image_size, image_size),
                mask_in_chans=mask_in_chans,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=2, embedding_dim=prompt_dim, mlp_dim=decoder_mlp_dim, num_heads=decoder_num_heads
                ),
                transformer_dim=prompt_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=prompt_dim,
            ),
        )
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, param in sam.named_parameters():
                if bool((param == param.flatten()[0]).all()):
                    std = 0.5 if ("rel_pos" in name or "pos_embed" in name) else 0.2
                    param.add_(std * torch.randn(param.shape, generator=generator))
    return sam.eval()


@torch.no_grad()
def reference_decode(
    sam: Any,
    image_embeddings: torch.Tensor,
    *,
    point_coords: torch.Tensor | None = None,
    point_labels: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    mask_input: torch.Tensor | None = None,
    multimask_output: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode prompts on one image's embedding with the reference model, as ``predict_torch`` does.

    Coordinates are in pixels of the resized model input (the ``image_size`` frame), ``(x, y)``
    order; the reference adds 0.5 (pixel centre) itself.

    Args:
        sam: A ``segment_anything.modeling.Sam``.
        image_embeddings: Output of ``sam.image_encoder``, shape (1, C, g, g).
        point_coords: Points, shape (B, N, 2), ``(x, y)``.
        point_labels: Labels of the points, shape (B, N): 1 foreground, 0 background.
        boxes: Boxes, shape (B, 4), XYXY.
        mask_input: Low-resolution mask logits, shape (B, 1, 4g, 4g).
        multimask_output: Return the three multimask outputs instead of the single one.

    Returns:
        ``(low_res_masks, iou_predictions)`` of shapes (B, M, 4g, 4g) and (B, M), M = 3 or 1.
    """
    points = None if point_coords is None else (point_coords, point_labels)
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    low_res_masks, iou_predictions = sam.mask_decoder(
        image_embeddings=image_embeddings,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask_output,
    )
    return low_res_masks, iou_predictions


def build_tiny_reference_hq_head(sam: Any, seed: int = 0) -> torch.nn.Module:
    """Build the layers SAM-HQ adds to a SAM mask decoder, randomly initialised, with official names.

    The returned module's ``state_dict()`` keys, prefixed with ``mask_decoder.``, are those of an
    official SAM-HQ checkpoint: ``hf_token`` (the HQ output token), ``hf_mlp`` (its 3-layer
    hypernetwork MLP), ``compress_vit_feat`` (early ViT feature, 4x up), ``embedding_encoder``
    (image embedding, 4x up) and ``embedding_maskfeature`` (3x3 convs on the upscaled mask feature).
    The official builders make these with the same reference classes used here. Run it with
    :func:`reference_decode_hq`.

    Args:
        sam: The ``segment_anything.modeling.Sam`` whose decoder the head extends.
        seed: Seed of every random number drawn.

    Returns:
        A ``torch.nn.Module`` holding the HQ layers, in eval mode.
    """
    from segment_anything.modeling.common import LayerNorm2d
    from segment_anything.modeling.mask_decoder import MLP

    dim = sam.mask_decoder.transformer_dim
    vit_dim = sam.image_encoder.patch_embed.proj.out_channels
    nn = torch.nn
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Module()
        head.hf_token = nn.Embedding(1, dim)
        head.hf_mlp = MLP(dim, dim, dim // 8, 3)
        head.compress_vit_feat = nn.Sequential(
            nn.ConvTranspose2d(vit_dim, dim, kernel_size=2, stride=2),
            LayerNorm2d(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim // 8, kernel_size=2, stride=2),
        )
        head.embedding_encoder = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
        )
        head.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(dim // 8, dim // 4, 3, 1, 1),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.Conv2d(dim // 4, dim // 8, 3, 1, 1),
        )
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for param in head.parameters():
                if bool((param == param.flatten()[0]).all()):
                    param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return head.eval()


def reference_hq_state_dict(sam: Any, head: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of an official SAM-HQ checkpoint made of ``sam`` and an HQ ``head``."""
    state = dict(sam.state_dict())
    state.update({f"mask_decoder.{k}": v for k, v in head.state_dict().items()})
    return state


@torch.no_grad()
def reference_encode_with_interm(sam: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the reference ViT as SAM-HQ's does, also returning the output of each global block.

    Args:
        sam: A ``segment_anything.modeling.Sam``.
        pixels: Normalised, padded input, shape (B, 3, S, S).

    Returns:
        ``(image_embeddings, interm_embeddings)``: (B, C, g, g) and a list of (B, g, g, D)
        tensors, one per global-attention block in block order.
    """
    encoder = sam.image_encoder
    hidden = encoder.patch_embed(pixels) + encoder.pos_embed
    interm: list[torch.Tensor] = []
    for block in encoder.blocks:
        hidden = block(hidden)
        if block.window_size == 0:
            interm.append(hidden)
    return encoder.neck(hidden.permute(0, 3, 1, 2)), interm


@torch.no_grad()
def reference_decode_hq(
    sam: Any,
    head: torch.nn.Module,
    image_embeddings: torch.Tensor,
    interm_embeddings: Sequence[torch.Tensor],
    *,
    point_coords: torch.Tensor | None = None,
    point_labels: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    mask_input: torch.Tensor | None = None,
    multimask_output: bool = False,
    hq_token_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode prompts with SAM-HQ's mask decoder as the official SAM-HQ code defines it.

    The HQ token rides along the SAM output tokens through the two-way transformer; its mask
    is predicted on the SAM mask feature refined by ``embedding_maskfeature`` plus the HQ
    feature (upscaled image embedding + upscaled early ViT feature from the first global block).
    With ``multimask_output`` the SAM part is the multimask output of highest predicted IoU.
    Prompt conventions are those of :func:`reference_decode`.

    Returns:
        ``(low_res_masks, iou_predictions)`` of shapes (B, 1, 4g, 4g) and (B, 1): the HQ mask
        alone if ``hq_token_only``, otherwise the chosen SAM mask plus the HQ mask.
    """
    decoder = sam.mask_decoder
    points = None if point_coords is None else (point_coords, point_labels)
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    vit_features = interm_embeddings[0].permute(0, 3, 1, 2)
    hq_features = head.embedding_encoder(image_embeddings) + head.compress_vit_feat(vit_features)

    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight, head.hf_token.weight])
    tokens = torch.cat([output_tokens.expand(sparse.shape[0], -1, -1), sparse], dim=1)
    count = tokens.shape[0]
    src = image_embeddings.repeat_interleave(count, 0) + dense
    pos = sam.prompt_encoder.get_dense_pe().repeat_interleave(count, 0)
    channels, height, width = src.shape[1:]
    token_out, src = decoder.transformer(src, pos, tokens)
    src = src.transpose(1, 2).reshape(count, channels, height, width)

    upscaled = decoder.output_upscaling(src)
    upscaled_hq = head.embedding_maskfeature(upscaled) + hq_features
    sam_tokens = decoder.num_mask_tokens
    mask_tokens_out = token_out[:, 1 : 2 + sam_tokens]
    hyper_sam = torch.stack(
        [decoder.output_hypernetworks_mlps[i](mask_tokens_out[:, i]) for i in range(sam_tokens)], dim=1
    )
    hyper_hq = head.hf_mlp(mask_tokens_out[:, sam_tokens])[:, None]
    size = upscaled.shape[-2:]
    masks_sam = (hyper_sam @ upscaled.flatten(2)).unflatten(2, size)
    masks_hq = (hyper_hq @ upscaled_hq.flatten(2)).unflatten(2, size)
    iou = decoder.iou_prediction_head(token_out[:, 0])

    if multimask_output:
        best = iou[:, 1:sam_tokens].argmax(dim=1)
        iou_out = iou[:, 1:sam_tokens].gather(1, best[:, None])
        chosen = masks_sam[torch.arange(count), 1 + best][:, None]
    else:
        iou_out = iou[:, :1]
        chosen = masks_sam[:, :1]
    return (masks_hq if hq_token_only else chosen + masks_hq), iou_out
