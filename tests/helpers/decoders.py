"""A stand-in mask decoder whose masks are known exactly, to test the coordinate chain around it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from samadapt.models.loading import LoadedModel
    from samadapt.models.sam import DecoderPrompts, Embedding
    from samadapt.predict.segmenter import Segmenter


class Decode(Protocol):
    """The signature of :func:`samadapt.models.sam.decode`: logits (N, M, S/4, S/4) and IoUs (N, M)."""

    def __call__(
        self, loaded: LoadedModel, embedding: Embedding, prompts: DecoderPrompts, *, multimask: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def box_decoder(seg: Segmenter) -> Decode:
    """A stand-in for ``decode`` that segments exactly its box prompt, in the model-input frame.

    With it, any error in the coordinate chain (map -> pixel -> model input -> low-res mask ->
    original image -> polygon -> map) moves the output polygon away from the prompt. An object
    prompted by points alone gets a square of 24 model pixels around its first point.

    Args:
        seg: the segmenter whose model sets the input size S.

    Returns:
        A function with the signature of :func:`samadapt.models.sam.decode`, giving logits
        (N, M, S/4, S/4) of +10 inside each object's box and -10 outside, and IoUs of 1.
    """
    size = seg.loaded.preprocessing.size
    side = size // 4
    centres = (torch.arange(side) + 0.5) * 4

    def fake(
        loaded: LoadedModel, embedding: Embedding, prompts: DecoderPrompts, *, multimask: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if prompts.boxes is not None:
            boxes = torch.as_tensor(prompts.boxes, dtype=torch.float32)
        elif prompts.points is not None:
            first = torch.as_tensor(prompts.points[:, 0], dtype=torch.float32)
            boxes = torch.cat([first - 12, first + 12], dim=1)
        else:
            raise ValueError("box_decoder needs box or point prompts, got neither")
        inside_x = (centres[None] >= boxes[:, 0:1]) & (centres[None] <= boxes[:, 2:3])
        inside_y = (centres[None] >= boxes[:, 1:2]) & (centres[None] <= boxes[:, 3:4])
        m = inside_y[:, :, None] & inside_x[:, None, :]
        logits = torch.where(m, 10.0, -10.0)[:, None].repeat(1, 3 if multimask else 1, 1, 1)
        return logits, torch.ones(logits.shape[:2])

    return fake
