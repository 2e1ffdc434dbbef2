"""samadapt: adapt Segment Anything to remote-sensing and planetary imagery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from samadapt.errors import SamadaptError

__version__ = "0.1.0"

# Heavy modules (torch, transformers, rasterio) load on first use of a name, not on import.
_LAZY = {
    "Segmenter": "samadapt.predict.segmenter",
    "SegmentationResult": "samadapt.predict.result",
    "ObjectPrompt": "samadapt.prompts.types",
    "read_image": "samadapt.imagery.read",
    "GeoImage": "samadapt.imagery.read",
    "load_model": "samadapt.models.loading",
    "EmbeddingCache": "samadapt.predict.cache",
    "AutomaticOptions": "samadapt.predict.automatic",
    "write_segmentation": "samadapt.mapping.outputs",
    "Learner": "samadapt.train.learner",
    "load_adapter": "samadapt.train.adapter",
    "TrainConfig": "samadapt.train.loop",
    "predict_raster": "samadapt.mapping.tiled",
    "MapOptions": "samadapt.mapping.tiled",
}

__all__ = ["SamadaptError", "__version__", *_LAZY]

if TYPE_CHECKING:
    from samadapt.imagery.read import GeoImage, read_image
    from samadapt.mapping.outputs import write_segmentation
    from samadapt.mapping.tiled import MapOptions, predict_raster
    from samadapt.models.loading import load_model
    from samadapt.predict.automatic import AutomaticOptions
    from samadapt.predict.cache import EmbeddingCache
    from samadapt.predict.result import SegmentationResult
    from samadapt.predict.segmenter import Segmenter
    from samadapt.prompts.types import ObjectPrompt
    from samadapt.train.adapter import load_adapter
    from samadapt.train.learner import Learner
    from samadapt.train.loop import TrainConfig


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'samadapt' has no attribute {name!r}")
