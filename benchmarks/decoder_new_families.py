"""EdgeTAM's and SAM 3's prompt decoding: samadapt's batched pass against transformers' forward one object at a time.

Both decoders are SAM 2's (256 channels, 8 heads); EdgeTAM reads a 64 x 64 embedding (1024 px input),
SAM 3's tracker a 72 x 72 one (1008 px, patch 14). Random weights with the published sizes:
``samadapt.models.edgetam.build_edgetam(published_config())`` and a ``Sam3TrackerModel`` of transformers'
default tracker config (the published one's prompt encoder and mask decoder) built with a tiny vision
encoder, which decoding never runs (the 3.4 GB SAM 3 checkpoint is not needed to time the decoder). The
embeddings are random tensors of the real shapes; for SAM 3 its tracker features are given ready, so neither
path includes the tracker's neck (run once per decode call on either path). Both paths are
``samadapt.models.sam.decode`` on the same prompts, the slow one with the fast pass switched off, measured
in the same run:

    .venv/bin/python benchmarks/decoder_new_families.py [--families edgetam,sam3] [--prompts 64] [--single]
                                                       [--precision fp32]

``--precision bf16`` runs the batched pass in bf16 (the slow path is transformers' fp32 forward either way).
Prints each path's seconds for all prompts (best of ``--repeats``), the ratio slow / fast, and the largest
difference of the two paths' logits relative to the largest logit. The machine may be shared: compare
ratios, not absolute times.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from decoder import best_of  # benchmarks/decoder.py, beside this script

from samadapt.models import sam as runtime
from samadapt.models.accel import sam_decoder
from samadapt.models.sam import DecoderPrompts, decode


class TrackerOnly(torch.nn.Module):
    """Stands in for :class:`samadapt.models.sam3.Sam3Parts` with a tracker and its features ready."""

    def __init__(self, tracker: torch.nn.Module, levels: list[torch.Tensor]) -> None:
        super().__init__()
        self.tracker = tracker
        self.levels = levels
        self.grid = tuple(levels[-1].shape[-2:])

    def tracker_embeddings(self, vit: torch.Tensor) -> list[torch.Tensor]:
        return self.levels


def randomise_zeros(model: torch.nn.Module) -> None:
    """Random values where transformers initialises parameters to exactly zero (as samadapt's tiny models)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 0 and torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def levels(side: int, gen: torch.Generator) -> list[torch.Tensor]:
    """SAM 2-style features for an embedding of side x side: two high-resolution levels, then the embedding."""
    return [torch.randn(1, 32, 4 * side, 4 * side, generator=gen),
            torch.randn(1, 64, 2 * side, 2 * side, generator=gen),
            torch.randn(1, 256, side, side, generator=gen)]


def edgetam() -> tuple[Any, dict[str, torch.Tensor]]:
    """A full-size random EdgeTAM as ``decode`` reads a loaded model, and an embedding."""
    from samadapt.models.edgetam import build_edgetam, published_config

    torch.manual_seed(0)
    model = build_edgetam(published_config()).eval()
    randomise_zeros(model.mask_decoder)
    f = levels(64, torch.Generator().manual_seed(1))
    loaded = SimpleNamespace(family="edgetam", model=model, device=torch.device("cpu"), runtime=None,
                             preprocessing=SimpleNamespace(size=1024))
    return loaded, {"high_res_0": f[0], "high_res_1": f[1], "image": f[2]}


def sam3() -> tuple[Any, dict[str, torch.Tensor]]:
    """SAM 3's tracker at the published decoder size behind a stand-in for its parts, and an embedding."""
    from transformers import Sam3TrackerConfig, Sam3TrackerModel

    from samadapt.models.sam3 import tiny_sam3_config

    torch.manual_seed(0)
    config = Sam3TrackerConfig(vision_config=tiny_sam3_config().tracker_config.vision_config.to_dict())
    tracker = Sam3TrackerModel(config).eval()
    randomise_zeros(tracker.mask_decoder)
    side = tracker.prompt_encoder.image_embedding_size[0]
    parts = TrackerOnly(tracker, levels(side, torch.Generator().manual_seed(1)))
    loaded = SimpleNamespace(family="sam3", model=parts, device=torch.device("cpu"), runtime=None,
                             preprocessing=SimpleNamespace(size=config.prompt_encoder_config.image_size))
    return loaded, {"vit": torch.zeros(1)}  # the stand-in ignores the ViT output


def boxes(n: int, size: int, rng: np.random.Generator) -> DecoderPrompts:
    """n boxes in the model-input frame."""
    x0, y0 = rng.uniform(0, size * 0.8, (2, n))
    w, h = rng.uniform(size * 0.03, size * 0.2, (2, n))
    return DecoderPrompts(boxes=np.stack([x0, y0, np.minimum(x0 + w, size), np.minimum(y0 + h, size)], 1))


def slow_decode(loaded: Any, emb: dict[str, torch.Tensor], prompts: DecoderPrompts,  # noqa: ANN401
                multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``decode`` with the fast pass switched off: transformers' forward, one object per call."""
    real = sam_decoder.supported
    sam_decoder.supported = lambda model: False  # type: ignore[assignment]
    try:
        return decode(loaded, emb, prompts, multimask=multimask)
    finally:
        sam_decoder.supported = real  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="edgetam,sam3")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single", action="store_true", help="one mask per object (else 3)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="the fast pass's precision (it follows the encoder runtime's: bf16 for SAM 3 at 1008 px "
                             "on a CPU with native bf16, fp32 for EdgeTAM unless asked)")
    args = parser.parse_args()
    multimask = not args.single
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.prompts} box prompts, "
          f"multimask {multimask}, forward batch {runtime.FORWARD_BATCH}")
    rng = np.random.default_rng(0)
    for name in args.families.split(","):
        loaded, emb = {"edgetam": edgetam, "sam3": sam3}[name]()
        loaded.runtime = SimpleNamespace(precision=args.precision)  # what sam_decoder.precision_for reads
        model = runtime.decoder_model(loaded)
        assert sam_decoder.supported(model), f"{name}: the fast pass does not take {type(model).__name__}"
        prompts = boxes(args.prompts, loaded.preprocessing.size, rng)
        fast_out = decode(loaded, emb, prompts, multimask=multimask)  # warm-up
        slow_out = slow_decode(loaded, emb, boxes(2, loaded.preprocessing.size, rng), multimask)  # warm-up
        slow_out = slow_decode(loaded, emb, prompts, multimask)
        diff = ((fast_out[0] - slow_out[0]).abs().max() / slow_out[0].abs().max()).item()
        fast = best_of(lambda m=loaded, e=emb, p=prompts: decode(m, e, p, multimask=multimask), args.repeats)
        slow = best_of(lambda m=loaded, e=emb, p=prompts: slow_decode(m, e, p, multimask), args.repeats)
        side = model.prompt_encoder.image_embedding_size[0]
        print(f"{name} ({type(model).__name__}, {side}x{side} embedding, path {sam_decoder.precision_for(loaded)}): "
              f"transformers one at a time {slow:.2f} s ({slow / args.prompts * 1000:.1f} ms/prompt), "
              f"batched pass {fast:.2f} s ({fast / args.prompts * 1000:.1f} ms/prompt), "
              f"ratio {slow / fast:.2f}x; max |logit difference| / max |logit| {diff:.1e}")


if __name__ == "__main__":
    main()
