"""EdgeTAM in transformers without timm: its image model built with samadapt's RepViT backbone.

transformers' ``EdgeTamModel`` is SAM 2's image model with a RepViT image encoder, which it
builds as ``AutoModel.from_config(vision_config.backbone_config)``, a ``TimmWrapperModel``
that needs timm. samadapt cannot install timm (it pulls a torchvision that does not import
beside samadapt's torch), so :func:`build_edgetam` builds the model with
:class:`samadapt.models.repvit.RepVitBackbone` in the wrapper's place: during the
construction only, the ``AutoModel`` that ``transformers.models.edgetam.modeling_edgetam``
calls is swapped for a stand-in that answers a timm-wrapper config with a RepViT backbone
and passes every other config on to the real ``AutoModel``. Nothing else of transformers is
touched, and the swap is undone (under a lock) before :func:`build_edgetam` returns.

The backbone's parameters have the names the published checkpoints store
(``vision_encoder.backbone.timm_model.stem.conv1.c.weight`` ...), so the config and weights of
an EdgeTAM repository load as they are; :func:`load_edgetam` loads them strictly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from samadapt.errors import CheckpointError
from samadapt.models.repvit import RepVitBackbone, RepVitSpec

if TYPE_CHECKING:
    from transformers import EdgeTamConfig, EdgeTamModel

#: The backbone config transformers' conversion script (``convert_edgetam_to_hf.py``) writes:
#: timm's ``repvit_m1`` as a feature extractor of its four stages.
PUBLISHED_BACKBONE: dict[str, Any] = {
    "architecture": "repvit_m1",
    "model_args": {"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]},
}

#: Top-level modules of ``EdgeTamVideoModel`` that the image model does not have (as for SAM 2's
#: video model, plus EdgeTAM's spatial perceiver); an ``edgetam_video`` checkpoint's weights under
#: these names are left unread on purpose.
VIDEO_ONLY_PREFIXES = (
    "memory_attention.", "memory_encoder.", "mask_downsample.", "memory_temporal_positional_encoding",
    "no_memory_positional_encoding", "no_object_pointer", "object_pointer_proj.",
    "occlusion_spatial_embedding_parameter", "temporal_positional_encoding_projection_layer.",
    "spatial_perceiver.",
)

#: Where the backbone's weights live in the image model; under it timm's net is ``timm_model``.
BACKBONE_PREFIX = "vision_encoder.backbone."

_SWAP_LOCK = threading.Lock()


def backbone_spec(backbone_config: Any) -> RepVitSpec:
    """The RepViT a timm-wrapper backbone config (object or dict) describes.

    Raises:
        CheckpointError: the backbone is not a timm RepViT this module builds.
    """
    get = backbone_config.get if isinstance(backbone_config, Mapping) else \
        lambda key, default=None: getattr(backbone_config, key, default)
    if get("model_type") != "timm_wrapper":
        raise CheckpointError(f"EdgeTAM's backbone config is of type {get('model_type')!r}, not timm_wrapper")
    try:
        return RepVitSpec.from_timm(str(get("architecture")), get("model_args"))
    except ValueError as err:
        raise CheckpointError(f"EdgeTAM backbone: {err}") from None


class _AutoModelWithRepVit:
    """Stand-in for ``AutoModel`` inside transformers' EdgeTAM module during :func:`build_edgetam`."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def from_config(self, config: Any, **kwargs: Any) -> torch.nn.Module:
        if getattr(config, "model_type", None) == "timm_wrapper":
            return RepVitBackbone(backbone_spec(config))
        return self.real.from_config(config, **kwargs)


@contextmanager
def _repvit_backbones() -> Iterator[None]:
    from transformers.models.edgetam import modeling_edgetam

    with _SWAP_LOCK:
        real = modeling_edgetam.AutoModel
        modeling_edgetam.AutoModel = _AutoModelWithRepVit(real)  # type: ignore[misc,assignment]
        try:
            yield
        finally:
            modeling_edgetam.AutoModel = real  # type: ignore[misc]


def published_config(image_size: int = 1024) -> EdgeTamConfig:
    """The config of the published EdgeTAM image model, as transformers' conversion script builds it.

    transformers' own default ``EdgeTamConfig()`` is not that model: a misspelt key in its
    default backbone leaves timm's ``resnet50`` there.
    """
    from transformers import EdgeTamConfig, EdgeTamVisionConfig, TimmWrapperConfig

    vision = EdgeTamVisionConfig(backbone_config=TimmWrapperConfig(**PUBLISHED_BACKBONE))
    return EdgeTamConfig(vision_config=vision, prompt_encoder_config={"image_size": image_size})


def image_config(config: dict[str, Any]) -> EdgeTamConfig:
    """The image model's config from a parsed ``config.json`` of model type ``edgetam`` or ``edgetam_video``.

    A video config carries the image model's three parts beside its memory settings; the image
    model is built from those parts.

    Raises:
        CheckpointError: the config does not build.
    """
    from transformers import EdgeTamConfig

    parts = {k: config[k] for k in ("vision_config", "prompt_encoder_config", "mask_decoder_config",
                                    "initializer_range") if k in config}
    backbone = (parts.get("vision_config") or {}).get("backbone_config")
    if isinstance(backbone, dict) and "label_names" not in backbone:
        # Without label names, transformers' TimmWrapperConfig.from_dict asks timm for ImageNet's; a
        # feature extractor has no classifier, so placeholder names change nothing it computes.
        labels = [f"LABEL_{i}" for i in range(int(backbone.get("num_classes") or 2))]
        parts["vision_config"] = {**parts["vision_config"], "backbone_config": {**backbone, "label_names": labels}}
    try:
        return EdgeTamConfig(**parts)
    except (TypeError, ValueError, ImportError) as err:
        raise CheckpointError(f"the EdgeTAM config does not build: {err}") from None


def build_edgetam(config: EdgeTamConfig) -> EdgeTamModel:
    """transformers' ``EdgeTamModel`` for ``config``, with samadapt's RepViT as its backbone (random weights).

    Raises:
        CheckpointError: the backbone config is not a RepViT.
    """
    from transformers import EdgeTamModel

    backbone_spec(getattr(config.vision_config, "backbone_config", None))  # fail before building anything
    with _repvit_backbones():
        return EdgeTamModel(config)


def read_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``model.safetensors`` or ``pytorch_model.bin`` file.

    Raises:
        CheckpointError: the file does not read.
    """
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(weights))
        return torch.load(weights, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"cannot read the weights {weights}: {err}") from None


def _backbone_key(key: str) -> str:
    """A checkpoint key with ``timm_model.`` under the backbone, where a save without it left it out
    (transformers 5 strips it on saving a timm wrapper, and adds it back on loading)."""
    if key.startswith(BACKBONE_PREFIX) and not key.startswith(BACKBONE_PREFIX + "timm_model."):
        return BACKBONE_PREFIX + "timm_model." + key[len(BACKBONE_PREFIX):]
    return key


def load_edgetam(folder: Path, config: dict[str, Any], weights: Path) -> EdgeTamModel:
    """Load the EdgeTAM image model of a folder in fp32; any missing, unexpected or misshapen weight is an error.

    The video-only weights of an ``edgetam_video`` checkpoint (:data:`VIDEO_ONLY_PREFIXES`) have no
    place in the image model and are left unread, on purpose; in an ``edgetam`` checkpoint they are
    unexpected like any other extra weight.

    Args:
        folder: the model folder (for messages).
        config: its parsed ``config.json``.
        weights: its weights file.

    Raises:
        CheckpointError: naming the weights that do not fit, or why the config or weights do not read.
    """
    from samadapt.models.strict import report_loading

    model = build_edgetam(image_config(config))
    video = config.get("model_type") == "edgetam_video"
    state = {_backbone_key(k): v for k, v in read_state_dict(weights).items()
             if not (video and k.startswith(VIDEO_ONLY_PREFIXES))}
    expected = model.state_dict()
    report_loading(folder, "EdgeTamModel", {
        "missing_keys": [k for k in expected if k not in state],
        "unexpected_keys": [k for k in state if k not in expected],
        "mismatched_keys": [k for k, v in state.items() if k in expected and v.shape != expected[k].shape],
    })
    model.load_state_dict(state, strict=True)
    return model.float().eval()
