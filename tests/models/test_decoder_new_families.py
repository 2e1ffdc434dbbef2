"""EdgeTAM's image model and SAM 3's tracker decode through the fast batched pass, giving transformers' own results.

Their prompt encoders, mask decoders and image-model forward are SAM 2's (transformers generates them from
SAM 2's), so :mod:`samadapt.models.accel.sam_decoder` computes them; these tests hold it to transformers'
forward, one object per call, on tiny random models (decoder weights livened up so masks are not trivial).

Tolerance, as for SAM 2 in ``tests/models/accel/test_sam_decoder.py``: logits within 1e-4 of the largest
reference logit, IoUs within atol 1e-5 + rtol 1e-4, the masks (logit > 0) at IoU >= 0.99 with each other.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from samadapt.models import sam as runtime
from samadapt.models.accel import sam_decoder
from samadapt.models.families import family_model
from samadapt.models.loading import LoadedModel, load_model
from samadapt.models.registry import Family
from samadapt.models.sam import PAD_LABEL, DecoderPrompts, decode, decoder_model
from samadapt.models.tiny import save_tiny_model
from samadapt.predict.segmenter import Segmenter

FAMILIES: tuple[Family, ...] = ("edgetam", "sam3")


def _counted(calls: list[int], real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, appending to ``calls`` on each call."""
    def call(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - whatever ``real`` takes and returns
        calls.append(1)
        return real(*args, **kwargs)

    return call


@pytest.fixture(scope="module")
def tiny_new(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders with a tiny random EdgeTAM and SAM 3."""
    root = tmp_path_factory.mktemp("tiny-new-families")
    return {family: save_tiny_model(root / family, family) for family in FAMILIES}


def _livelier(loaded: LoadedModel, seed: int = 0) -> LoadedModel:
    """Random decoder weights scaled up so masks are neither empty nor full."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in family_model(decoder_model(loaded)).mask_decoder.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return loaded


def _prompts(size: float, n: int, seed: int = 0) -> DecoderPrompts:
    """n objects in the model-input frame cycling through 1 point, 3 points (the last background), a box,
    and a box with 2 points; padded to 3 points with :data:`PAD_LABEL`."""
    rng = np.random.default_rng(seed)
    points = np.zeros((n, 3, 2), np.float32)
    labels = np.full((n, 3), PAD_LABEL, np.int64)
    boxes = np.full((n, 4), np.nan, np.float32)
    for i in range(n):
        kind = i % 4
        pts = rng.uniform(0, size - 1, (3, 2))
        x0, y0 = rng.uniform(0, size * 0.6, 2)
        if kind == 0:
            points[i, :1], labels[i, :1] = pts[:1], 1
        elif kind == 1:
            points[i], labels[i] = pts, [1, 1, 0]
        elif kind == 3:
            points[i, :2], labels[i, :2] = pts[:2], [1, 0]
        if kind >= 2:
            boxes[i] = [x0, y0, x0 + size * 0.3, y0 + size * 0.35]
    return DecoderPrompts(points=points, labels=labels, boxes=boxes)


def _slow(loaded: LoadedModel, embedding: dict[str, torch.Tensor], prompts: DecoderPrompts, multimask: bool,
          monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' own forward, one object per call, unpadded (the slow path of :func:`decode`)."""
    calls: list[int] = []
    real = runtime._call_model
    with monkeypatch.context() as m:
        m.setattr(sam_decoder, "supported", lambda model: False)
        m.setattr(runtime, "FORWARD_BATCH", {loaded.family: 1})
        m.setattr(runtime, "_call_model", _counted(calls, real))
        out = decode(loaded, embedding, prompts, multimask=multimask)
    assert len(calls) == len(prompts)
    return out


def _fast(loaded: LoadedModel, embedding: dict[str, torch.Tensor], prompts: DecoderPrompts, multimask: bool,
          monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode` with transformers' forward made to fail, so only the fast pass can answer."""
    def refuse(*_args: object) -> None:
        raise AssertionError("decode took transformers' forward")

    passes: list[int] = []
    real = sam_decoder.decode_sam
    with monkeypatch.context() as m:
        m.setattr(runtime, "_call_model", refuse)
        m.setattr(sam_decoder, "decode_sam", _counted(passes, real))
        out = decode(loaded, embedding, prompts, multimask=multimask)
    assert len(passes) == -(-len(prompts) // sam_decoder.CHUNK)
    return out


def _check_agreement(fast: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor]) -> None:
    (lr, sc), (rlr, rsc) = fast, ref
    assert lr.shape == rlr.shape and sc.shape == rsc.shape
    assert (lr - rlr).abs().max() <= 1e-4 * rlr.abs().max()
    torch.testing.assert_close(sc, rsc, atol=1e-5, rtol=1e-4)
    a, b = lr > 0, rlr > 0
    inter, union = (a & b).sum((-1, -2)).float(), (a | b).sum((-1, -2)).float()
    assert (inter / union.clamp(min=1)).min() >= 0.99
    fraction = b.float().mean((-1, -2))
    assert ((fraction > 0.01) & (fraction < 0.99)).float().mean() >= 0.5  # the masks are not trivial


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("family", FAMILIES)
def test_fast_pass_equals_transformers_forward(tiny_new: dict[str, Path], family: Family, multimask: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """1 point, 3 points, a box, a box with points, mixed in one call of more than one chunk; for one mask
    SAM 2's stability rule picks it, as in transformers."""
    loaded = _livelier(load_model(tiny_new[family]))
    model = family_model(decoder_model(loaded))
    assert type(model).__name__ == {"edgetam": "EdgeTamModel", "sam3": "Sam3TrackerModel"}[family]
    assert sam_decoder.supported(model) and model.mask_decoder.dynamic_multimask_via_stability
    seg = Segmenter(loaded, cache=False)
    emb = seg.embed(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)).embedding
    prompts = _prompts(loaded.preprocessing.size, n=sam_decoder.CHUNK + 4)
    fast = _fast(loaded, emb, prompts, multimask, monkeypatch)
    assert fast[0].shape[-1] == runtime.low_res_side(loaded)
    _check_agreement(fast, _slow(loaded, emb, prompts, multimask, monkeypatch))


def _check_bf16_agreement(fast: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The bf16 pass's bounds against float32 (``tests/models/accel/test_sam_decoder.py``): masks at IoU >= 0.99,
    logits within 2% of the largest reference logit (0.2% on average), IoUs within 0.005."""
    (lr, sc), (rlr, rsc) = fast, ref
    assert lr.shape == rlr.shape and sc.shape == rsc.shape
    scale = rlr.abs().max()
    assert (lr - rlr).abs().max() <= 2e-2 * scale and (lr - rlr).abs().mean() <= 2e-3 * scale
    torch.testing.assert_close(sc, rsc, atol=5e-3, rtol=0)
    a, b = lr > 0, rlr > 0
    inter, union = (a & b).sum((-1, -2)).float(), (a | b).sum((-1, -2)).float()
    assert (inter / union.clamp(min=1)).min() >= 0.99


class _TrackerOnly(torch.nn.Module):
    """Stands in for :class:`~samadapt.models.sam3.Sam3Parts`: a tracker and its features of one image, ready."""

    def __init__(self, tracker: torch.nn.Module, levels: list[torch.Tensor]) -> None:
        super().__init__()
        self.tracker = tracker
        self.levels = levels
        self.grid = tuple(levels[-1].shape[-2:])

    def tracker_embeddings(self, vit: torch.Tensor) -> list[torch.Tensor]:
        return self.levels


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_published_size_sam3_tracker_agrees_with_transformers_forward(precision: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """SAM 3's tracker at its published decoder size (transformers' default tracker config: SAM 2's decoder on a
    72 x 72 embedding, 1008 px) with random weights and features. In bf16, as the encoder runtime runs SAM 3 on a
    CPU with native bf16, the pass keeps the bounds stated for SAM's and SAM 2's bf16 pass."""
    from types import SimpleNamespace

    from transformers import Sam3TrackerConfig, Sam3TrackerModel

    from samadapt.models.sam3 import tiny_sam3_config

    torch.manual_seed(0)
    config = Sam3TrackerConfig(vision_config=tiny_sam3_config().tracker_config.vision_config.to_dict())
    tracker = Sam3TrackerModel(config).eval()
    gen = torch.Generator().manual_seed(1)
    side = tracker.prompt_encoder.image_embedding_size[0]
    levels = [torch.randn(1, 32, 4 * side, 4 * side, generator=gen),
              torch.randn(1, 64, 2 * side, 2 * side, generator=gen), torch.randn(1, 256, side, side, generator=gen)]
    prompt_config: Any = config.prompt_encoder_config  # a built config, typed as dict | config | None
    size = prompt_config.image_size
    loaded = SimpleNamespace(family="sam3", model=_TrackerOnly(tracker, levels), device=torch.device("cpu"),
                             runtime=SimpleNamespace(precision=precision), preprocessing=SimpleNamespace(size=size))
    _livelier(loaded)  # type: ignore[arg-type]  # what decode reads of a LoadedModel
    assert (side, size) == (72, 1008) and sam_decoder.precision_for(loaded) == precision
    emb = {"vit": torch.zeros(1)}  # the stand-in has the tracker's features ready
    prompts = _prompts(size, n=12)
    fast = _fast(loaded, emb, prompts, True, monkeypatch)  # type: ignore[arg-type]
    assert fast[0].shape[-1] == 4 * side
    check = _check_agreement if precision == "fp32" else _check_bf16_agreement
    check(fast, _slow(loaded, emb, prompts, True, monkeypatch))  # type: ignore[arg-type]


def test_sam3_tracker_features_are_computed_once_per_decode(tiny_new: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracker's neck runs once per decode call, whatever the number of objects."""
    loaded = load_model(tiny_new["sam3"])
    seg = Segmenter(loaded, cache=False)
    emb = seg.embed(np.random.default_rng(1).integers(0, 255, (90, 150, 3), dtype=np.uint8)).embedding
    parts = runtime.sam3_parts(loaded)
    calls: list[int] = []
    real = parts.tracker_embeddings
    monkeypatch.setattr(parts, "tracker_embeddings", _counted(calls, real))
    masks, scores = decode(loaded, emb, _prompts(loaded.preprocessing.size, n=2 * sam_decoder.CHUNK + 1))
    assert calls == [1] and masks.shape[0] == scores.shape[0] == 2 * sam_decoder.CHUNK + 1


def test_mask_prompts_and_adapters_stay_on_transformers_forward(tiny_new: dict[str, Path],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A mask prompt goes through transformers' forward, and so does a decoder with a module of an adapter's."""
    from torch import nn

    loaded = load_model(tiny_new["edgetam"])
    seg = Segmenter(loaded, cache=False)
    emb = seg.embed(np.random.default_rng(2).integers(0, 255, (90, 150, 3), dtype=np.uint8)).embedding
    side = runtime.low_res_side(loaded)
    calls: list[int] = []
    real = runtime._call_model
    monkeypatch.setattr(runtime, "_call_model", _counted(calls, real))
    one = DecoderPrompts(points=np.array([[[30.0, 40.0]]]), labels=np.array([[1]]), mask=torch.zeros(1, side, side))
    decode(loaded, emb, one)
    assert calls == [1]

    class Adapter(nn.Linear):  # a module of samadapt's own (not torch's or transformers'), as a LoRA layer is
        pass

    Adapter.__module__ = "samadapt.methods.lora"
    model = family_model(loaded.model)
    assert sam_decoder.supported(model)
    model.mask_decoder.iou_prediction_head.proj_in = Adapter(8, 8)
    assert not sam_decoder.supported(model)
