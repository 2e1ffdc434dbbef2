"""RepViT, the convolutional image backbone of EdgeTAM, written without timm.

transformers builds EdgeTAM's backbone through ``TimmWrapperModel``, which needs timm (and
timm needs a torchvision that does not import beside samadapt's torch). This module is a
standalone RepViT with the same structure, so it computes what timm's model computes and
its parameters carry the names the published EdgeTAM checkpoints store them under.

The names follow two layers of timm and one of transformers (read from timm's
``timm/models/repvit.py`` and ``timm/models/_features.py``, and transformers'
``models/edgetam/convert_edgetam_to_hf.py`` and ``models/timm_wrapper``):

* timm's ``RepVit``: ``stem.conv1.c.weight``, ``stages.1.downsample.ffn.conv2.bn.bias``,
  ``stages.2.blocks.0.se.fc1.weight`` ... (convolution + batch norm pairs are ``c`` / ``bn``);
* ``features_only=True`` wraps it in a ``FeatureListNet`` built with ``flatten_sequential``:
  the ``stages`` sequential is flattened into its parent as ``stages_0`` ... ``stages_3``
  and the classifier head is dropped;
* ``TimmWrapperModel`` keeps that net as ``timm_model``, and EdgeTAM's vision model keeps the
  wrapper as ``backbone``: ``vision_encoder.backbone.timm_model.stages_0.blocks.0.token_mixer.conv.c.weight``.

:class:`RepVitBackbone` plays the part of ``TimmWrapperModel``: its output's
``last_hidden_state`` is the list of the selected stages' (B, C, H, W) feature maps, at
strides 4, 8, 16 and 32, which is what ``EdgeTamVisionModel`` reads from the wrapper.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: Architectures of timm's ``repvit_*`` constructors: widths and depths per stage, and whether the
#: depthwise 1x1 branch carries its own batch norm (``legacy``, the M1-M3 models of the first paper
#: version) or a plain convolution followed by a shared batch norm. EdgeTAM uses ``repvit_m1``.
VARIANTS: dict[str, dict[str, Any]] = {
    "repvit_m1": {"embed_dim": (48, 96, 192, 384), "depth": (2, 2, 14, 2), "legacy": True},
    "repvit_m2": {"embed_dim": (64, 128, 256, 512), "depth": (2, 2, 12, 2), "legacy": True},
    "repvit_m3": {"embed_dim": (64, 128, 256, 512), "depth": (4, 4, 18, 2), "legacy": True},
    "repvit_m0_9": {"embed_dim": (48, 96, 192, 384), "depth": (2, 2, 14, 2)},
    "repvit_m1_0": {"embed_dim": (56, 112, 224, 448), "depth": (2, 2, 14, 2)},
    "repvit_m1_1": {"embed_dim": (64, 128, 256, 512), "depth": (2, 2, 12, 2)},
    "repvit_m1_5": {"embed_dim": (64, 128, 256, 512), "depth": (4, 4, 24, 4)},
    "repvit_m2_3": {"embed_dim": (80, 160, 320, 640), "depth": (6, 6, 34, 2)},
}

#: ``model_args`` of a timm-wrapper config that change nothing in a feature extractor's weights or outputs.
_INERT_ARGS = frozenset({"features_only", "pretrained", "drop_rate", "num_classes", "global_pool", "distillation"})


@dataclass(frozen=True)
class RepVitSpec:
    """The architecture of a RepViT feature extractor.

    Attributes:
        embed_dim: channels of each stage.
        depth: RepViT blocks of each stage (besides the downsampling block that opens stages 1..).
        legacy: the depthwise 1x1 branch is a convolution with its own batch norm, and the block
            has no batch norm after the sum (timm's ``legacy=True``).
        mlp_ratio: hidden width of the channel mixers, as a multiple of their input width.
        kernel_size: side of the depthwise convolutions.
        in_chans: input channels.
        out_indices: the stages whose outputs are returned, in order.
    """

    embed_dim: tuple[int, ...]
    depth: tuple[int, ...]
    legacy: bool = False
    mlp_ratio: int = 2
    kernel_size: int = 3
    in_chans: int = 3
    out_indices: tuple[int, ...] = field(default=(0, 1, 2, 3))

    def __post_init__(self) -> None:
        if len(self.embed_dim) != len(self.depth) or not self.embed_dim:
            raise ValueError(f"RepViT needs one depth per stage width: {self.embed_dim} vs {self.depth}")
        if not self.out_indices or not all(0 <= i < len(self.depth) for i in self.out_indices):
            raise ValueError(f"RepViT out_indices {self.out_indices} are not stages 0..{len(self.depth) - 1}")

    @classmethod
    def from_timm(cls, architecture: str, model_args: Mapping[str, Any] | None = None) -> RepVitSpec:
        """The spec timm's ``create_model(architecture, **model_args)`` would build.

        Args:
            architecture: a timm name such as ``repvit_m1`` (a pretrained tag, ``.dist_in1k``, is ignored).
            model_args: keyword arguments timm passes to the constructor; ``embed_dim``, ``depth``,
                ``legacy``, ``mlp_ratio``, ``kernel_size``, ``in_chans`` and ``out_indices`` override
                the variant's, and arguments that change nothing in the features are accepted.

        Raises:
            ValueError: an architecture that is not a RepViT, or an argument this module does not model.
        """
        name = architecture.split(".")[0]
        if name not in VARIANTS:
            raise ValueError(f"backbone {architecture!r} is not a RepViT ({', '.join(VARIANTS)})")
        args = dict(model_args or {})
        if args.get("features_only") is False:
            raise ValueError("EdgeTAM's backbone is a feature extractor; model_args has features_only=False")
        unknown = set(args) - _INERT_ARGS - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"RepViT model_args {sorted(unknown)} are not modelled by samadapt's RepViT")
        merged = {**VARIANTS[name], **{k: v for k, v in args.items() if k in cls.__dataclass_fields__}}
        for key in ("embed_dim", "depth", "out_indices"):
            if key in merged:
                merged[key] = tuple(int(v) for v in merged[key])
        return cls(**merged)


def _divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, at least ``divisor`` (timm's
    ``make_divisible`` with ``round_limit=0``, as its squeeze-excite layers call it)."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class ConvNorm(nn.Sequential):
    """A bias-free convolution ``c`` followed by a batch norm ``bn``."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int = 1, stride: int = 1, pad: int = 0,
                 groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_dim, out_dim, kernel, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_dim))


class RepVggDw(nn.Module):
    """The token mixer: a depthwise kxk and a depthwise 1x1 branch added to the input."""

    def __init__(self, dim: int, kernel: int, legacy: bool) -> None:
        super().__init__()
        self.conv = ConvNorm(dim, dim, kernel, 1, (kernel - 1) // 2, groups=dim)
        self.conv1: nn.Module = ConvNorm(dim, dim, 1, 1, 0, groups=dim) if legacy \
            else nn.Conv2d(dim, dim, 1, 1, 0, groups=dim)
        self.bn: nn.Module = nn.Identity() if legacy else nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix each channel over its kxk neighbourhood."""
        return self.bn(self.conv(x) + self.conv1(x) + x)


class SqueezeExcite(nn.Module):
    """Channel gating from the global mean: 1x1 down to a quarter (ReLU), 1x1 up, sigmoid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = _divisible(dim * 0.25)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel of ``x`` by a gate computed from all channels' means."""
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


class RepVitMlp(nn.Module):
    """The channel mixer: 1x1 up by ``ratio``, GELU, 1x1 down (no residual here)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(dim, hidden)
        self.act = nn.GELU()
        self.conv2 = ConvNorm(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The channel mixer's output, to be added to its input by the caller."""
        return self.conv2(self.act(self.conv1(x)))


class RepVitBlock(nn.Module):
    """Token mixer, optional squeeze-excite, then a residual channel mixer."""

    def __init__(self, dim: int, spec: RepVitSpec, use_se: bool) -> None:
        super().__init__()
        self.token_mixer = RepVggDw(dim, spec.kernel_size, spec.legacy)
        self.se: nn.Module = SqueezeExcite(dim) if use_se else nn.Identity()
        self.channel_mixer = RepVitMlp(dim, dim * spec.mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One block at unchanged shape."""
        x = self.se(self.token_mixer(x))
        return x + self.channel_mixer(x)


class RepVitStem(nn.Module):
    """Two stride-2 3x3 convolutions (GELU between): the input at a quarter of its side."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(in_chans, dim // 2, 3, 2, 1)
        self.act1 = nn.GELU()
        self.conv2 = ConvNorm(dim // 2, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) to (B, dim, H/4, W/4)."""
        return self.conv2(self.act1(self.conv1(x)))


class RepVitDownsample(nn.Module):
    """A block, a depthwise stride-2 convolution, a 1x1 to the new width and a residual channel mixer."""

    def __init__(self, in_dim: int, out_dim: int, spec: RepVitSpec) -> None:
        super().__init__()
        k = spec.kernel_size
        self.pre_block = RepVitBlock(in_dim, spec, use_se=False)
        self.spatial_downsample = ConvNorm(in_dim, in_dim, k, 2, (k - 1) // 2, groups=in_dim)
        self.channel_downsample = ConvNorm(in_dim, out_dim, 1)
        self.ffn = RepVitMlp(out_dim, out_dim * spec.mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halve the side and change the width."""
        x = self.channel_downsample(self.spatial_downsample(self.pre_block(x)))
        return x + self.ffn(x)


class RepVitStage(nn.Module):
    """An optional downsampling block, then blocks whose squeeze-excite alternates (on, off, ...)."""

    def __init__(self, in_dim: int, out_dim: int, depth: int, spec: RepVitSpec, downsample: bool) -> None:
        super().__init__()
        self.downsample: nn.Module = RepVitDownsample(in_dim, out_dim, spec) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*(RepVitBlock(out_dim, spec, use_se=i % 2 == 0) for i in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's output feature map."""
        return self.blocks(self.downsample(x))


class RepVitFeatures(nn.Module):
    """The stem and the stages up to the last one asked for, named as timm's flattened feature net
    names them (``stem``, ``stages_0``, ``stages_1`` ...)."""

    def __init__(self, spec: RepVitSpec) -> None:
        super().__init__()
        self.out_indices = spec.out_indices
        self.stem = RepVitStem(spec.in_chans, spec.embed_dim[0])
        in_dim = spec.embed_dim[0]
        self.num_stages = max(spec.out_indices) + 1
        for i in range(self.num_stages):
            self.add_module(f"stages_{i}", RepVitStage(in_dim, spec.embed_dim[i], spec.depth[i], spec, i > 0))
            in_dim = spec.embed_dim[i]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The (B, C_i, H_i, W_i) outputs of the stages in ``out_indices``, in that order."""
        x = self.stem(x)
        out: dict[int, torch.Tensor] = {}
        for i in range(self.num_stages):
            x = getattr(self, f"stages_{i}")(x)
            if i in self.out_indices:
                out[i] = x
        return [out[i] for i in self.out_indices]


@dataclass
class RepVitOutput:
    """What ``EdgeTamVisionModel`` reads from its backbone (as from ``TimmWrapperModelOutput``).

    Attributes:
        last_hidden_state: the selected stages' (B, C, H, W) feature maps, highest resolution first.
        hidden_states: always None (timm's wrapper gives the same list only when asked for hidden states).
    """

    last_hidden_state: list[torch.Tensor]
    hidden_states: tuple[torch.Tensor, ...] | None = None


class RepVitBackbone(nn.Module):
    """Stands in for transformers' ``TimmWrapperModel`` around timm's RepViT feature extractor.

    Args:
        spec: the architecture (see :meth:`RepVitSpec.from_timm`).
    """

    def __init__(self, spec: RepVitSpec) -> None:
        super().__init__()
        self.spec = spec
        self.timm_model = RepVitFeatures(spec)

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> RepVitOutput:
        """Feature maps of a (B, in_chans, H, W) batch; other keyword arguments are ignored, as timm's are."""
        weight = next(self.timm_model.parameters())  # the stem's first convolution
        return RepVitOutput(last_hidden_state=self.timm_model(pixel_values.to(weight.device, weight.dtype)))
