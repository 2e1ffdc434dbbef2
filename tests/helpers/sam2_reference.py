"""The official ``sam2`` package (PyPI ``sam2==1.1.0``, Meta's code) as a test reference, without its extras.

``make install`` installs it without dependencies. Three of its imports are not installed here
and are stood in for while it is imported:

- ``sam2/__init__.py`` starts hydra; the package is registered without running that file, and
  the model is built directly from the arguments of ``configs/sam2.1/sam2.1_hiera_t.yaml``;
- ``hieradet.py`` imports iopath, used only to read weights from a path (never here);
- ``utils/transforms.py`` imports torchvision's ``Resize``, ``Normalize`` and ``ToTensor``.
  The stand-ins do what torchvision does for the inputs the predictor passes (a float image
  tensor, resized with antialiased bilinear interpolation, then ImageNet-normalised) and are
  scriptable, since the predictor scripts them. The torchvision stand-in is removed again
  once ``sam2.utils.transforms`` is imported, so other libraries see that it is absent.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _Resize(nn.Module):
    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = [int(size[0]), int(size[1])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] == self.size[0] and x.shape[-1] == self.size[1]:
            return x
        return F.interpolate(x.unsqueeze(0), size=self.size, mode="bilinear", align_corners=False,
                             antialias=True).squeeze(0)


class _Normalize(nn.Module):
    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class _ToTensor:
    def __call__(self, pic: Any) -> torch.Tensor:
        arr = np.asarray(pic)
        if arr.dtype != np.uint8 or arr.ndim != 3:
            raise TypeError("the torchvision stand-in's ToTensor accepts only uint8 HxWxC arrays")
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div(255)


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def import_sam2() -> None:
    """Make ``sam2.modeling`` and ``sam2.sam2_image_predictor`` importable (idempotent)."""
    if "sam2" not in sys.modules:
        spec = importlib.util.find_spec("sam2")
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError("the official sam2 package is not installed; run `make install`")
        package = types.ModuleType("sam2")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["sam2"] = package
    if "iopath.common.file_io" not in sys.modules:
        _module("iopath")
        _module("iopath.common")
        _module("iopath.common.file_io", g_pathmgr=types.SimpleNamespace(open=open))
    if "sam2.utils.transforms" not in sys.modules:
        added = "torchvision" not in sys.modules
        if added:
            _module("torchvision").transforms = _module(
                "torchvision.transforms", Normalize=_Normalize, Resize=_Resize, ToTensor=_ToTensor)
        try:
            importlib.import_module("sam2.utils.transforms")
        finally:
            if added:
                sys.modules.pop("torchvision.transforms", None)
                sys.modules.pop("torchvision", None)


def build_reference_sam21_tiny(seed: int = 0) -> torch.nn.Module:
    """``SAM2Base`` as ``configs/sam2.1/sam2.1_hiera_t.yaml`` builds it (with the predictor's
    post-processing), every parameter random so that a wrong mapping cannot hide behind a zero."""
    import_sam2()
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam.transformer import RoPEAttention
    from sam2.modeling.sam2_base import SAM2Base

    torch.manual_seed(seed)
    neck = FpnNeck(position_encoding=PositionEmbeddingSine(num_pos_feats=256, normalize=True, temperature=10000),
                   d_model=256, backbone_channel_list=[768, 384, 192, 96], fpn_top_down_levels=[2, 3],
                   fpn_interp_model="nearest")
    trunk = Hiera(embed_dim=96, num_heads=1, stages=[1, 2, 7, 2], global_att_blocks=[5, 7, 9],
                  window_pos_embed_bkg_spatial_size=[7, 7])
    rope = dict(rope_theta=10000.0, feat_sizes=[64, 64], embedding_dim=256, num_heads=1, downsample_rate=1,
                dropout=0.1)
    layer = MemoryAttentionLayer(activation="relu", dim_feedforward=2048, dropout=0.1, pos_enc_at_attn=False,
                                 d_model=256, pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
                                 self_attention=RoPEAttention(**rope),
                                 cross_attention=RoPEAttention(**rope, rope_k_repeat=True, kv_in_dim=64))
    memory_encoder = MemoryEncoder(
        out_dim=64, position_encoding=PositionEmbeddingSine(num_pos_feats=64, normalize=True, temperature=10000),
        mask_downsampler=MaskDownSampler(kernel_size=3, stride=2, padding=1),
        fuser=Fuser(layer=CXBlock(dim=256, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True),
                    num_layers=2))
    model = SAM2Base(
        image_encoder=ImageEncoder(trunk=trunk, neck=neck, scalp=1),
        memory_attention=MemoryAttention(d_model=256, pos_enc_at_input=True, layer=layer, num_layers=4),
        memory_encoder=memory_encoder, num_maskmem=7, image_size=1024, sigmoid_scale_for_mem_enc=20.0,
        sigmoid_bias_for_mem_enc=-10.0, use_mask_input_as_output_without_sam=True, directly_add_no_mem_embed=True,
        no_obj_embed_spatial=True, use_high_res_features_in_sam=True, multimask_output_in_sam=True,
        iou_prediction_use_sigmoid=True, use_obj_ptrs_in_encoder=True, add_tpos_enc_to_obj_ptrs=True,
        proj_tpos_enc_in_obj_ptrs=True, use_signed_tpos_enc_to_obj_ptrs=True, only_obj_ptrs_in_the_past_for_eval=True,
        pred_obj_scores=True, pred_obj_scores_mlp=True, fixed_no_obj_ptr=True, multimask_output_for_tracking=True,
        use_multimask_token_for_obj_ptr=True, multimask_min_pt_num=0, multimask_max_pt_num=1,
        use_mlp_for_obj_ptr_proj=True, compile_image_encoder=False,
        sam_mask_decoder_extra_args=dict(dynamic_multimask_via_stability=True, dynamic_multimask_stability_delta=0.05,
                                         dynamic_multimask_stability_thresh=0.98),
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def reference_predictor(model: torch.nn.Module) -> Any:
    """The official ``SAM2ImagePredictor`` on ``model``."""
    import_sam2()
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    return SAM2ImagePredictor(model)
