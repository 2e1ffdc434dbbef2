"""samadapt: adapt Segment Anything to remote-sensing and planetary imagery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from samadapt.errors import SamadaptError

__version__ = "0.1.0"

# Heavy modules (torch, transformers, rasterio) load on first use of a name, not on import.
_LAZY = {
    "Segmenter": "samadapt.segment",
    "SegmentationResult": "samadapt.result",
    "ObjectPrompt": "samadapt.prompts",
    "read_image": "samadapt.imagery.read",
    "GeoImage": "samadapt.imagery.read",
    "load_model": "samadapt.models.loading",
    "EmbeddingCache": "samadapt.cache",
    "AutomaticOptions": "samadapt.automatic",
    "write_segmentation": "samadapt.outputs",
    "Learner": "samadapt.learner",
    "load_adapter": "samadapt.adapter",
    "TrainConfig": "samadapt.training",
    "predict_raster": "samadapt.mapping",
    "MapOptions": "samadapt.mapping",
}

__all__ = ["SamadaptError", "__version__", *_LAZY]

if TYPE_CHECKING:
    from samadapt.automatic import AutomaticOptions
    from samadapt.cache import EmbeddingCache
    from samadapt.imagery.read import GeoImage, read_image
    from samadapt.models.loading import load_model
    from samadapt.outputs import write_segmentation
    from samadapt.prompts import ObjectPrompt
    from samadapt.result import SegmentationResult
    from samadapt.segment import Segmenter
    from samadapt.adapter import load_adapter
    from samadapt.learner import Learner
    from samadapt.training import TrainConfig
    from samadapt.mapping import MapOptions, predict_raster


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'samadapt' has no attribute {name!r}")
