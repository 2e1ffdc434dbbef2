"""SAM 3 as samadapt loads it: one ViT, a concept model for text and exemplars, a tracker for points and boxes.

``facebook/sam3`` publishes a ``Sam3VideoModel`` (``model_type`` ``sam3_video``): a detector
(``detector_model.*``, transformers' ``Sam3Model``: ViT backbone, its FPN neck, CLIP text encoder,
DETR-style encoder and decoder, mask head), a SAM-2-style tracker without a backbone of its own
(``tracker_model.*``) and the tracker's own FPN neck (``tracker_neck.*``). Both heads read the same
ViT output, so that output is what samadapt caches as a SAM 3 embedding: one encoder run serves
point and box prompts (through the tracker) and phrases (through the concept model).

:class:`Sam3Parts` holds the detector and a ``Sam3TrackerModel`` assembled from the tracker's
modules, so point and box prompts go through transformers' own image-model forward. The tracker's
image features are computed as the published video model computes them for a frame
(``Sam3VideoModel.get_vision_features_for_tracker``: the neck's three finest levels, the no-memory
embedding added to the coarsest of them), which ``tests/models/test_sam3.py`` checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from samadapt.errors import CheckpointError

if TYPE_CHECKING:
    from transformers import Sam3Model, Sam3TrackerModel

#: Weight prefixes of a published SAM 3 checkpoint, by part.
PREFIXES = ("detector_model.", "tracker_model.", "tracker_neck.")

#: The tracker's video-only modules (memory attention and encoder, object pointers), which an image
#: model has no use for; they are loaded with the checkpoint (strictly) and then dropped.
TRACKER_IMAGE_PARTS = ("shared_image_embedding", "prompt_encoder", "mask_decoder")

#: Score a concept-model query must reach to count as an object (transformers' Sam3Processor default).
CONCEPT_THRESHOLD = 0.3

#: Longest tokenised phrase the concept model reads (Sam3Processor pads and cuts at 32 tokens).
TEXT_TOKENS = 32


class Sam3Parts(nn.Module):
    """The parts of a SAM 3 checkpoint an image needs, sharing one ViT backbone.

    Attributes:
        detector: transformers' ``Sam3Model`` (concept prompts: phrases and exemplar boxes).
        tracker: transformers' ``Sam3TrackerModel`` whose vision encoder is the detector's backbone
            with the tracker's neck (point and box prompts).
        tracker_neck: the tracker's FPN neck (also ``tracker.vision_encoder.neck``).
    """

    def __init__(self, detector: Sam3Model, tracker: Sam3TrackerModel, tracker_neck: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.tracker = tracker
        self.tracker_neck = tracker_neck

    @property
    def backbone(self) -> nn.Module:
        """The ViT both heads read."""
        return self.detector.vision_encoder.backbone

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of ViT tokens: the model input side over the patch size."""
        cfg: Any = self.detector.config.vision_config.backbone_config  # type: ignore[union-attr]  # a built config
        side = cfg.image_size[0] if isinstance(cfg.image_size, (list, tuple)) else cfg.image_size
        patch = cfg.patch_size[0] if isinstance(cfg.patch_size, (list, tuple)) else cfg.patch_size
        return side // patch, side // patch

    def get_image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) ViT output of a (B, 3, S, S) batch: the shared SAM 3 embedding."""
        hidden = self.backbone(pixel_values).last_hidden_state  # (B, h*w, C)
        h, w = self.grid
        return hidden.view(hidden.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()

    def tracker_embeddings(self, vit: torch.Tensor) -> list[torch.Tensor]:
        """The tracker's image embeddings from the ViT output: two projected high-resolution levels, then the
        embedding (no-memory embedding added), as ``Sam3TrackerModel`` takes them for ``image_embeddings``."""
        levels, _ = self.tracker_neck(vit)
        levels = list(levels[:-1])  # the published video model drops the coarsest (0.5x) level for the tracker
        dec = self.tracker.mask_decoder
        levels[0], levels[1] = dec.conv_s0(levels[0]), dec.conv_s1(levels[1])
        levels[-1] = levels[-1] + self.tracker.no_memory_embedding.view(1, -1, 1, 1)
        return levels

    def concept_features(self, vit: torch.Tensor) -> Any:  # noqa: ANN401 - transformers' Sam3VisionEncoderOutput
        """The detector's vision features from the ViT output (what ``Sam3Model.get_vision_features`` returns)."""
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        fpn, pos = self.detector.vision_encoder.neck(vit)
        return Sam3VisionEncoderOutput(last_hidden_state=vit.flatten(2).transpose(1, 2), fpn_hidden_states=fpn,
                                       fpn_position_encoding=pos)


def assemble(video: Any) -> Sam3Parts:  # noqa: ANN401 - transformers' Sam3VideoModel
    """Take a loaded ``Sam3VideoModel`` apart into :class:`Sam3Parts` (the memory modules are dropped)."""
    from transformers import Sam3TrackerConfig, Sam3TrackerModel

    tc = video.config.tracker_config
    config = Sam3TrackerConfig(vision_config=tc.vision_config.to_dict(),
                               prompt_encoder_config=tc.prompt_encoder_config.to_dict(),
                               mask_decoder_config=tc.mask_decoder_config.to_dict())
    with torch.device("meta"):  # a shell: every module is replaced by the loaded one below
        tracker = Sam3TrackerModel(config)
    source = video.tracker_model
    for name in TRACKER_IMAGE_PARTS:
        setattr(tracker, name, getattr(source, name))
    tracker.no_memory_embedding = source.no_memory_embedding
    tracker.vision_encoder.backbone = video.detector_model.vision_encoder.backbone
    tracker.vision_encoder.neck = video.tracker_neck
    left = [n for n, p in [*tracker.named_parameters(), *tracker.named_buffers()] if p.is_meta]
    if left:
        raise CheckpointError(f"the SAM 3 tracker lacks {', '.join(left[:4])} after assembly; this transformers "
                              "version lays SAM 3 out differently from the one samadapt was written for")
    return Sam3Parts(video.detector_model, tracker, video.tracker_neck).eval()


def load_sam3(folder: Path, config: dict[str, Any], dtype: torch.dtype = torch.float32) -> Sam3Parts:
    """Load a SAM 3 checkpoint folder in the published layout strictly: every weight used, none missing.

    Raises:
        CheckpointError: a config that is not ``sam3_video``, or weights that do not fit it.
    """
    from transformers import Sam3VideoModel

    from samadapt.models.strict import quiet_from_pretrained, report_loading

    if config.get("model_type") != "sam3_video":
        raise CheckpointError(
            f"{folder} holds a {config.get('model_type')!r} SAM 3 model; samadapt loads SAM 3 as facebook/sam3 "
            "publishes it, a sam3_video checkpoint with the detector and the tracker"
        )
    video, info = quiet_from_pretrained(Sam3VideoModel, folder, dtype=dtype)
    report_loading(folder, "Sam3VideoModel", info)
    return assemble(video)


def publish_layout(weights: Path) -> None:
    """Rewrite a ``Sam3VideoModel`` weights file saved by transformers 5 in the layout ``facebook/sam3`` has.

    transformers 5 saves the tracker's weights under ``tracker_model.tracker_model.`` (its rename of
    ``tracker_model.*`` for a stand-alone ``Sam3TrackerModel``, applied in reverse on save) and reads either
    form back; the published checkpoint, whose keys that rename exists for, has ``tracker_model.`` once.
    """
    from safetensors.torch import load_file, save_file

    doubled = "tracker_model.tracker_model."
    tensors = load_file(weights)
    if any(k.startswith(doubled) for k in tensors):
        tensors = {("tracker_model." + k[len(doubled):] if k.startswith(doubled) else k): v for k, v in tensors.items()}
        save_file(tensors, weights, metadata={"format": "pt"})


def tiny_sam3_config(image_size: int = 112, hidden: int = 32, vocab_size: int = 600):  # noqa: ANN201
    """A tiny ``Sam3VideoConfig`` in the published layout (ViT of 2 blocks, 8 x 8 tokens at 112 px)."""
    from transformers import Sam3VideoConfig

    h, s, grid = hidden, image_size, image_size // 14
    vision = dict(
        backbone_config=dict(model_type="sam3_vit_model", hidden_size=h, intermediate_size=2 * h, num_hidden_layers=2,
                             num_attention_heads=2, image_size=s, patch_size=14, window_size=grid // 2,
                             global_attn_indexes=[1], pretrain_image_size=s),
        fpn_hidden_size=h, backbone_feature_sizes=[[4 * grid] * 2, [2 * grid] * 2, [grid] * 2],
    )
    small = dict(hidden_size=h, num_attention_heads=2, intermediate_size=2 * h)
    detector = dict(
        model_type="sam3", vision_config=vision,
        text_config=dict(model_type="clip_text_model", vocab_size=vocab_size, hidden_size=h, intermediate_size=2 * h,
                         projection_dim=h, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=TEXT_TOKENS, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                         pad_token_id=vocab_size - 1),
        geometry_encoder_config=dict(small, num_layers=1),
        detr_encoder_config=dict(small, num_layers=1),
        detr_decoder_config=dict(small, num_layers=1, num_queries=16),
        mask_decoder_config=dict(hidden_size=h, num_attention_heads=2),
    )
    tracker = dict(
        model_type="sam3_tracker_video", vision_config=vision, image_size=s,
        prompt_encoder_config=dict(hidden_size=h, image_size=s, patch_size=14, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=h, mlp_dim=2 * h, num_attention_heads=2, iou_head_hidden_dim=h),
        memory_attention_hidden_size=h, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=2 * h,
        memory_encoder_hidden_size=h, memory_encoder_output_channels=16, mask_downsampler_embed_dim=h,
        memory_fuser_embed_dim=h, memory_fuser_intermediate_dim=2 * h, memory_fuser_num_layers=1,
    )
    return Sam3VideoConfig(detector_config=detector, tracker_config=tracker, low_res_mask_size=4 * grid)
