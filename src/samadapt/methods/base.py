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
:class:`Option`); the constructor checks them (:meth:`AdaptationMethod.validate_options`), so
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

import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samadapt.errors import InputError
from samadapt.imagery.preprocess import Geometry, Preprocessing, masks_to_original, resized_shape
from samadapt.models.loading import LoadedModel

IGNORE = 255
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


@dataclass(frozen=True)
class Option:
    """One setting a method accepts, as a constructor keyword or the CLI's ``--option NAME=VALUE``.

    Attributes:
        type: ``bool``, ``int``, ``float``, ``str`` or ``list``.
        default: the value when the option is not given; None means the method works it out
            (``help`` says how), and then None may also be given explicitly.
        help: one line saying what the option changes.
        choices: the allowed values of a ``str`` option (empty: any string).
        low: smallest allowed number (None: no bound); ``low_open`` excludes it.
        high: largest allowed number (None: no bound); ``high_open`` excludes it.
        low_open: the bound ``low`` itself is not allowed.
        high_open: the bound ``high`` itself is not allowed.
        item: the type of a list's items, ``int`` or ``str``; a single ``str`` stands for a
            list of one.
        length: the exact length of a list (None: any length of at least 1).
        aliases: other names accepted for the option (e.g. the name a source document uses).
    """

    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    item: type | None = None
    length: int | None = None
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.type not in (bool, int, float, str, list):
            raise InputError(f"an option's type must be bool, int, float, str or list, got {self.type!r}")
        if self.type is list and self.item not in (int, str):
            raise InputError(f"a list option's item type must be int or str, got {self.item!r}")

    @property
    def nullable(self) -> bool:
        """Whether None is allowed (options whose default is None)."""
        return self.default is None

    def _bounds(self) -> str:
        """The numeric range in words, e.g. ``" >= 0"``, ``" in (0, 1]"``; empty without bounds."""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f" in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f" {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f" {'<' if self.high_open else '<='} {_num(self.high)}"
        return ""

    def allowed(self) -> str:
        """What values are allowed, in words (the end of an error message)."""
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        elif self.type is bool:
            text = "true or false"
        elif self.type is int:
            if self.low is not None and self.high is None and not self.low_open:
                text = f"an integer of at least {_num(self.low)}"
            else:
                text = "an integer" + self._bounds()
        elif self.type is float:
            text = "a finite number" + self._bounds()
        elif self.type is str:
            text = "a string"
        else:
            noun = "integers" if self.item is int else "names"
            size = f"{self.length} " if self.length else ""
            text = f"a list of {size}{noun}" + (" (or one name)" if self.item is str else "")
        return text + (" or null" if self.nullable else "")

    def type_label(self) -> str:
        """A short type for a table of options, e.g. ``int >= 1``, ``box | point``, ``list[int] (3)``."""
        if self.choices:
            return " | ".join(self.choices)
        if self.type is list:
            item_name = self.item.__name__ if self.item else "str"
            label = f"list[{item_name}]" + (f" ({self.length})" if self.length else "")
        else:
            label = self.type.__name__ + self._bounds()
        return label + (" or null" if self.nullable else "")

    def check(self, method: str, name: str, value: Any) -> Any:
        """The value normalised to a plain JSON-able type.

        Args:
            method: the method's name, for the message.
            name: the option's name, for the message.
            value: the value given.

        Raises:
            InputError: if the value has the wrong type or lies outside the allowed values.
        """
        if value is None and self.nullable:
            return None
        out = self._normalise(value)
        if out is None:
            raise InputError(f"{method} option {name} must be {self.allowed()}, got {value!r}")
        return out

    def _normalise(self, value: Any) -> Any:
        """The normalised value, or None when it is not allowed."""
        if self.type is bool:
            return bool(value) if isinstance(value, (bool, np.bool_)) else None
        if self.type is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                return None
            return value
        if self.type is list:
            items = [value] if isinstance(value, str) and self.item is str else value
            if not isinstance(items, (list, tuple)) or not items or (self.length and len(items) != self.length):
                return None
            out = [self._item(v) for v in items]
            return None if any(v is None for v in out) else out
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            return None
        if self.type is int:
            if not isinstance(value, (int, np.integer)):
                return None
            number: int | float = int(value)
        else:
            number = float(value)
            if not math.isfinite(number):
                return None
        return number if self._in_range(number) else None

    def _item(self, value: Any) -> Any:
        if self.item is str:
            return value if isinstance(value, str) and value else None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            return None
        return int(value) if self._in_range(int(value)) else None

    def _in_range(self, number: float) -> bool:
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            return False
        if self.high is not None and (number >= self.high if self.high_open else number > self.high):
            return False
        return True


def _num(x: float) -> str:
    """A bound as written in a message: 1 rather than 1.0."""
    return str(int(x)) if float(x).is_integer() else str(x)


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
                raise InputError(_unknown_option(cls, key))
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
        from samadapt.imagery.read import from_array

        # Sample.pixels is (H, W, C): said here, as a guess cannot tell a 1 x 5 strip from 1 band of 5 x 3 pixels.
        return self.segmenter.embed(from_array(sample.pixels, channel_axis="last")).embedding

    @property
    def segmenter(self) -> Any:
        """The Segmenter, and so the embedding cache, the frozen encoder runs through; made on first use."""
        if getattr(self, "_segmenter", None) is None:
            from samadapt.predict.segmenter import Segmenter

            object.__setattr__(self, "_segmenter", Segmenter(self.base, cache=getattr(self, "cache", True)))
        return self._segmenter  # type: ignore[attr-defined]

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


def check_flag(value: Any, what: str) -> bool:
    """``value`` as a plain bool, for switches such as :meth:`AdaptationMethod.use_oracle_prompts`.

    Raises:
        InputError: if ``value`` is not a bool (numpy bools are accepted).
    """
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{what} takes True or False, got {value!r}")
    return bool(value)


def _unknown_option(cls: type[AdaptationMethod], key: str) -> str:
    """The message for an option name the method does not declare."""
    names = list(cls.OPTIONS)
    close = difflib.get_close_matches(key, names + [a for o in cls.OPTIONS.values() for a in o.aliases], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    accepted = ", ".join(names) if names else "none"
    return f"{cls.name} has no option {key!r}{hint}; its options are: {accepted}"


def option_rows(cls: type[AdaptationMethod]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) of every option a method class declares, in declaration order.

    The default is written as ``--option`` takes it: strings bare, everything else JSON
    (``true``, ``null``, ``[0, 1, 2]``); aliases are named at the end of the help.
    """
    rows = []
    for name, opt in cls.OPTIONS.items():
        text = opt.help + (f"; also accepted as {', '.join(opt.aliases)}" if opt.aliases else "")
        default = opt.default if isinstance(opt.default, str) else json.dumps(opt.default)
        rows.append((name, opt.type_label(), default, text))
    return rows


def trainable_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters plus the buffers of every module that owns one (batch-norm statistics).

    Without the running means and variances a reloaded model would predict differently in
    eval mode.
    """
    keep = {n for n, p in module.named_parameters() if p.requires_grad}
    for prefix, sub in module.named_modules():
        if any(p.requires_grad for p in sub.parameters(recurse=False)):
            keep.update(f"{prefix}.{n}" if prefix else n for n, _ in sub.named_buffers(recurse=False))
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items() if k in keep}


def freeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad = False`` on every parameter and return the module."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def target_in_frame(target: np.ndarray, geometry: Geometry, spec: Preprocessing, side: int) -> torch.Tensor:
    """Map an (H, W) label mask into a square output frame of ``side`` pixels.

    The mask is resized (nearest) as the image is, padded with 255 where the image is
    padded, and brought to ``side`` x ``side`` (nearest), so target pixels line up with the
    model's output.
    """
    t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.uint8)).float()[None, None]
    new_h, new_w = geometry.resized_hw
    t = F.interpolate(t, (new_h, new_w), mode="nearest")
    t = F.pad(t, (0, spec.size - new_w, 0, spec.size - new_h), value=IGNORE)
    t = F.interpolate(t, (side, side), mode="nearest")
    return t[0, 0].long()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice + cross-entropy over non-ignored pixels.

    Args:
        logits: (B, 1, h, w) for one foreground class, else (B, num_classes, h, w).
        target: (B, h, w) long class ids, 255 = ignore.
        num_classes: classes including background.
    """
    valid = target != IGNORE
    if not valid.any():
        return logits.sum() * 0.0
    if logits.shape[1] == 1:
        x = logits[:, 0][valid]
        y = (target[valid] > 0).float()
        bce = F.binary_cross_entropy_with_logits(x, y)
        p = torch.sigmoid(x)
        dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        return bce + dice
    safe = torch.where(valid, target, torch.zeros_like(target))
    ce = F.cross_entropy(logits, safe, reduction="none")[valid].mean()
    probs = torch.softmax(logits, dim=1).permute(0, 2, 3, 1)[valid]  # (N, C)
    onehot = F.one_hot(safe[valid], num_classes).float()
    inter = (probs * onehot).sum(0)
    dice = 1 - ((2 * inter + 1) / (probs.sum(0) + onehot.sum(0) + 1)).mean()
    return ce + dice


class BandAdapter(nn.Module):
    """A trainable 1x1 convolution from any number of bands to the encoder's 3 channels.

    Initialised to pass ``rgb`` (indices into the input bands) straight through, so before
    training the model sees exactly the chosen RGB-like bands; the other bands start with
    zero weight and training can bring them in.
    """

    def __init__(self, in_channels: int, rgb: tuple[int, int, int] = (0, 1, 2)) -> None:
        super().__init__()
        if any(not 0 <= i < in_channels for i in rgb):
            raise InputError(f"rgb band indices {rgb} must lie in 0..{in_channels - 1}")
        self.conv = nn.Conv2d(in_channels, 3, kernel_size=1, bias=True)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            for out, i in enumerate(rgb):
                self.conv.weight[out, i, 0, 0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) 0-255 values -> (B, 3, H, W) 0-255 values."""
        return self.conv(x)


def raw_input(pixels: np.ndarray, spec: Preprocessing) -> tuple[torch.Tensor, Geometry]:
    """Resize (H, W, C) uint8 pixels like SAM's preprocessing, without normalising.

    Returns:
        (C, size, size) float 0-255 values, zero-padded bottom-right, and the geometry.
    """
    from samadapt.imagery.preprocess import resize_to_model

    x, geometry = resize_to_model(pixels, spec)
    new_h, new_w = geometry.resized_hw
    return F.pad(x, (0, spec.size - new_w, 0, spec.size - new_h)), geometry


def normalise(raw: torch.Tensor, geometry_hw: torch.Tensor | None, spec: Preprocessing) -> torch.Tensor:
    """ImageNet-normalise (B, 3, S, S) 0-255 values and zero the padding (as SAM's preprocessing)."""
    mean = torch.tensor(spec.mean, device=raw.device, dtype=raw.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=raw.device, dtype=raw.dtype).view(1, 3, 1, 1)
    x = (raw - mean) / std
    if geometry_hw is not None:
        rows = torch.arange(raw.shape[-2], device=raw.device)
        cols = torch.arange(raw.shape[-1], device=raw.device)
        inside = (rows[None, :, None] < geometry_hw[:, 0, None, None]) & (cols[None, None, :] < geometry_hw[:, 1, None, None])
        x = x * inside[:, None].to(x.dtype)
    return x
