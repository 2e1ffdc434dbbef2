"""The frozen image encoder behind the embedding cache: the one way images become embeddings.

An :class:`Embedder` reads an image, keys it (:func:`samadapt.predict.cache.embedding_key`:
model, preprocessing and pixels), and runs the encoder only when the cache has no entry.
The :class:`~samadapt.predict.segmenter.Segmenter` is an Embedder that also decodes prompts;
the adaptation methods with a frozen encoder use a plain Embedder, as they decode themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from samadapt.errors import InputError
from samadapt.imagery.preprocess import Geometry, prepare
from samadapt.imagery.read import GeoImage, from_array, read_image
from samadapt.models.loading import LoadedModel
from samadapt.models.sam import Embedding, encode
from samadapt.predict.cache import EmbeddingCache, embedding_key

ImageLike = GeoImage | np.ndarray | str | os.PathLike[str]
"""An image as the embedders take it: a GeoImage, an (H, W, 3) array or a raster path."""


@dataclass
class Embedded:
    """An image with its embedding and the geometry linking it to the model input."""

    image: GeoImage
    embedding: Embedding
    geometry: Geometry
    from_cache: bool


def as_geoimage(image: ImageLike) -> GeoImage:
    """Accept a GeoImage, a numpy array or a path and return a GeoImage."""
    if isinstance(image, GeoImage):
        return image
    if isinstance(image, np.ndarray):
        return from_array(image)
    return read_image(Path(image))


def open_cache(cache: EmbeddingCache | bool) -> EmbeddingCache:
    """The embedding cache an embedder uses.

    Args:
        cache: an EmbeddingCache (used as it is), True for the default store under
            ``$SAMADAPT_HOME`` (with the last 8 embeddings in memory), or False for an
            in-memory cache of the last 4 only.
    """
    if isinstance(cache, EmbeddingCache):
        return cache
    return EmbeddingCache(persist=cache, memory_items=8 if cache else 4)


class Embedder:
    """Embeddings of images through a model's image encoder and an embedding cache.

    Args:
        model: the loaded model; None only for a subclass that loads it on first use and
            overrides :attr:`loaded` (the Segmenter).
        cache: see :func:`open_cache`.

    Attributes:
        cache: the embedding cache.
        encoder_calls: how many images went through the encoder (cache misses).
    """

    def __init__(self, model: LoadedModel | None, *, cache: EmbeddingCache | bool = True) -> None:
        self._loaded = model
        self.cache = open_cache(cache)
        self.encoder_calls = 0

    @property
    def loaded(self) -> LoadedModel:
        """The model whose encoder runs."""
        if self._loaded is None:
            raise InputError("this embedder has no model; give it a LoadedModel (samadapt.models.loading.load_model)")
        return self._loaded

    def embed(self, image: ImageLike) -> Embedded:
        """Return the image's embedding, from the cache when it is there."""
        key, geo, tensor, geometry = self._prepared(image)
        misses = self.cache.misses
        emb = self.cache.get_or_compute(key, lambda: self._encode([tensor])[0])
        return Embedded(geo, emb, geometry, from_cache=self.cache.misses == misses)

    def _prepared(self, image: ImageLike) -> tuple[str, GeoImage, torch.Tensor, Geometry]:
        """Cache key, image, model input and geometry of an image."""
        geo = as_geoimage(image)
        spec = self.loaded.preprocessing
        tensor, geometry = prepare(geo.pixels, spec)
        return embedding_key(self.loaded.model_id, spec.key(), geo.pixels), geo, tensor, geometry

    def _encode(self, tensors: list[torch.Tensor]) -> list[Embedding]:
        self.encoder_calls += len(tensors)
        return encode(self.loaded, torch.stack(tensors))

    def embed_many(self, images: Iterable[ImageLike], *, batch_size: int = 1) -> Iterable[Embedded]:
        """Embed several images, running the encoder on batches of cache misses."""
        pending: list[tuple[str, GeoImage, torch.Tensor, Geometry]] = []
        for image in images:
            key, geo, tensor, geometry = self._prepared(image)
            found = self.cache.get(key)
            if found is not None:
                self.cache.hits += 1
                yield Embedded(geo, found, geometry, from_cache=True)
                continue
            pending.append((key, geo, tensor, geometry))
            if len(pending) >= batch_size:
                yield from self._flush(pending)
                pending = []
        if pending:
            yield from self._flush(pending)

    def _flush(self, pending: list[tuple[str, GeoImage, torch.Tensor, Geometry]]) -> Iterable[Embedded]:
        self.cache.misses += len(pending)
        embs = self._encode([p[2] for p in pending])
        for (key, geo, _, geometry), emb in zip(pending, embs, strict=False):
            self.cache.put(key, emb)
            yield Embedded(geo, emb, geometry, from_cache=False)
