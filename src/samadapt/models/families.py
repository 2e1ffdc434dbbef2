"""Typed views of the transformers models samadapt loads, for code below ``loading``.

``nn.Module`` attribute access is typed as ``Tensor | Module``; these casts name the model
classes once. Nothing here imports samadapt, so the encoder runtimes and ``loading`` can both
use it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch

if TYPE_CHECKING:
    from transformers import Sam2Model, SamHQModel, SamModel


def family_model(model: torch.nn.Module) -> SamModel | SamHQModel | Sam2Model:
    """``model`` typed as the transformers model of its family, which every loaded model is."""
    return cast("SamModel | SamHQModel | Sam2Model", model)


def image_encoder_call(model: torch.nn.Module) -> Callable[[torch.Tensor], Any]:
    """``model.get_image_embeddings``: a (B, 3, S, S) input batch to the family's encoder output.

    That output is the (B, C, h, w) embeddings for SAM, (embeddings, early ViT features) for
    SAM-HQ, and SAM 2's feature levels, highest resolution first and the embeddings last.
    """
    return family_model(model).get_image_embeddings
