"""A small U-Net, and ``unet``: the U-Net alone as an adaptation baseline (the encoder-adaptation abstract).

:class:`UNet` is the classic encoder-decoder of Ronneberger et al. (2015), sized for a few
labelled images: double 3x3 convolution blocks (convolution, batch norm, ReLU, twice), 2x2
max pooling down, 2x2 transposed convolutions up, and skip connections that concatenate
each encoder level with the decoder at the same resolution. ``encode`` returns every
encoder level, so :mod:`samadapt.methods.encoder_adapter` can map a chosen level into SAM's
embedding space; ``forward`` returns logits at the input resolution.

:class:`UNetMethod` trains the U-Net alone on the same normalised, resized and padded input
SAM sees (the "U-Net alone" number the encoder-adaptation abstract reports). It runs at half
the model input size (``output_scale = 0.5``), which costs a quarter of the full-size compute
and gives logits directly in its output frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samadapt.errors import InputError
from samadapt.imagery.preprocess import Geometry, Preprocessing
from samadapt.methods._common import normalise, raw_input
from samadapt.methods.base import AdaptationMethod, Batch, Sample
from samadapt.methods.options import Option

if TYPE_CHECKING:
    from samadapt.models.loading import LoadedModel


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return int(value)


class DoubleConv(nn.Sequential):
    """(3x3 convolution, batch norm, ReLU) twice; keeps the spatial size."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """A U-Net with ``depth`` poolings; level ``l`` has ``base * 2**l`` channels.

    Args:
        in_channels: bands of the input.
        out_channels: logit channels of the output.
        base: channels of the first (full-resolution) level.
        depth: number of 2x downsamplings; the bottleneck is at 1 / 2**depth of the input.

    Raises:
        InputError: if a size argument is not a positive integer.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base: int = 16, depth: int = 4) -> None:
        super().__init__()
        in_channels = _positive_int(in_channels, "in_channels")
        out_channels = _positive_int(out_channels, "out_channels")
        base = _positive_int(base, "base")
        self.depth = _positive_int(depth, "depth")
        self.in_channels = in_channels
        #: Channels of each encoder level, full resolution first, bottleneck last.
        self.widths: tuple[int, ...] = tuple(base * 2**level for level in range(self.depth + 1))
        w = self.widths
        pairs = zip((in_channels, *w[:-1]), w, strict=False)
        self.down = nn.ModuleList([DoubleConv(c_in, c_out) for c_in, c_out in pairs])
        # up[i] and merge[i] bring level depth - i up to level depth - i - 1
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(w[lvl], w[lvl - 1], kernel_size=2, stride=2) for lvl in range(self.depth, 0, -1)]
        )
        self.merge = nn.ModuleList([DoubleConv(2 * w[lvl - 1], w[lvl - 1]) for lvl in range(self.depth, 0, -1)])
        self.head = nn.Conv2d(w[0], out_channels, kernel_size=1)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this for :meth:`encode` (``2**depth``)."""
        return 2**self.depth

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature maps at every level.

        Args:
            x: (B, in_channels, H, W) with H and W multiples of ``2**depth``.

        Returns:
            ``depth + 1`` maps; map ``l`` is (B, base * 2**l, H / 2**l, W / 2**l), so the last
            one is the bottleneck.

        Raises:
            InputError: on a wrong number of dimensions or channels, or a side that is not a
                multiple of ``2**depth`` (:meth:`forward` pads such inputs itself).
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"the U-Net takes (B, {self.in_channels}, H, W) input, got shape {tuple(x.shape)}")
        if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
            raise InputError(
                f"U-Net encoder input sides must be multiples of 2**depth = {self.multiple}, got "
                f"{x.shape[-2]} x {x.shape[-1]}; pad the input or call forward(), which pads"
            )
        feats = []
        h = x
        for level, block in enumerate(self.down):
            if level:
                h = F.max_pool2d(h, 2)
            h = block(h)
            feats.append(h)
        return feats

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """(B, out_channels, H, W) logits from the maps of :meth:`encode`."""
        h = feats[-1]
        for i, (up, merge) in enumerate(zip(self.up, self.merge, strict=False)):
            h = merge(torch.cat([feats[self.depth - 1 - i], up(h)], dim=1))
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of an input of any size.

        Args:
            x: (B, in_channels, H, W); zero-padded bottom-right to multiples of ``2**depth``
                and cropped back afterwards.

        Returns:
            (B, out_channels, H, W) logits.
        """
        if x.dim() != 4:
            raise InputError(f"the U-Net takes (B, {self.in_channels}, H, W) input, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.decode(self.encode(x))[..., :h, :w]


def unet_input(sample: Sample, spec: Preprocessing, in_channels: int) -> tuple[torch.Tensor, Geometry]:
    """A sample as the U-Net sees it: SAM's resize and padding, normalised.

    Three bands are normalised with the model's ImageNet statistics, exactly as SAM's input;
    any other band count uses the mean of those statistics for every band. The padding is 0.

    Args:
        sample: the image; ``pixels`` is (H, W, in_channels) uint8.
        spec: the base model's preprocessing.
        in_channels: expected band count.

    Returns:
        (in_channels, S, S) float32 with S = ``spec.size``, and the geometry.

    Raises:
        InputError: if the sample has a different number of bands.
    """
    if sample.pixels.ndim != 3 or sample.pixels.shape[2] != in_channels:
        raise InputError(
            f"{sample.stem} has pixel shape {sample.pixels.shape}, but the method was built for "
            f"(H, W, {in_channels}) images; build it with in_channels={sample.pixels.shape[-1]}"
        )
    raw, geometry = raw_input(sample.pixels, spec)
    hw = torch.tensor([geometry.resized_hw])
    if in_channels == 3:
        return normalise(raw[None], hw, spec)[0], geometry
    mean, std = float(np.mean(spec.mean)), float(np.mean(spec.std))
    x = (raw - mean) / std
    x[:, geometry.resized_hw[0] :] = 0
    x[:, :, geometry.resized_hw[1] :] = 0
    return x, geometry


class UNetMethod(AdaptationMethod):
    """The U-Net alone, trained from scratch.

    Input is the image in SAM's frame (:func:`unet_input`) reduced to half size by area
    averaging; the U-Net's logits are the output frame (``output_scale = 0.5``). Every
    parameter trains; SAM is not used.

    Args:
        base: the loaded SAM-family model, used only for its preprocessing.
        num_classes: classes including background.
        in_channels: bands of the input.
        width: channels of the U-Net's first level, doubled at each pooling.
        depth: the U-Net's poolings.

    Raises:
        InputError: on an option out of range.
    """

    name = "unet"
    output_scale = 0.5
    uses_sam_weights = False
    OPTIONS: ClassVar[dict[str, Option]] = {
        "width": Option(int, 16, "channels of the U-Net's first level, doubled at each pooling", low=1),
        "depth": Option(int, 4, "poolings of the U-Net (its bottleneck is at 1 / 2**depth of its input)", low=1),
    }

    def __init__(self, base: LoadedModel, *, num_classes: int = 2, in_channels: int = 3, width: int = 16,
                 depth: int = 4, **options: Any) -> None:
        super().__init__(base, num_classes=num_classes, in_channels=in_channels, width=width, depth=depth, **options)
        self.unet = UNet(in_channels, self.out_channels, base=self.options["width"], depth=self.options["depth"])

    def make_inputs(self, sample: Sample, *, train: bool, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """``image`` (in_channels, side, side) and, when labelled, ``target`` (side, side) long."""
        image, geometry = unet_input(sample, self.preprocessing, self.in_channels)
        side = self.output_side
        out = {"image": F.interpolate(image[None], (side, side), mode="area")[0]}
        if sample.target is not None:
            out["target"] = self.target_tensor(sample.target, geometry)
        return out

    def forward(self, batch: Batch) -> torch.Tensor:
        """(B, out_channels, side, side) logits."""
        return self.unet(batch["image"])
