"""Where tiles start along one axis of a raster, for building datasets and for mapping."""

from __future__ import annotations


def tile_offsets(length: int, tile_size: int, overlap: int) -> list[int]:
    """Start offsets of tiles along one axis: a step of ``tile_size - overlap``, last tile at the edge.

    The last tile starts where the previous step lands and is cut short by the edge (it is
    not shifted back to be full size), so no pixel is read twice unless ``overlap`` asks.
    """
    step = tile_size - overlap
    starts = [0]
    while starts[-1] + tile_size < length:
        starts.append(starts[-1] + step)
    return starts


def covering_offsets(length: int, tile_size: int, overlap: int) -> list[int]:
    """Tile starts along one axis for mapping: as :func:`tile_offsets`, but the last tile is shifted
    back to end at the edge when the axis is at least one tile long, so every tile is full size."""
    starts = tile_offsets(length, tile_size, overlap)
    if length >= tile_size:
        starts[-1] = length - tile_size
    return sorted(set(starts))
