"""Adaptation methods, by name. Modules load on first use (lora pulls in peft).

This module is the one registry of methods: :func:`method_class` finds a method by name,
:func:`build_method` builds it, and :func:`option_rows` / :func:`describe_options` list the
settings it declares (what ``samadapt train --method M --help-options`` prints).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from samadapt.errors import InputError
from samadapt.methods.base import AdaptationMethod, Sample
from samadapt.methods.options import Option
from samadapt.methods.options import option_rows as _rows_of

if TYPE_CHECKING:
    from samadapt.models.loading import LoadedModel

_METHODS = {
    "domain-decoder": ("samadapt.methods.domain_decoder", "DomainDecoder"),
    "lora": ("samadapt.methods.lora", "LoraMethod"),
    "mask-decoder": ("samadapt.methods.mask_decoder", "MaskDecoderMethod"),
    "encoder-adapter": ("samadapt.methods.encoder_adapter", "EncoderAdapterMethod"),
    "unet": ("samadapt.methods.unet", "UNetMethod"),
}
METHOD_NAMES = tuple(_METHODS)


def method_class(name: str) -> type[AdaptationMethod]:
    """The class of a method by its name."""
    if name not in _METHODS:
        raise InputError(f"unknown method {name!r}; use one of {', '.join(METHOD_NAMES)}")
    module, cls = _METHODS[name]
    return getattr(importlib.import_module(module), cls)


def build_method(name: str, base: LoadedModel, **kwargs: Any) -> AdaptationMethod:
    """Build a method around a loaded base model."""
    return method_class(name)(base, **kwargs)


def validate_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """A method's options checked and completed with defaults, without building anything.

    Lets a caller refuse bad ``--option`` pairs before loading a model. Checks that depend
    on the model or on several options together (e.g. mask-decoder's ``erode`` needs
    ``prompt=points``) happen when the method is built.

    Raises:
        InputError: on an unknown method, an option it does not declare, or a bad value.
    """
    return method_class(name).validate_options(options)


def option_rows(name: str) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) of each option of a method, in declaration order.

    The type reads like ``int >= 1``, ``float in [0, 1)``, ``box | point | points`` or
    ``list[int] (3)``; the default is JSON, as ``--option NAME=VALUE`` takes it.

    Raises:
        InputError: on an unknown method.
    """
    return _rows_of(method_class(name).OPTIONS)


def describe_options(name: str) -> str:
    """The options of a method as a plain-text table, for ``samadapt train --method M --help-options``.

    Raises:
        InputError: on an unknown method.
    """
    rows = option_rows(name)
    if not rows:
        return f"{name} takes no options."
    header = ("option", "type", "default", "meaning")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(3)]
    lines = [f"Options of {name} (give each as --option NAME=VALUE; values are JSON):", ""]
    for row in (header, *rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=False)) + "  " + row[3])
    return "\n".join(lines)


__all__ = [
    "METHOD_NAMES",
    "AdaptationMethod",
    "Option",
    "Sample",
    "build_method",
    "describe_options",
    "method_class",
    "option_rows",
    "validate_options",
]
