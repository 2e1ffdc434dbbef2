"""Generated training data and the training loop in miniature, for tests of adaptation methods."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from samadapt.methods.base import AdaptationMethod, Batch, Sample


def fit(method: AdaptationMethod, next_batch: Callable[[], Batch], *, steps: int, lr: float) -> list[float]:
    """The training loop's contract in miniature: AdamW on the trainable parameters.

    Args:
        method: the method to train; left in eval mode.
        next_batch: gives each step's batch.
        steps: how many optimiser steps to take.
        lr: AdamW's learning rate.

    Returns:
        The loss of each step.
    """
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=lr)
    method.train()
    losses = []
    for _ in range(steps):
        batch = next_batch()
        loss = method.loss(method(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    method.eval()
    return losses


def shapes_samples(n: int, *, size: int = 128, seed: int = 0, classes: int = 1) -> list[Sample]:
    """Generated training data: bright discs / squares on a textured dark background.

    The task is easy on purpose: a method that learns anything beats the all-background and
    all-foreground baselines by a wide margin.

    Args:
        n: how many samples.
        size: side of each (size, size, 3) uint8 image.
        seed: seed of the generator.
        classes: 1 (class 1 = discs) or 2 (class 1 = discs, class 2 = squares).

    Returns:
        ``n`` samples named ``s000``, ``s001``, ... with every pixel valid.
    """
    from scipy import ndimage

    from samadapt.methods.base import Sample

    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        texture = ndimage.gaussian_filter(rng.normal(size=(size, size)), 2) * 25 + 60
        target = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(size * 0.08, size * 0.18)
            cx, cy = rng.uniform(r, size - r, size=2)
            if classes == 2 and rng.random() < 0.5:
                target[(abs(xx - cx) < r) & (abs(yy - cy) < r)] = 2
            else:
                target[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = 1
        img = texture + (target > 0) * 120 + (target == 2) * 40 + rng.normal(scale=8, size=(size, size))
        pixels = np.repeat(np.clip(img, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
        pixels[:, :, 1] = np.clip(pixels[:, :, 1].astype(int) + 10, 0, 255)
        out.append(Sample(stem=f"s{i:03d}", pixels=pixels, valid=np.ones((size, size), bool), target=target))
    return out


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the block: tiny models train far faster so when other processes
    share the two cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
