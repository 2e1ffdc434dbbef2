"""The encode/decode wrapper: one interface over SAM, SAM-HQ and SAM 2 in transformers.

The expensive image encoder and the cheap prompt decoder stay apart: :func:`encode` turns
model inputs into an :data:`Embedding` (what the cache stores), :func:`decode` turns an
embedding plus prompts into low-resolution mask logits and predicted IoUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from samadapt.models.accel.sam_decoder import join
from samadapt.models.families import family_model, image_encoder_call
from samadapt.models.loading import LoadedModel

if TYPE_CHECKING:
    from samadapt.models.sam3 import Sam3Parts

#: Tensors of one image's embedding, each with a leading batch dimension of 1. "image" is
#: the main embedding; SAM 2 adds "high_res_0/1", SAM-HQ adds "vit_0", the early ViT features of its
#: first global-attention block (the only ones its decoder reads; the later blocks' are not kept,
#: which makes a ViT-B SAM-HQ embedding 17 MB instead of 54 MB).
Embedding = dict[str, torch.Tensor]


@torch.no_grad()
def encode(loaded: LoadedModel, batch: torch.Tensor) -> list[Embedding]:
    """Run the image encoder.

    Args:
        loaded: the model.
        batch: (B, 3, S, S) float32 preprocessed inputs.

    Returns:
        B embeddings, on the CPU, in float32 (whatever precision the runtime computed in).

    The encoder runs through ``loaded.runtime`` (see :func:`samadapt.models.accel.speed.apply_runtime`)
    when one is set, else through transformers' plain call.
    """
    if loaded.runtime is not None and loaded.runtime.call is None:  # unpickled in another process
        from samadapt.models.accel.speed import apply_runtime

        apply_runtime(loaded, loaded.runtime.options)
    run = loaded.runtime if loaded.runtime is not None else image_encoder_call(loaded.model)
    batch = batch.to(loaded.device)
    out: list[Embedding] = []
    if loaded.family == "sam":
        emb = run(batch)
        return [{"image": emb[i : i + 1].float().cpu()} for i in range(len(batch))]
    if loaded.family == "sam3":  # the ViT output both SAM 3 heads read (samadapt.models.sam3)
        vit = run(batch)
        return [{"vit": vit[i : i + 1].float().cpu()} for i in range(len(batch))]
    if loaded.family == "sam-hq":
        emb, inter = run(batch)
        return [{"image": emb[i : i + 1].float().cpu(), "vit_0": inter[0][i : i + 1].float().cpu()}
                for i in range(len(batch))]
    feats = run(batch)
    for i in range(len(batch)):
        item = {f"high_res_{k}": t[i : i + 1].float().cpu() for k, t in enumerate(feats[:-1])}
        item["image"] = feats[-1][i : i + 1].float().cpu()
        out.append(item)
    return out


@dataclass(frozen=True)
class DecoderPrompts:
    """Prompts for N objects in the model-input frame; objects may mix kinds and point counts.

    Attributes:
        points: (N, P, 2) float (x, y) in model-input pixels, or None. Objects with fewer than P
            points are padded with label -10; padding changes nothing in the result.
        labels: (N, P) int, 1 foreground, 0 background, -10 padding; None with points None.
        boxes: (N, 4) float XYXY in model-input pixels, rows of NaN for objects without a box; or None.
        mask: (1, h, w) mask-input logits at a quarter of the input size (only with N = 1), or None.
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    boxes: np.ndarray | None = None
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        if self.points is not None:
            return len(self.points)
        if self.boxes is not None:
            return len(self.boxes)
        return 1

    def groups(self) -> dict[tuple[int, bool], np.ndarray]:
        """Object indices by prompt shape: (number of real points, has a box) -> indices."""
        n = len(self)
        counts = (self.labels != PAD_LABEL).sum(1) if self.labels is not None else np.zeros(n, int)
        has_box = ~np.isnan(self.boxes).any(1) if self.boxes is not None else np.zeros(n, bool)
        keys = counts * 2 + has_box
        return {(int(k) // 2, bool(k % 2)): np.flatnonzero(keys == k) for k in np.unique(keys)}

    def subset(self, idx: np.ndarray) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Points (1, n, p, 2), labels (1, n, p) and boxes (1, n, 4) of objects sharing one shape, unpadded."""
        points = labels = boxes = None
        if self.points is not None and self.labels is not None:  # both or neither, by construction
            real = self.labels[idx] != PAD_LABEL
            p = int(real[0].sum()) if len(idx) else 0
            if p:
                points = torch.as_tensor(self.points[idx][real].reshape(len(idx), p, 2), dtype=torch.float32)[None]
                labels = torch.as_tensor(self.labels[idx][real].reshape(len(idx), p), dtype=torch.int64)[None]
        if self.boxes is not None and not np.isnan(self.boxes[idx[0]]).any():
            boxes = torch.as_tensor(self.boxes[idx], dtype=torch.float32)[None]
        return points, labels, boxes


#: Label of a padding point in :class:`DecoderPrompts`.
PAD_LABEL = -10

#: Objects per transformers forward call, by family (others: all objects of one prompt shape),
#: where the fast pass of :mod:`samadapt.models.accel.sam_decoder` cannot be used (mask prompts, an
#: adapter in the decoder). transformers' SAM 2 decoder measured slower per object when batched
#: on a 2-core CPU (77 ms alone, 85 ms in fours, 116 ms in sixteens), so it goes one at a time, and so do
#: SAM 3's tracker and EdgeTAM, whose decoders are SAM 2's.
FORWARD_BATCH = {"sam2": 1, "sam3": 1, "edgetam": 1}  # EdgeTAM's decoder is SAM 2's


def low_res_side(loaded: LoadedModel) -> int:
    """Side of the decoder's low-resolution logits: a quarter of the input for SAM, SAM-HQ and SAM 2,
    four times SAM 3's 72 x 72 token grid (288 px for its 1008 px input)."""
    if loaded.family == "sam3":
        return 4 * sam3_parts(loaded).grid[0]
    return loaded.preprocessing.size // 4


def sam3_parts(loaded: LoadedModel) -> Sam3Parts:
    """A SAM 3 model's :class:`~samadapt.models.sam3.Sam3Parts`."""
    return cast("Sam3Parts", loaded.model)


@torch.no_grad()
def decode(
    loaded: LoadedModel, embedding: Embedding, prompts: DecoderPrompts, *, multimask: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the prompt encoder and mask decoder on a cached embedding.

    Every object is decoded as if alone: with SAM's, SAM-HQ's or SAM 2's plain decoder (SAM 2's also in EdgeTAM
    and SAM 3's tracker) all objects go through one pass (:mod:`samadapt.models.accel.sam_decoder`), otherwise
    objects of the same prompt shape share a call of the model (:data:`FORWARD_BATCH`).

    Args:
        loaded: the model that produced ``embedding``.
        embedding: one image's embedding from :func:`encode`.
        prompts: N objects' prompts in the model-input frame.
        multimask: return 3 candidate masks per object (else 1).

    Returns:
        Low-resolution mask logits (N, M, S/4, S/4) and predicted IoUs (N, M), float32 on the CPU,
        with M = 3 when ``multimask`` else 1.
    """
    from samadapt.models.accel import sam_decoder

    dev = loaded.device
    if loaded.family == "sam3":  # points and boxes go through the tracker, on its features, once for every object
        embedding = _sam3_tracker_embedding(loaded, embedding)
    fast_model = decoder_model(loaded)
    if prompts.mask is None and sam_decoder.supported(fast_model):
        model, image = family_model(fast_model), embedding["image"].to(dev)
        high_res = vit = None
        if "high_res_0" in embedding:  # SAM 2's decoder: SAM 2, EdgeTAM, SAM 3's tracker
            high_res = (embedding["high_res_0"].to(dev), embedding["high_res_1"].to(dev))
        if loaded.family == "sam-hq" and "vit_0" in embedding:
            vit = embedding["vit_0"].to(dev)
        groups = prompts.groups()
        sparse: list[torch.Tensor | None] = [None] * len(prompts)
        for idx in groups.values():
            points, labels, boxes = (None if t is None else t.to(dev) for t in prompts.subset(idx))
            if points is not None or boxes is not None:
                tokens, _ = model.prompt_encoder(points, labels, boxes, None)
                for j, i in enumerate(idx):
                    sparse[i] = tokens[0, j]
        width = max((len(t) for t in sparse if t is not None), default=0)
        masks, scores = [], []
        for start in range(0, len(prompts), sam_decoder.CHUNK):
            chunk = sparse[start : start + sam_decoder.CHUNK]
            padded = image.new_zeros(len(chunk), width, image.shape[1])
            valid = torch.zeros(len(chunk), width, dtype=torch.bool, device=dev)
            for j, t in enumerate(chunk):
                if t is not None:
                    padded[j, : len(t)], valid[j, : len(t)] = t, True
            lr, sc = sam_decoder.decode_sam(model, image, padded, valid, multimask, sam_decoder.precision_for(loaded),
                                            high_res, vit)
            masks.append(lr)
            scores.append(sc)
        return join(masks).float().cpu(), join(scores).float().cpu()
    n, m = len(prompts), 3 if multimask else 1
    side = low_res_side(loaded)
    out_masks, out_scores = torch.empty(n, m, side, side), torch.empty(n, m)
    step = FORWARD_BATCH.get(loaded.family, max(n, 1))
    for group in prompts.groups().values():
        for first in range(0, len(group), step):
            idx = group[first : first + step]
            points, labels, boxes = prompts.subset(idx)
            kwargs: dict[str, object] = {"multimask_output": multimask}
            if points is not None and labels is not None:  # both or neither (subset)
                kwargs["input_points"], kwargs["input_labels"] = points.to(dev), labels.to(dev)
            if boxes is not None:
                kwargs["input_boxes"] = boxes.to(dev)
            if prompts.mask is not None:
                kwargs["input_masks"] = prompts.mask.to(dev, torch.float32)[None]
            lr, sc = _call_model(loaded, embedding, kwargs)
            out_masks[idx], out_scores[idx] = lr, sc
    return out_masks, out_scores


def decoder_model(loaded: LoadedModel) -> torch.nn.Module:
    """The transformers model whose prompt encoder and mask decoder decode point and box prompts: the loaded
    model itself, or SAM 3's tracker."""
    return sam3_parts(loaded).tracker if loaded.family == "sam3" else loaded.model


def _sam3_tracker_embedding(loaded: LoadedModel, embedding: Embedding) -> Embedding:
    """A SAM 3 embedding (its ViT output) as the tracker's: ``high_res_0``, ``high_res_1`` and ``image``."""
    levels = sam3_parts(loaded).tracker_embeddings(embedding["vit"].to(loaded.device))
    return {"high_res_0": levels[0], "high_res_1": levels[1], "image": levels[2]}


def _call_model(loaded: LoadedModel, embedding: Embedding,
                kwargs: dict[str, object]) -> tuple[torch.Tensor, torch.Tensor]:
    """One transformers forward pass from a cached embedding; (low-res logits, IoUs) of its objects."""
    dev = loaded.device
    image = embedding["image"].to(dev)
    if loaded.family == "sam":
        out = loaded.model(image_embeddings=image, **kwargs)
    elif loaded.family == "sam-hq":
        inter = [embedding[k].to(dev) for k in sorted(k for k in embedding if k.startswith("vit_"))]
        out = loaded.model(image_embeddings=image, intermediate_embeddings=inter, **kwargs)
    else:
        feats = [embedding[k].to(dev) for k in sorted(k for k in embedding if k.startswith("high_res_"))]
        out = decoder_model(loaded)(image_embeddings=[*feats, image], **kwargs)
    return out.pred_masks[0].float().cpu(), out.iou_scores[0].float().cpu()
