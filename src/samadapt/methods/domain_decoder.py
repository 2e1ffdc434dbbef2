"""``domain-decoder`` (the Mars pits paper): a light decoder trained on frozen, cached SAM embeddings.

The image encoder never trains, so each image is encoded once (through the embedding
cache) and every epoch costs only the decoder. The decoder is three transposed-convolution
upsampling layers, each doubling the resolution, with normalisation and activation
between, then a 1x1 convolution to the classes: a 64 x 64 SAM embedding becomes a 512 x 512
map (half the model input). With SAM 2, ``use_high_res=True`` adds the encoder's
high-resolution feature maps (1/4 and 1/8 of the input) as skip connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from samadapt.errors import InputError
from samadapt.methods._common import model_config
from samadapt.methods.base import AdaptationMethod, Batch, Sample
from samadapt.methods.options import Option

if TYPE_CHECKING:
    from samadapt.models.loading import LoadedModel


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2),
        nn.GroupNorm(min(8, c_out), c_out),
        nn.GELU(),
        nn.Conv2d(c_out, c_out, kernel_size=3, padding=1),
        nn.GroupNorm(min(8, c_out), c_out),
        nn.GELU(),
    )


class DomainDecoder(AdaptationMethod):
    """Three upsampling layers on cached embeddings.

    Args:
        base: the loaded SAM-family model; its encoder stays frozen.
        num_classes: classes including background.
        in_channels: must be 3 (the embeddings come from the cached encoder).
        width: channels of the first upsampling layer, halved by each of the next two; 4, 8,
            16 or a multiple of 32, so that every layer's group normalisation divides evenly.
        use_high_res: SAM 2 only: concatenate the encoder's high-resolution maps.

    Raises:
        InputError: on an option out of range, or ``use_high_res`` with a model other than SAM 2.
    """

    name = "domain-decoder"
    output_scale = 0.5
    OPTIONS: ClassVar[dict[str, Option]] = {
        "width": Option(int, 128, "channels of the first upsampling layer, halved by each of the next two "
                                  "(4, 8, 16 or a multiple of 32)", low=4),
        "use_high_res": Option(bool, False, "SAM 2 only: add the encoder's maps at 1/4 and 1/8 of the input as "
                                            "skip connections"),
    }

    def __init__(self, base: LoadedModel, *, num_classes: int = 2, in_channels: int = 3, width: int = 128,
                 use_high_res: bool = False, **options: Any) -> None:
        super().__init__(base, num_classes=num_classes, in_channels=in_channels, width=width,
                         use_high_res=use_high_res, **options)
        w, self.use_high_res = self.options["width"], self.options["use_high_res"]
        if w not in (4, 8, 16) and w % 32:
            raise InputError(f"domain-decoder option width must be 4, 8, 16 or a multiple of 32, got {w}")
        if self.use_high_res and base.family != "sam2":
            raise InputError(
                f"domain-decoder option use_high_res needs a SAM 2 model, whose encoder gives high-resolution maps; "
                f"this model is {base.family!r}, so leave use_high_res false"
            )
        emb_channels = _embedding_channels(base)
        skips = _high_res_channels(base) if self.use_high_res else (0, 0)
        self.up1 = _up(emb_channels, w)
        self.up2 = _up(w + skips[1], w // 2)
        self.up3 = _up(w // 2 + skips[0], w // 4)
        self.head = nn.Conv2d(w // 4, self.out_channels, kernel_size=1)

    def make_inputs(self, sample: Sample, *, train: bool, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        emb = self.embedding(sample)
        out = {"embedding": emb["image"][0]}
        if self.use_high_res:
            out["high_res_0"] = emb["high_res_0"][0]
            out["high_res_1"] = emb["high_res_1"][0]
        if sample.target is not None:
            h, w = sample.target.shape
            out["target"] = self.target_tensor(sample.target, self.geometry_of(h, w))
        return out

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.up1(batch["embedding"])
        if self.use_high_res:
            x = torch.cat([x, batch["high_res_1"]], dim=1)
        x = self.up2(x)
        if self.use_high_res:
            x = torch.cat([x, batch["high_res_0"]], dim=1)
        return self.head(self.up3(x))


def _embedding_channels(base: LoadedModel) -> int:
    cfg = model_config(base)
    if base.family == "sam2":
        return int(cfg.vision_config.fpn_hidden_size)
    return int(cfg.vision_config.output_channels)


def _high_res_channels(base: LoadedModel) -> tuple[int, int]:
    # SAM 2's mask decoder projects the FPN's two finest levels to C/8 and C/4 channels
    c = int(model_config(base).mask_decoder_config.hidden_size)
    return c // 8, c // 4
