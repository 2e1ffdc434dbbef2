"""How prompts go through mask-decoder's trainable copy of SAM's mask decoder.

:class:`AdaptedDecoder` holds the decoding passes :class:`~samadapt.methods.mask_decoder.MaskDecoderMethod`
builds on: the training path through transformers' decoder call (with autograd), the
automatic grid of evaluation decoded in chunks, the fast inference pass of
:mod:`samadapt.models.accel.sam_decoder` with the adapted decoder, and the ``multimask`` rule
that picks each object's mask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from samadapt.methods._common import transformers_model
from samadapt.methods.base import AdaptationMethod, Batch
from samadapt.methods.mask_decoder.outputs import OFF_LOGIT, MultimaskMode, split_output
from samadapt.prompts.types import ObjectPrompt

if TYPE_CHECKING:
    from transformers import Sam2Model, SamHQModel, SamModel

#: Objects (prompts x images) decoded per decoder call in :meth:`MaskDecoderMethod.predict` and
#: in the evaluation grid; bounds memory.
PREDICT_CHUNK = 64


class AdaptedDecoder(AdaptationMethod):
    """An adaptation method that decodes prompts with its own copy of SAM's mask decoder.

    Subclasses set ``mask_decoder`` (the trainable copy), ``multimask`` and
    ``eval_iou_threshold`` in their constructor.
    """

    mask_decoder: nn.Module
    multimask: MultimaskMode
    eval_iou_threshold: float
    _fast: _AdaptedModel | None

    def _decode(
        self,
        embeddings: Batch,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen prompt encoder, then the trainable decoder: (B, N, M, h, w) logits, (B, N, M) IoUs."""
        model, bdev = transformers_model(self.base), self.base.device
        with torch.no_grad():
            sparse, dense = model.prompt_encoder(
                input_points=None if points is None else points.to(bdev, torch.float32),
                input_labels=None if labels is None else labels.to(bdev, torch.long),
                input_boxes=None if boxes is None else boxes.to(bdev, torch.float32),
                input_masks=None,
            )
            position = model.get_image_wide_positional_embeddings()
        first = next(self.mask_decoder.parameters())
        dev, dtype = first.device, first.dtype
        image = embeddings["embedding"].to(dev, dtype)
        kwargs: dict[str, torch.Tensor | list[torch.Tensor] | bool] = {
            "image_embeddings": image,
            "image_positional_embeddings": position.to(dev, dtype).expand(image.shape[0], -1, -1, -1),
            "sparse_prompt_embeddings": sparse.to(dev, dtype),
            "dense_prompt_embeddings": dense.to(dev, dtype),
            "multimask_output": self.multimask != "single",
        }
        family = self.base.family
        if family == "sam2":
            highres = numbered(embeddings, "high_res_")
            kwargs["high_resolution_features"] = [embeddings[k].to(dev, dtype) for k in highres]
        elif family == "sam-hq":
            kwargs["hq_token_only"] = False
            kwargs["intermediate_embeddings"] = [embeddings[k].to(dev, dtype) for k in numbered(embeddings, "vit_")]
        out = self.mask_decoder(**kwargs)
        return out[0], out[1]

    @torch.no_grad()
    def _grid_logits(
        self, embeddings: Batch, points: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode every grid point alone and merge the masks whose predicted IoU passes the threshold.

        At most :data:`PREDICT_CHUNK` prompts (points x images) go through the decoder per
        call, and the merge is a running maximum, so memory does not grow with the grid.

        Args:
            embeddings: ``embedding`` (B, C, e, e) and the family's extra tensors.
            points: (B, G, 2) (x, y) in the model-input frame.
            valid: (B, G) bool; switched-off points are never kept.

        Returns:
            (B, h, w) logits, per pixel the largest of the kept masks' (``OFF_LOGIT`` where no
            mask is kept), and (B,) the highest predicted IoU among the kept masks (0 when none).
        """
        b, g = points.shape[:2]
        step = max(1, PREDICT_CHUNK // b)
        merged: torch.Tensor | None = None
        best: torch.Tensor | None = None
        for start in range(0, g, step):
            chunk = points[:, start : start + step]
            n = chunk.shape[1]
            masks, iou = self._decode_points(embeddings, chunk)
            logits, score = self._choose(masks, iou)  # (B, n, h, w), (B, n)
            keep = (score >= self.eval_iou_threshold) & valid[:, start : start + n].to(score.device)
            here = torch.where(keep[:, :, None, None], logits, torch.full_like(logits, OFF_LOGIT)).amax(dim=1)
            top = torch.where(keep, score, torch.zeros_like(score)).amax(dim=1)
            merged = here if merged is None else torch.maximum(merged, here)
            best = top if best is None else torch.maximum(best, top)
        return merged, best  # type: ignore[return-value]

    def _decode_points(self, embeddings: Batch, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Single positive points, each decoded alone without gradients: (B, n, M, h, w) logits, (B, n, M) IoUs.

        With a plain SAM, SAM-HQ or SAM 2 base model on the decoder's device, the points go
        through the fast inference pass of :mod:`samadapt.models.accel.sam_decoder` with the
        adapted decoder (the same arithmetic up to float rounding, and several times faster
        on a CPU than transformers' batched call, which copies the image embedding per
        prompt); otherwise through :meth:`_decode`.

        Args:
            embeddings: ``embedding`` (B, C, e, e) and the family's extra tensors.
            points: (B, n, 2) (x, y) in the model-input frame.
        """
        b, n = points.shape[:2]
        labels = torch.ones((b, n, 1), dtype=torch.long)
        view = self._fast_view()
        if view is None:
            return self._decode(embeddings, points[:, :, None], labels, None)
        from samadapt.models.accel import sam_decoder

        dev = self.base.device
        prompt_encoder = transformers_model(self.base).prompt_encoder
        # (B, n, T, C) point tokens
        sparse, _ = prompt_encoder(points[:, :, None].to(dev, torch.float32), labels.to(dev), None, None)
        valid = torch.ones(sparse.shape[1:3], dtype=torch.bool, device=dev)
        precision = sam_decoder.precision_for(self.base)
        masks, ious = [], []
        for i in range(b):  # the fast pass decodes the prompts of one image per call
            high = [embeddings[k][i : i + 1].to(dev) for k in numbered(embeddings, "high_res_")]
            high_res = (high[0], high[1]) if high else None  # SAM 2's two finest FPN levels
            vit = embeddings["vit_0"][i : i + 1].to(dev) if "vit_0" in embeddings else None
            m, iou = sam_decoder.decode_sam(view, embeddings["embedding"][i : i + 1].to(dev), sparse[i], valid,
                                            self.multimask != "single", precision, high_res, vit)
            masks.append(m.float())
            ious.append(iou.float())
        return torch.stack(masks), torch.stack(ious)

    def _fast_view(self) -> _AdaptedModel | None:
        """The base model seen with the adapted decoder, for the fast pass; None where it cannot be used."""
        from samadapt.models.accel import sam_decoder

        here = next(self.mask_decoder.parameters()).device
        model = transformers_model(self.base)
        if here != next(model.parameters()).device or not sam_decoder.supported(model):
            return None
        if getattr(self, "_fast", None) is None:
            # not a submodule: the base model's parts must stay out of this method's state dict
            object.__setattr__(self, "_fast", _AdaptedModel(model, self.mask_decoder))
        return self._fast

    def object_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Each object's chosen mask logits, (B, N, h, w), from :meth:`forward`'s output.

        ``"best"`` takes the candidate of highest predicted IoU, ``"mean"`` the mean of the
        candidates, ``"single"`` the one mask.
        """
        return self._choose(*split_output(logits))[0]

    def _choose(self, masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each object's one mask and its predicted IoU by the ``multimask`` rule.

        Args:
            masks: (B, N, M, h, w) candidate logits.
            iou: (B, N, M) predicted IoUs.

        Returns:
            (B, N, h, w) logits and (B, N) IoUs: the candidate of highest predicted IoU
            (``"best"``), the mean of the candidates' logits and of their IoUs (``"mean"``), or
            the one mask (``"single"``).
        """
        if self.multimask == "mean":
            return masks.mean(dim=2), iou.mean(dim=2)
        if self.multimask == "single":
            return masks[:, :, 0], iou[:, :, 0]
        top = iou.argmax(dim=2)
        index = top[:, :, None, None, None].expand(-1, -1, 1, *masks.shape[-2:])
        return masks.gather(2, index)[:, :, 0], iou.gather(2, top[:, :, None])[:, :, 0]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, 2, h, w): the union (max of sigmoids) of every object's chosen mask, and its complement."""
        p = torch.sigmoid(self.object_logits(logits)).amax(dim=1, keepdim=True)
        return torch.cat([1 - p, p], dim=1)


class _AdaptedModel(nn.Module):
    """What :func:`samadapt.models.accel.sam_decoder.decode_sam` reads of a model, with the adapted mask decoder.

    The prompt encoder and the image-grid positional embedding are the frozen base model's;
    the mask decoder is the method's trained copy.
    """

    def __init__(self, model: SamModel | SamHQModel | Sam2Model, decoder: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.shared_image_embedding = model.shared_image_embedding
        self.get_image_wide_positional_embeddings = model.get_image_wide_positional_embeddings
        self.mask_decoder = decoder


def numbered(batch: Batch, prefix: str) -> list[str]:
    """Keys ``prefix0``, ``prefix1``, ... of a batch in numeric order."""
    return sorted((k for k in batch if k.startswith(prefix)), key=lambda k: int(k[len(prefix):]))


def prompt_groups(prompts: list[ObjectPrompt]) -> list[list[int]]:
    """Indices of prompts with the same shape (point count, box or not), in chunks of PREDICT_CHUNK.

    Each group is decoded in one call without padding points, which would change the result.
    """
    by_shape: dict[tuple[int, bool], list[int]] = {}
    for i, p in enumerate(prompts):
        by_shape.setdefault((len(p.points), p.box is not None), []).append(i)
    return [g[s : s + PREDICT_CHUNK] for g in by_shape.values() for s in range(0, len(g), PREDICT_CHUNK)]
