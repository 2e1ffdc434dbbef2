"""Adaptation methods, by name. Modules load on first use (lora pulls in peft)."""

from __future__ import annotations

import importlib
from typing import Any

from samadapt.errors import InputError
from samadapt.methods.base import AdaptationMethod, Sample

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


def build_method(name: str, base: Any, **kwargs: Any) -> AdaptationMethod:
    """Build a method around a loaded base model."""
    return method_class(name)(base, **kwargs)


__all__ = ["METHOD_NAMES", "AdaptationMethod", "Sample", "build_method", "method_class"]
