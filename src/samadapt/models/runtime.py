"""The encode/decode wrapper: one interface over SAM, SAM-HQ and SAM 2 in transformers.

The expensive image encoder and the cheap prompt decoder stay apart: :func:`encode` turns
model inputs into an :data:`Embedding` (what the cache stores), :func:`decode` turns an
embedding plus prompts into low-resolution mask logits and predicted IoUs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from samadapt.models.loading import LoadedModel

#: Tensors of one image's embedding, each with a leading batch dimension of 1. "image" is
#: the main embedding; SAM 2 adds "high_res_0/1", SAM-HQ adds "vit_0..k" (early ViT features).
Embedding = dict[str, torch.Tensor]


@torch.no_grad()
def encode(loaded: LoadedModel, batch: torch.Tensor) -> list[Embedding]:
    """Run the image encoder.

    Args:
        loaded: the model.
        batch: (B, 3, S, S) float32 preprocessed inputs.

    Returns:
        B embeddings, on the CPU, in float32.
    """
    model = loaded.model
    batch = batch.to(loaded.device)
    out: list[Embedding] = []
    if loaded.family == "sam":
        emb = model.get_image_embeddings(batch)
        return [{"image": emb[i : i + 1].float().cpu()} for i in range(len(batch))]
    if loaded.family == "sam-hq":
        emb, inter = model.get_image_embeddings(batch)
        for i in range(len(batch)):
            item = {"image": emb[i : i + 1].float().cpu()}
            item.update({f"vit_{k}": t[i : i + 1].float().cpu() for k, t in enumerate(inter)})
            out.append(item)
        return out
    feats = model.get_image_embeddings(batch)
    for i in range(len(batch)):
        item = {f"high_res_{k}": t[i : i + 1].float().cpu() for k, t in enumerate(feats[:-1])}
        item["image"] = feats[-1][i : i + 1].float().cpu()
        out.append(item)
    return out


@dataclass(frozen=True)
class DecoderPrompts:
    """Prompts for N objects in the model-input frame, all of the same kind.

    Attributes:
        points: (N, P, 2) float (x, y) in model-input pixels, or None. Padding points carry label -10.
        labels: (N, P) int, 1 foreground, 0 background, -10 padding; None with points None.
        boxes: (N, 4) float XYXY in model-input pixels, or None.
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


@torch.no_grad()
def decode(
    loaded: LoadedModel, embedding: Embedding, prompts: DecoderPrompts, *, multimask: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the prompt encoder and mask decoder on a cached embedding.

    Args:
        loaded: the model that produced ``embedding``.
        embedding: one image's embedding from :func:`encode`.
        prompts: N objects' prompts in the model-input frame.
        multimask: return 3 candidate masks per object (else 1).

    Returns:
        Low-resolution mask logits (N, M, S/4, S/4) and predicted IoUs (N, M), float32 on the CPU,
        with M = 3 when ``multimask`` else 1.
    """
    dev = loaded.device
    kwargs: dict[str, object] = {"multimask_output": multimask}
    if prompts.points is not None:
        kwargs["input_points"] = torch.as_tensor(prompts.points, dtype=torch.float32, device=dev)[None]
        kwargs["input_labels"] = torch.as_tensor(prompts.labels, dtype=torch.int64, device=dev)[None]
    if prompts.boxes is not None:
        kwargs["input_boxes"] = torch.as_tensor(prompts.boxes, dtype=torch.float32, device=dev)[None]
    if prompts.mask is not None:
        kwargs["input_masks"] = prompts.mask.to(dev, torch.float32)[None]
    image = embedding["image"].to(dev)
    if loaded.family == "sam":
        out = loaded.model(image_embeddings=image, **kwargs)
    elif loaded.family == "sam-hq":
        inter = [embedding[k].to(dev) for k in sorted(k for k in embedding if k.startswith("vit_"))]
        out = loaded.model(image_embeddings=image, intermediate_embeddings=inter, **kwargs)
    else:
        feats = [embedding[k].to(dev) for k in sorted(k for k in embedding if k.startswith("high_res_"))]
        out = loaded.model(image_embeddings=[*feats, image], **kwargs)
    return out.pred_masks[0].float().cpu(), out.iou_scores[0].float().cpu()
