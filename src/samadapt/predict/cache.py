"""Content-addressed embedding store: on disk under ``$SAMADAPT_HOME``, with an LRU in memory.

The key covers the model (family and weights digest), the preprocessing and the pixels, so
a changed image, model or preprocessing can never return a stale embedding. Entries are
safetensors files written to a temporary name and renamed; each carries a digest of its
tensors, so a truncated or corrupted file is detected, deleted and recomputed, never
returned. The disk store is bounded in bytes and evicts the least recently used entries
(reads refresh an entry's modification time).
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from cachetools import LRUCache
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from samadapt._home import embeddings_dir
from samadapt._io import atomic_file
from samadapt.errors import InputError

Embedding = dict[str, torch.Tensor]

DEFAULT_MAX_BYTES = 4 * 1024**3
DEFAULT_MEMORY_ITEMS = 8


def embedding_key(model_id: str, preprocessing_key: str, pixels: np.ndarray) -> str:
    """The cache key of an image's embedding.

    Args:
        model_id: family and weights digest of the model (``LoadedModel.model_id``).
        preprocessing_key: ``Preprocessing.key()`` of the model's preprocessing.
        pixels: the (H, W, 3) uint8 image the model sees.

    Returns:
        A 64-character hex sha256.
    """
    h = hashlib.sha256()
    h.update(f"{model_id}|{preprocessing_key}|{pixels.shape}|{pixels.dtype}|".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def _tensors_digest(tensors: Embedding, key: str) -> str:
    """sha256 over the key and every tensor: an entry copied under another key does not verify."""
    h = hashlib.sha256(f"{key}|".encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def cache_max_bytes() -> int:
    """The bound of the on-disk embedding cache: ``$SAMADAPT_CACHE_MAX_BYTES`` (a byte count, or
    with a K, M or G suffix, e.g. ``20G``), else 4 GiB.

    Raises:
        InputError: the variable is not a positive size.
    """
    raw = os.environ.get("SAMADAPT_CACHE_MAX_BYTES", "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    number, unit = (raw[:-1], units[raw[-1].upper()]) if raw[-1].upper() in units else (raw, 1)
    try:
        value = int(float(number) * unit)
    except ValueError:
        value = 0
    if value <= 0:
        raise InputError(f"SAMADAPT_CACHE_MAX_BYTES={raw!r} is not a size; give bytes or a number with K, M or G, "
                         "e.g. 20G")
    return value


class EmbeddingCache:
    """A bounded on-disk embedding store with an in-memory LRU in front.

    Args:
        root: folder of the store; default ``$SAMADAPT_HOME/embeddings``.
        max_bytes: bound on the store's size on disk; least recently used entries go first.
        memory_items: how many embeddings the in-memory LRU keeps (0 disables it).
        persist: False keeps entries in memory only (nothing is written to disk).

    Attributes:
        hits, misses: counters of :meth:`get_or_compute` outcomes, for reports and tests.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        max_bytes: int | None = None,
        memory_items: int = DEFAULT_MEMORY_ITEMS,
        persist: bool = True,
    ) -> None:
        self.root = Path(root) if root is not None else embeddings_dir()
        self.max_bytes = max_bytes if max_bytes is not None else cache_max_bytes()
        self.memory_items = memory_items
        self.persist = persist
        self._memory: LRUCache[str, Embedding] = LRUCache(maxsize=max(0, memory_items))
        self._lock = threading.Lock()  # cachetools caches are not thread-safe
        self.write_failures = 0  # entries the disk store could not take (one warning for all of them)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        """File of an entry: two-level fan-out keeps folders small."""
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> Embedding | None:
        """Return a stored embedding, or None when absent or damaged (a damaged file is deleted)."""
        with self._lock:
            found = self._memory.get(key)  # a hit refreshes the entry
        if found is not None:
            return found
        path = self.path(key)
        if not self.persist or not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError):
            tensors, meta = None, {}
        if tensors is None or meta.get("key") != key or _tensors_digest(tensors, key) != meta.get("sha256"):
            try:
                path.unlink(missing_ok=True)  # damaged, or another image's entry under this name
            except OSError:
                pass
            return None
        try:
            os.utime(path)
        except OSError:
            pass
        self._remember(key, tensors)
        return tensors

    def put(self, key: str, tensors: Embedding) -> None:
        """Store an embedding atomically, then evict old entries beyond ``max_bytes``."""
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        if not self.persist:
            self._remember(key, tensors)
            return
        path = self.path(key)
        try:
            with atomic_file(path) as tmp:  # safetensors' own error for a full disk comes out as an OSError
                save_file(tensors, str(tmp), metadata={"sha256": _tensors_digest(tensors, key), "key": key})
        except OSError as exc:  # full, read-only, or an entry replaced by a folder: the cache is only a speed-up
            if not self.write_failures:
                warnings.warn(f"the embedding cache in {self.root} cannot be written ({exc.strerror or exc}); "
                              "embeddings are computed without it", stacklevel=2)
            self.write_failures += 1
            for folder in (path.parent, self.root):  # leave no empty folders behind
                try:
                    folder.rmdir()
                except OSError:
                    break
        self._remember(key, tensors)
        try:
            self.evict()
        except OSError:
            pass

    def get_or_compute(self, key: str, compute: Callable[[], Embedding]) -> Embedding:
        """Return the stored embedding for ``key``, computing and storing it on a miss."""
        found = self.get(key)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        tensors = compute()
        self.put(key, tensors)
        return tensors

    def _remember(self, key: str, tensors: Embedding) -> None:
        if self.memory_items <= 0:
            return
        with self._lock:
            self._memory[key] = tensors  # evicts the least recently used entry beyond memory_items

    def entries(self) -> list[Path]:
        """Entry files on disk, oldest use first."""
        if not self.root.is_dir():
            return []
        files = [p for p in self.root.glob("*/*.safetensors") if p.is_file() and not p.name.startswith(".")]
        return sorted(files, key=lambda p: p.stat().st_mtime_ns)

    def size_bytes(self) -> int:
        """Total size of the entries on disk."""
        return sum(p.stat().st_size for p in self.entries())

    def evict(self) -> int:
        """Delete least recently used entries until the store fits ``max_bytes``; return how many."""
        files = self.entries()
        total = sum(p.stat().st_size for p in files)
        removed = 0
        for p in files:
            if total <= self.max_bytes:
                break
            size = p.stat().st_size
            p.unlink(missing_ok=True)
            with self._lock:
                self._memory.pop(p.stem, None)
            total -= size
            removed += 1
        return removed

    def clear(self) -> None:
        """Delete every entry, on disk and in memory."""
        for p in self.entries():
            p.unlink(missing_ok=True)
        with self._lock:
            self._memory.clear()
