"""The image encoder through ONNX Runtime: exported once per weights and input size, then cached.

The export lives under ``$SAMADAPT_HOME/onnx/<family>-<weights sha>-<size>px-torch<version>/``
and is written to a temporary folder renamed into place, so a crash or a concurrent process
never leaves a half-written model behind; later loads reuse it without exporting again.
ONNX Runtime is an optional dependency (``pip install samadapt[onnx]``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from samadapt._home import samadapt_home
from samadapt._io import atomic_dir
from samadapt.errors import MissingDependencyError
from samadapt.models.families import image_encoder_call

if TYPE_CHECKING:
    from samadapt.models.loading import LoadedModel

OPSET = 18
MODEL_FILE = "encoder.onnx"


def onnx_dir(loaded: LoadedModel) -> Path:
    """Cache folder of a model's exported encoder (keyed by weights digest and input size)."""
    version = torch.__version__.split("+")[0]
    name = f"{loaded.family}-{loaded.weights_sha256[:16]}-{loaded.preprocessing.size}px-torch{version}"
    return samadapt_home() / "onnx" / name


class _Encoder(torch.nn.Module):
    """``get_image_embeddings`` with its outputs flattened to a tuple of tensors."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = image_encoder_call(self.model)(pixels)
        if isinstance(out, torch.Tensor):
            return (out,)
        flat: list[torch.Tensor] = []
        for item in out:
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        return tuple(flat)


def export_encoder(loaded: LoadedModel) -> Path:
    """Export the encoder of ``loaded`` to ONNX unless already cached; returns the .onnx path."""
    folder = onnx_dir(loaded)
    path = folder / MODEL_FILE
    if path.is_file():
        return path
    size = loaded.preprocessing.size
    example = torch.zeros(1, 3, size, size, device=loaded.device)
    with (atomic_dir(folder, overwrite=True, kind="ONNX export", owned=lambda _: True) as tmp, torch.no_grad(),
          warnings.catch_warnings()):
        warnings.simplefilter("ignore")  # tracer warnings about Python scalars in transformers' code
        torch.onnx.export(_Encoder(loaded.model).eval(), (example,), str(tmp / MODEL_FILE), dynamo=False,
                          opset_version=OPSET, input_names=["pixels"], do_constant_folding=True)
    return path


def onnx_encoder_call(loaded: LoadedModel, threads: int | None = None) -> Callable[[torch.Tensor], Any]:
    """A drop-in for ``loaded.model.get_image_embeddings`` that runs the cached ONNX export.

    Images of a batch go through the session one at a time (the export has batch size 1).

    Raises:
        MissingDependencyError: onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError(
            "the onnx runtime needs onnxruntime; install it with `pip install samadapt[onnx]`"
        ) from None
    path = export_encoder(loaded)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only; shape-merge warnings of the export are harmless
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    family = loaded.family

    def call(batch: torch.Tensor) -> Any:
        per_image = [session.run(None, {"pixels": batch[i : i + 1].cpu().numpy().astype(np.float32)})
                     for i in range(len(batch))]
        outs = [torch.from_numpy(np.concatenate(parts, axis=0)) for parts in zip(*per_image, strict=False)]
        if family == "sam":
            return outs[0]
        if family == "sam-hq":
            return outs[0], outs[1:]
        return outs

    return call
