"""What mask-decoder's ``forward`` returns: candidate logits and predicted IoUs in one tensor.

See :mod:`samadapt.methods.mask_decoder` for the layout; :func:`pack_output` builds it and
:func:`split_output` unpacks it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from samadapt.errors import InputError

MultimaskMode = Literal["best", "mean", "single"]
"""``best``: the candidate of lowest loss in training, of highest predicted IoU at prediction;
``mean``: the mean of SAM's 3 candidates; ``single``: the decoder's one mask."""

#: Logit given to padding objects, so that their probability is exactly 0.
OFF_LOGIT = -1.0e4
#: Batch key of the evaluation grid's points; its presence marks a grid batch.
GRID_POINTS = "grid_points"
#: Batch key of the grid points' on/off flags.
GRID_VALID = "grid_valid"
#: Smallest logit a grid batch's loss sees: a pixel no kept mask covers (-1e4) counts as -20.
GRID_LOSS_FLOOR = -20.0


def pack_output(masks: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
    """Pack (B, N, M, h, w) logits and (B, N, M) predicted IoUs into (B, N, M + 1, h, w).

    Raises:
        InputError: if the mask is narrower than M pixels (no room for the IoUs).
    """
    b, n, m, h, w = masks.shape
    if w < m:
        raise InputError(f"cannot pack {m} IoUs into masks {w} pixels wide")
    plane = F.pad(iou.to(masks.dtype), (0, w - m))[:, :, None, None, :]  # (B, N, 1, 1, w)
    plane = F.pad(plane, (0, 0, 0, h - 1))  # (B, N, 1, h, w)
    return torch.cat([masks, plane], dim=2)


def split_output(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack :func:`pack_output`: (B, N, M, h, w) logits and (B, N, M) predicted IoUs.

    Raises:
        InputError: if the tensor is not 5-D with at least 2 planes per object.
    """
    if output.ndim != 5 or output.shape[2] < 2:
        raise InputError(f"expected mask-decoder output (B, N, M + 1, h, w), got shape {tuple(output.shape)}")
    m = output.shape[2] - 1
    return output[:, :, :m], output[:, :, m, 0, :m]
