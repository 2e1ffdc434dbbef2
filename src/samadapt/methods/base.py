"""The interface every adaptation method implements, and the pieces they share.

A method is an ``nn.Module`` built around a loaded SAM-family model (the *base*). Training
and evaluation go through one loop (``samadapt.train.loop``) that only knows this interface:

1. ``make_inputs(sample, train=..., rng=...)`` turns one image (and its mask) into a dict of
   tensors without a batch dimension; the loop stacks them into a batch. Methods with a
   frozen encoder take the image embedding from the embedding cache here, so the encoder
   runs once per image for the whole training.
2. ``forward(batch)`` returns logits (B, C_out, h, w) in the method's output frame (a square
   of the model input, e.g. 256 x 256 for SAM's low-resolution masks).
3. ``loss(logits, batch)`` returns a scalar; ``batch["target"]`` is (B, h, w) long with class
   ids and 255 = ignore (padding included).
4. ``probabilities(logits)`` returns per-class probabilities (B, num_classes, h, w).

Class handling: ``num_classes`` counts background (K + 1). One foreground class (K = 1) uses
one sigmoid channel; more use softmax over K + 1 channels. Outputs are mapped back to the
original image with the same geometry as SAM's own masks (``imagery.preprocess``).

Options: each method declares the settings it accepts in its ``OPTIONS`` mapping (name ->
:class:`~samadapt.methods.options.Option`); the constructor checks them (:meth:`AdaptationMethod.validate_options`), so
an unknown name, a wrong type or a value out of range is an ``InputError`` before anything is
built, and ``config()["options"]`` holds every declared option's value. Training loops call
:meth:`AdaptationMethod.begin_epoch` before each epoch, so a method can train in stages.

Ground truth at test time: outside training (``make_inputs(..., train=False)``) no method reads
a sample's target to build its input; the target only goes into ``"target"``, to be scored.
A prompted method (``mask-decoder``, ``encoder-adapter``) can be told to build its evaluation
prompts from the ground truth instead, with :meth:`AdaptationMethod.use_oracle_prompts`; its
:attr:`AdaptationMethod.oracle` is then True, so that reports can say their scores had
oracle prompts. Methods that take no prompts refuse it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from samadapt.errors import InputError
from samadapt.imagery.preprocess import Geometry, Preprocessing, masks_to_original, resized_shape
from samadapt.imagery.read import from_array
from samadapt.methods._common import segmentation_loss, target_in_frame, trainable_tensors
from samadapt.methods.options import Option, check_flag, unknown_option
from samadapt.models.loading import LoadedModel
from samadapt.predict.embed import Embedder

Batch = dict[str, torch.Tensor]


@dataclass
class Sample:
    """One image of a dataset as the methods see it.

    Attributes:
        stem: the image's name in the dataset.
        pixels: (H, W, C) uint8, C = 3 for RGB-like input, any count with a band adapter.
        valid: (H, W) bool, False where the image has no data.
        target: (H, W) uint8 class ids with 255 = ignore, or None when unlabelled.
    """

    stem: str
    pixels: np.ndarray
    valid: np.ndarray
    target: np.ndarray | None = None


class AdaptationMethod(nn.Module):
    """Base class of the adaptation methods (see the module docstring).

    Args:
        base: the loaded SAM-family model; its weights digest is recorded in artifacts.
        num_classes: classes including background (2 for one foreground class).
        in_channels: bands of the input; != 3 adds a trainable 1x1 band adapter where the
            method runs the encoder.
        options: the method's settings, checked against :attr:`OPTIONS`; after construction
            ``self.options`` holds every declared option (defaults filled in).

    Raises:
        InputError: on too few classes, an option the method does not declare, or an option
            value of the wrong type or out of range.
    """

    name: ClassVar[str] = ""
    #: The side of the square output frame as a fraction of the model input size.
    output_scale: ClassVar[float] = 0.25
    #: Whether the method predicts from prompts (and so can be given oracle prompts).
    takes_prompts: ClassVar[bool] = False
    #: Whether the method predicts one foreground class only (multi-class data: one model per class).
    binary_only: ClassVar[bool] = False
    #: Whether predictions use SAM's weights (False: only its preprocessing, as the U-Net alone).
    uses_sam_weights: ClassVar[bool] = True
    #: The settings the method accepts, by name, in the order ``describe_options`` lists them.
    OPTIONS: ClassVar[Mapping[str, Option]] = {}
    #: The frozen encoder behind the embedding cache (see :attr:`embedder`); None until first used.
    _embedder: Embedder | None = None

    def __init__(self, base: LoadedModel, *, num_classes: int = 2, in_channels: int = 3, **options: Any) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise InputError(f"num_classes counts background and must be an integer of at least 2, got {num_classes!r}")
        self.base = base
        self.num_classes = int(num_classes)
        self.in_channels = in_channels
        self.options: dict[str, Any] = self.validate_options(options)

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check settings against :attr:`OPTIONS` and fill in the defaults.

        An alias (e.g. the name a source document uses) is stored under the declared name;
        given together with its declared name, it wins when the declared one holds the
        default (constructors pass every keyword), else the two must agree.

        Args:
            options: name -> value, e.g. the CLI's ``--option`` pairs (JSON-decoded).

        Returns:
            Every declared option, in declaration order, with plain JSON-able values.

        Raises:
            InputError: on a name the method does not declare (the message lists those it
                does), or a value of the wrong type or out of range.
        """
        by_alias = {alias: name for name, opt in cls.OPTIONS.items() for alias in opt.aliases}
        given: dict[str, Any] = {}
        aliased: dict[str, tuple[str, Any]] = {}
        for key, value in options.items():
            if key in cls.OPTIONS:
                given[key] = value
            elif key in by_alias:
                aliased[by_alias[key]] = (key, value)
            else:
                raise InputError(unknown_option(cls.name, cls.OPTIONS, key))
        for name, (alias, value) in aliased.items():
            declared = given.get(name, cls.OPTIONS[name].default)
            if declared != cls.OPTIONS[name].default and declared != value:
                raise InputError(
                    f"{cls.name} options {name}={declared!r} and {alias}={value!r} set the same thing; give only {name}"
                )
            given[name] = value
        return {name: opt.check(cls.name, name, given.get(name, opt.default)) for name, opt in cls.OPTIONS.items()}

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the training loop before each epoch; a no-op unless the method trains in stages.

        Args:
            epoch: the epoch about to run, counted from 0.
            epochs: the number of epochs of the whole run.
        """

    def selection_start(self, epochs: int) -> int:
        """The first epoch (from 0) whose weights may be kept as the best, and from which patience counts.

        0 for methods that train in one stage. A method that trains in stages returns the
        first epoch of its last stage: before it, the output it predicts with is not trained
        yet, so a validation score there says nothing about the final model.

        Args:
            epochs: the number of epochs of the whole run.
        """
        return 0

    # --- ground truth at test time ----------------------------------------------------------
    def use_oracle_prompts(self, on: bool) -> None:
        """Build evaluation prompts from the ground truth being scored (True) or not (False).

        Prompted methods override this; here, for methods that take no prompts, False is a
        no-op and True is refused.

        Args:
            on: True to let ``make_inputs(..., train=False)`` read the sample's target to
                place its prompts (an oracle: the scores then flatter the method); False for
                prompts a user would have at test time.

        Raises:
            InputError: if ``on`` is not a bool, or is True for a method that takes no prompts.
        """
        if check_flag(on, "use_oracle_prompts"):
            raise InputError(
                f"{self.name} takes no prompts, so it has no oracle prompts to build from the ground truth; "
                "oracle prompts apply to mask-decoder and encoder-adapter"
            )

    @property
    def oracle(self) -> bool:
        """True when evaluation prompts come from the ground truth being scored (always False here)."""
        return False

    # --- what subclasses implement -------------------------------------------------------
    def make_inputs(self, sample: Sample, *, train: bool, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Tensors of one sample (no batch dimension), including "target" when labelled."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> torch.Tensor:  # noqa: D102 - see module docstring
        raise NotImplementedError

    # --- shared behaviour ------------------------------------------------------------------
    def embedding(self, sample: Sample) -> dict[str, torch.Tensor]:
        """The frozen encoder's embedding of a 3-band sample, through the embedding cache.

        The cache (``$SAMADAPT_HOME/embeddings``) makes every epoch after the first, and every
        later run on the same images, skip the encoder.
        """
        if sample.pixels.shape[2] != 3:
            raise InputError(
                f"{self.name} uses cached embeddings of 3-band images; {sample.stem} has {sample.pixels.shape[2]} "
                "bands (choose 3 with --bands, or use the lora method, which trains a band adapter)"
            )
        # Sample.pixels is (H, W, C): said here, as a guess cannot tell a 1 x 5 strip from 1 band of 5 x 3 pixels.
        return self.embedder.embed(from_array(sample.pixels, channel_axis="last")).embedding

    @property
    def embedder(self) -> Embedder:
        """The frozen encoder and the embedding cache it runs through; made on first use.

        The cache is the method's ``cache`` attribute when set (an ``EmbeddingCache``, or False
        for memory only), else the default store under ``$SAMADAPT_HOME``.
        """
        if self._embedder is None:
            self._embedder = Embedder(self.base, cache=getattr(self, "cache", True))
        return self._embedder

    @property
    def out_channels(self) -> int:
        """1 sigmoid channel for one foreground class, else one softmax channel per class."""
        return 1 if self.num_classes == 2 else self.num_classes

    @property
    def preprocessing(self) -> Preprocessing:
        """The base model's preprocessing."""
        return self.base.preprocessing

    @property
    def output_side(self) -> int:
        """Side of the square output frame in pixels."""
        return int(self.preprocessing.size * self.output_scale)

    def config(self) -> dict[str, Any]:
        """JSON-able settings that rebuild this method around the same base model."""
        return {"method": self.name, "num_classes": self.num_classes, "in_channels": self.in_channels,
                "options": self.options}

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Dice + binary / multi-class cross-entropy, ignoring 255 pixels (padding included)."""
        return segmentation_loss(logits, batch["target"], self.num_classes)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, num_classes, h, w) class probabilities from logits."""
        if self.out_channels == 1:
            p = torch.sigmoid(logits)
            return torch.cat([1 - p, p], dim=1)
        return torch.softmax(logits, dim=1)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changes (what an adapter stores): see :func:`trainable_tensors`."""
        return trainable_tensors(self)

    def geometry_of(self, height: int, width: int) -> Geometry:
        """The preprocessing geometry of an image of this size."""
        return Geometry((height, width), resized_shape(height, width, self.preprocessing))

    def target_tensor(self, target: np.ndarray, geometry: Geometry) -> torch.Tensor:
        """The target mask in the output frame, (side, side) long, padding and ignore = 255."""
        return target_in_frame(target, geometry, self.preprocessing, self.output_side)

    def to_original(self, probs: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """(C, side, side) probabilities in the output frame -> (C, H, W) at the original size."""
        return masks_to_original(probs, geometry, self.preprocessing)


__all__ = [
    "AdaptationMethod",
    "Batch",
    "Option",
    "Sample",
    "check_flag",
    "segmentation_loss",
    "target_in_frame",
    "trainable_tensors",
]
