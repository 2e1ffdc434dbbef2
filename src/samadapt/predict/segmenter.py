"""Prompted segmentation of one image at a time: the stateful door onto encode and decode.

``Segmenter(model).segment(image, prompts)`` reads the image, fetches its embedding from
the cache (running the encoder only on a miss), decodes every object's prompts in as few
decoder calls as their shapes allow, and returns masks in the image's own pixel grid, each
cropped to its object (see :mod:`samadapt.imagery.mask_windows`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from samadapt.errors import InputError
from samadapt.imagery.mask_windows import logit_windows
from samadapt.imagery.preprocess import mask_prompt_to_model
from samadapt.models.accel.sam_decoder import join
from samadapt.models.accel.speed import RuntimeOptions, apply_runtime
from samadapt.models.loading import LoadedModel, load_model
from samadapt.models.registry import DEFAULT_MODEL
from samadapt.models.sam import DecoderPrompts, decode, low_res_side
from samadapt.predict.cache import EmbeddingCache
from samadapt.predict.embed import Embedded, Embedder, ImageLike, as_geoimage
from samadapt.predict.packing import pack_prompts
from samadapt.predict.result import MaskCrop, SegmentationResult
from samadapt.prompts.types import ObjectPrompt

if TYPE_CHECKING:
    from samadapt.predict.automatic import AutomaticOptions

__all__ = ["DECODE_CHUNK", "Embedded", "ImageLike", "Segmenter", "as_geoimage"]

#: Objects decoded per decoder call; bounds memory for thousands of prompts.
DECODE_CHUNK = 64


class Segmenter(Embedder):
    """Segment images with a SAM-family model and point, box or mask prompts.

    The model is loaded on first use, not in the constructor. Embeddings come through the
    embedding cache as for any :class:`~samadapt.predict.embed.Embedder`.

    Args:
        model: registry name, transformers folder, Meta ``.pth`` file, or a LoadedModel.
        device: torch device for the model.
        cache: an EmbeddingCache, True for the default store under ``$SAMADAPT_HOME``,
            or False for an in-memory cache of the last few images only.
        download: allow downloading a registry model that is not cached.
        runtime: how to run the encoder: a :class:`samadapt.models.accel.speed.RuntimeOptions` or a spec
            such as "fp32" or "bf16,fused". None: "auto" for a model loaded here, and the
            runtime a given LoadedModel already has (``load_model`` applies "auto"). Applied on first use.

    Attributes:
        encoder_calls: how many images went through the encoder (cache misses).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | LoadedModel = DEFAULT_MODEL,
        *,
        device: str = "cpu",
        cache: EmbeddingCache | bool = True,
        download: bool = True,
        runtime: RuntimeOptions | str | None = None,
    ) -> None:
        super().__init__(model if isinstance(model, LoadedModel) else None, cache=cache)
        self._ref = model
        self._runtime = RuntimeOptions.parse(runtime) if isinstance(runtime, str) else runtime
        self.device = device
        self.download = download

    @property
    def loaded(self) -> LoadedModel:
        """The model, loaded (and if needed downloaded) on first access."""
        if self._loaded is None:
            self._loaded = load_model(self._ref, device=self.device, download=self.download,  # type: ignore[arg-type]
                                      runtime=self._runtime or "auto")
        elif self._runtime is not None:
            apply_runtime(self._loaded, self._runtime)
        self._runtime = None
        return self._loaded

    def segment(
        self,
        image: ImageLike | Embedded,
        prompts: Sequence[ObjectPrompt],
        *,
        multimask: bool = True,
        keep_logits: bool = False,
    ) -> SegmentationResult:
        """Segment one object per prompt.

        Args:
            image: the image (or an :class:`Embedded` from :meth:`embed`).
            prompts: one ObjectPrompt per object, in pixel coordinates of the image.
            multimask: let the model propose 3 masks per object and keep the one with the
                highest predicted IoU (recommended for single points); else one mask.
            keep_logits: keep the low-resolution logits (e.g. to refine with a mask prompt).

        Returns:
            One mask per object, cropped to the object (``result.crops``; ``result.masks`` gives
            them as (N, H, W)), and predicted IoUs (N,), in the order of ``prompts``; pixels that
            are nodata in the image are never part of a mask. Each mask equals, pixel for pixel,
            the decoder's logits resized to the whole image and thresholded at 0, but only the
            window where its logits can be positive is resized.

        Raises:
            InputError: no prompts, or a prompt outside the image.
        """
        if not prompts:
            raise InputError("no prompts given; pass at least one point, box or mask")
        emb = image if isinstance(image, Embedded) else self.embed(image)
        h, w = emb.geometry.original_hw
        for p in prompts:
            p.check_inside(h, w)
        low_res, scores = self.decode(emb, prompts, multimask=multimask)
        best = scores.argmax(dim=1)
        idx = torch.arange(len(prompts))
        low_best, score_best = low_res[idx, best], scores[idx, best]
        crops = []
        for row, col, logits in logit_windows(low_best, emb.geometry, self.loaded.preprocessing):
            valid = emb.image.valid[row : row + logits.shape[0], col : col + logits.shape[1]]
            crops.append(MaskCrop.tight((logits > 0.0) & valid, row, col, copy=True))
        return SegmentationResult.from_crops(
            crops,
            (h, w),
            scores=score_best.numpy().astype(np.float32),
            logits=low_best.numpy() if keep_logits else None,
            trusted=self.loaded.trusted,
        )

    def decode(
        self, emb: Embedded, prompts: Sequence[ObjectPrompt], *, multimask: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution logits (N, M, h, w) and IoUs (N, M) for every object, in prompt order.

        Objects without a mask prompt go to the decoder together, whatever their number of
        points (each is decoded as if alone); objects with a mask prompt are decoded one at a
        time, since SAM takes one dense prompt per call.
        """
        loaded = self.loaded
        singles = {i: p.mask for i, p in enumerate(prompts) if p.mask is not None}  # index -> mask prompt
        if not singles:
            masks, scores = [], []
            for start in range(0, len(prompts), DECODE_CHUNK):
                dp = pack_prompts(prompts[start : start + DECODE_CHUNK], emb.geometry)
                lr, sc = decode(loaded, emb.embedding, dp, multimask=multimask)
                masks.append(lr)
                scores.append(sc)
            return join(masks), join(scores)
        side = low_res_side(loaded)
        out_masks = torch.empty(len(prompts), 3 if multimask else 1, side, side)
        out_scores = torch.empty(len(prompts), 3 if multimask else 1)
        rest = [i for i in range(len(prompts)) if prompts[i].mask is None]
        if rest:
            out_masks[rest], out_scores[rest] = self.decode(emb, [prompts[i] for i in rest], multimask=multimask)
        for i, mask_prompt in singles.items():
            dp = pack_prompts([prompts[i]], emb.geometry)
            mask = mask_prompt_to_model(mask_prompt, emb.geometry, loaded.preprocessing, side)
            dp = DecoderPrompts(dp.points, dp.labels, dp.boxes, mask)
            out_masks[i], out_scores[i] = (t[0] for t in decode(loaded, emb.embedding, dp, multimask=multimask))
        return out_masks, out_scores

    #: Every object's prompt in the model-input frame: points padded with label -10, NaN rows for no box.
    _decoder_prompts = staticmethod(pack_prompts)

    def segment_everything(self, image: ImageLike, options: AutomaticOptions | None = None) -> SegmentationResult:
        """Segment every object the model finds, prompting it with a grid of points."""
        from samadapt.predict.automatic import AutomaticOptions, segment_everything

        return segment_everything(self, image, options or AutomaticOptions())

