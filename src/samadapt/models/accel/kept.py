"""Values kept for the decoder: computed from a tensor (an image embedding) and kept while that tensor
lives (:class:`KeptBeside`), or computed from a module's weights and kept while the module lives and its
weights are unchanged (:class:`KeptPerModule`).

The decoder's image-side work (SAM-HQ's image features, the first decoder layer's projections of
the image tokens) depends on the embedding and the weights alone. Kept beside the embedding, the
next prompts on it (a cached embedding in the service, the next click in QGIS) skip that work.
A dictionary keyed by the tensor cannot be used: tensors compare with ``==`` elementwise and
cannot be weakly keyed by value, so entries are keyed by ``id`` and dropped when the tensor goes.
Both are safe to use from several threads (the decoder's runs of prompts, the service's requests): a value
is computed once, under a lock, while the others wait for it.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

T = TypeVar("T")


def _reference(obj: object) -> Callable[[], object]:
    """A weak reference to ``obj``; None is referred to by a function returning None."""
    return (lambda: None) if obj is None else weakref.ref(obj)


class KeptBeside(Generic[T]):
    """Per tensor, the last value computed from it, with the key (versions of the tensor and of the
    weights used) and the other objects it was computed with. A different key or object recomputes."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[tuple[object, ...], tuple[Any, ...], T]] = {}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, tensor: torch.Tensor, key: tuple[object, ...], others: tuple[object, ...],
            compute: Callable[[], T]) -> T:
        """The value kept for ``tensor`` under ``key`` and ``others``, else ``compute()`` kept in its place."""
        with self._lock:
            return self._get(tensor, key, others, compute)

    def _get(self, tensor: torch.Tensor, key: tuple[object, ...], others: tuple[object, ...],
             compute: Callable[[], T]) -> T:
        found = self._entries.get(id(tensor))
        if found is not None and found[0] == key and all(
                ref() is obj for ref, obj in zip(found[1], (tensor, *others), strict=True)):
            return found[2]
        value = compute()
        if found is None:  # the first entry for this tensor: forget it when the tensor goes
            weakref.finalize(tensor, self._entries.pop, id(tensor), None)
        self._entries[id(tensor)] = (key, tuple(_reference(o) for o in (tensor, *others)), value)
        return value


def weights_key(*params: torch.Tensor | None) -> tuple[object, ...]:
    """Identity and version of each parameter (None for a missing one): changes when a weight is replaced
    or updated in place (an optimiser step, ``load_state_dict``)."""
    return tuple((id(p), p._version) if p is not None else None for p in params)


class KeptPerModule(Generic[T]):
    """Per module (weakly referenced), the last value computed for it, with the key it was computed under
    (its weights' :func:`weights_key`, the dtype, ...). A different key recomputes."""

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[object, tuple[tuple[object, ...], T]] = weakref.WeakKeyDictionary()
        self._lock = threading.RLock()

    def get(self, module: object, key: tuple[object, ...], compute: Callable[[], T]) -> T:
        """The value kept for ``module`` under ``key``, else ``compute()`` kept in its place."""
        with self._lock:
            found = self._entries.get(module)
            if found is None or found[0] != key:
                found = (key, compute())
                self._entries[module] = found
            return found[1]
