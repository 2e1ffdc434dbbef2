"""No ground truth at test time unless asked: the evaluation prompts of the prompted methods.

mask-decoder (the river fine-tuning tutorial) evaluates with an automatic grid of single
positive points and scores the whole ground truth; ``use_oracle_prompts(True)`` brings back
the prompts made from the target. encoder-adapter (the encoder-adaptation abstract) switches
its ``eval_prompts``. Methods that take no prompts refuse oracle prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import samadapt.methods.mask_decoder.decoding as md_decoding
import samadapt.methods.mask_decoder.method as md
from helpers.training import shapes_samples
from samadapt.errors import InputError
from samadapt.imagery.preprocess import boxes_to_model, coords_to_model
from samadapt.methods import build_method
from samadapt.methods.base import Sample, segmentation_loss, target_in_frame
from samadapt.methods.encoder_adapter import EncoderAdapterMethod
from samadapt.methods.mask_decoder import OFF_LOGIT, MaskDecoderMethod, pack_output, split_output
from samadapt.models.loading import LoadedModel, load_model
from samadapt.predict.automatic import point_grid
from samadapt.prompts.sampling import regions, tight_box
from samadapt.prompts.types import IGNORE
from samadapt.train.loop import TrainConfig, evaluate_method, train

GRID_KEYS = {"grid_points", "grid_valid"}


@pytest.fixture(scope="module")
def base(tiny_models: dict[str, Path]) -> LoadedModel:
    return load_model(tiny_models["sam"])


def _squares(target_boxes: list[tuple[int, int, int, int]], *, shape: tuple[int, int] = (96, 128),
             pixels: np.ndarray | None = None, stem: str = "sq") -> Sample:
    """A sample whose target holds the given (row0, row1, col0, col1) rectangles; bright pixels on them."""
    target = np.zeros(shape, np.uint8)
    for r0, r1, c0, c1 in target_boxes:
        target[r0:r1, c0:c1] = 1
    if pixels is None:
        pixels = np.repeat((40 + 150 * target).astype(np.uint8)[:, :, None], 3, axis=2)
    return Sample(stem, pixels, np.ones(shape, bool), target)


TWO = [(10, 40, 20, 60), (60, 80, 90, 110)]  # the larger rectangle first


def _inputs(method: Any, sample: Sample, *, train: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    return method.make_inputs(sample, train=train, rng=np.random.default_rng(seed))


def _stack(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _no_truth_for_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every way mask-decoder turns a target into prompts fail loudly."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the ground truth was read to build prompts")

    monkeypatch.setattr(MaskDecoderMethod, "ground_truth_prompts", refuse)
    monkeypatch.setattr(md, "prompts_from_mask", refuse)
    monkeypatch.setattr(md, "regions", refuse)


# --- mask-decoder: (a) evaluation reads no ground truth to prompt -------------------------------
def test_evaluation_prompts_do_not_depend_on_the_target(base: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    method = MaskDecoderMethod(base, max_objects=2).eval()
    assert method.oracle is False
    truth = _squares(TWO)
    other = Sample("other", truth.pixels, truth.valid, _squares([(0, 20, 0, 20)]).target)  # same pixels
    empty = Sample("empty", truth.pixels, truth.valid, np.zeros((96, 128), np.uint8))  # all background
    _no_truth_for_prompts(monkeypatch)
    a, b, c = (_inputs(method, s) for s in (truth, other, empty))
    assert set(a) == set(b) == set(c) == {"embedding", "target", *GRID_KEYS}
    for key in ("embedding", *GRID_KEYS):
        assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]), key
    assert a["grid_points"].shape == (16 * 16, 2) and a["grid_valid"].all()
    assert not torch.equal(a["target"], b["target"])  # only what is scored differs
    with torch.no_grad():
        out = method(_stack([a, b, c]))
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])  # so the prediction cannot differ either


def test_the_grid_covers_the_image_in_the_model_frame(base: LoadedModel) -> None:
    method = MaskDecoderMethod(base, eval_grid=4)
    sample = _squares(TWO)  # 96 x 128: resized to 192 x 256 inside the 256 x 256 input
    sample.valid[:, :64] = False  # no data in the left half
    out = _inputs(method, sample)
    expected = coords_to_model(point_grid(96, 128, 4), method.geometry_of(96, 128))
    np.testing.assert_allclose(out["grid_points"].numpy(), expected, rtol=0, atol=1e-5)
    assert out["grid_points"][0].tolist() == [32.0, 24.0]  # the first cell's centre (16, 12), times 2
    assert out["grid_points"][:, 0].max() < 256 and out["grid_points"][:, 1].max() < 192  # never in the padding
    assert out["grid_valid"].tolist() == [False, False, True, True] * 4  # points on no-data pixels are off


# --- mask-decoder: (b) oracle prompts come from the target --------------------------------------
def test_oracle_prompts_come_from_the_target(base: LoadedModel) -> None:
    method = MaskDecoderMethod(base, max_objects=3, box_noise=4.0)
    truth = _squares(TWO)
    method.use_oracle_prompts(True)
    assert method.oracle is True
    out = _inputs(method, truth)
    assert not GRID_KEYS & set(out)
    geometry = method.geometry_of(96, 128)
    for i, region in enumerate(regions(truth.target)):  # the tight box of each region, no noise
        assert torch.allclose(out["boxes"][i], torch.tensor(boxes_to_model(tight_box(region), geometry)).float())
    assert out["object_valid"].tolist() == [True, True, False]
    moved = Sample("moved", truth.pixels, truth.valid, _squares([(0, 20, 0, 20)]).target)
    assert not torch.equal(_inputs(method, moved)["boxes"], out["boxes"])  # the target decides the prompts
    method.use_oracle_prompts(False)
    assert method.oracle is False and GRID_KEYS <= set(_inputs(method, truth))


def test_training_inputs_do_not_depend_on_the_switch(base: LoadedModel) -> None:
    method = MaskDecoderMethod(base, max_objects=3, box_noise=4.0)
    sample = _squares(TWO)
    plain = _inputs(method, sample, train=True, seed=5)
    method.use_oracle_prompts(True)
    oracle = _inputs(method, sample, train=True, seed=5)
    assert set(plain) == set(oracle) and all(torch.equal(plain[k], oracle[k]) for k in plain)
    assert not GRID_KEYS & set(plain)


def test_the_switch_takes_a_bool(base: LoadedModel) -> None:
    method = MaskDecoderMethod(base)
    with pytest.raises(InputError, match=r"use_oracle_prompts takes True or False, got 'yes'"):
        method.use_oracle_prompts("yes")  # type: ignore[arg-type]
    method.use_oracle_prompts(np.bool_(True))
    assert method.oracle is True
    assert "oracle" not in method.config()["options"]  # an evaluation setting, not part of the adapter


# --- mask-decoder: (c) the default target is the whole ground truth -----------------------------
def test_the_default_scoring_target_is_the_whole_ground_truth(base: LoadedModel) -> None:
    method = MaskDecoderMethod(base, max_objects=1)
    sample = _squares(TWO)
    sample.target[0:5, 0:5] = IGNORE
    whole = target_in_frame(sample.target, method.geometry_of(96, 128), method.preprocessing, method.output_side)
    grid = _inputs(method, sample)
    assert torch.equal(grid["target"], whole)
    assert (grid["target"][30:40, 45:55] == 1).all()  # the second rectangle, beyond max_objects, counts
    method.use_oracle_prompts(True)
    union = _inputs(method, sample)["target"]
    assert (union[30:40, 45:55] == IGNORE).all()  # the oracle mode asks only for what it prompted
    # the loss of a grid batch: dice + BCE of the merged mask against that whole target
    merged = torch.where(whole == 1, 3.0, OFF_LOGIT)[None]
    logits = pack_output(merged[:, None, None], torch.zeros(1, 1, 1))
    loss = method.loss(logits, _stack([grid]))
    expected = segmentation_loss(merged.clamp(min=-20.0)[:, None], whole[None], 2)
    assert torch.isclose(loss, expected) and float(loss) < 10


# --- mask-decoder: how grid masks are kept and merged ------------------------------------------
def _fake_decode(calls: list[int]) -> Any:
    """A stand-in for the decoding of single positive points: each point gives 3 candidates of a
    9 x 9 square around it (output frame).

    Candidate 1 has the highest predicted IoU: 0.9 for points left of x = 128 (model frame),
    0.88 for points in x 128..192, 0.5 beyond; the other candidates are empty.
    """
    def decode(self: MaskDecoderMethod, embeddings: dict, points: torch.Tensor) -> Any:
        b, n = points.shape[:2]
        calls.append(b * n)
        side = self.output_side
        centre = (points / 4).long()  # (B, n, 2) output-frame pixel
        rows = torch.arange(side)[None, None, :, None]
        cols = torch.arange(side)[None, None, None, :]
        near = ((rows - centre[..., 1, None, None]).abs() <= 4) & ((cols - centre[..., 0, None, None]).abs() <= 4)
        square = torch.where(near, 6.0, -6.0)
        masks = torch.stack([torch.full_like(square, -6.0), square, torch.full_like(square, -6.0)], dim=2)
        x = points[:, :, 0]
        best = torch.where(x < 128, 0.9, torch.where(x < 192, 0.88, 0.5))
        iou = torch.stack([torch.full_like(best, 0.1), best, torch.full_like(best, 0.2)], dim=2)
        return masks, iou

    return decode


def test_grid_masks_are_kept_by_predicted_iou_and_merged_by_their_maximum(
        base: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(MaskDecoderMethod, "_decode_points", _fake_decode(calls))
    monkeypatch.setattr(md_decoding, "PREDICT_CHUNK", 8)
    method = MaskDecoderMethod(base, eval_grid=8).eval()  # 64 points in 2 images: 16 calls of 4 x 2
    sample = _squares(TWO, shape=(128, 128))
    batch = _stack([_inputs(method, sample), _inputs(method, sample)])
    with torch.no_grad():
        out = method(batch)
    assert out.shape == (2, 1, 2, 64, 64) and len(calls) == 16 and max(calls) <= 8
    masks, iou = split_output(out)
    assert iou.flatten().tolist() == pytest.approx([0.9, 0.9])  # the best kept IoU
    probs = method.probabilities(out)[:, 1]
    # points at model x = 16, 48, ..., 240: those at x < 192 pass 0.88 (equal counts as passing)
    kept_cols = probs[0].amax(dim=0) > 0.5
    assert kept_cols[:44].any() and kept_cols[44:48].any() and not kept_cols[52:].any()
    # the maximum over the kept masks: inside one, its logit; outside all, the largest outside logit
    assert torch.allclose(probs[0].max(), torch.sigmoid(torch.tensor(6.0)))
    assert torch.allclose(probs[0][:, 52:], torch.sigmoid(torch.tensor(-6.0)))
    # a higher threshold keeps fewer masks
    method.eval_iou_threshold = 0.89
    with torch.no_grad():
        stricter = method.probabilities(method(batch))[:, 1]
    assert (stricter[0].amax(dim=0) > 0.5)[:32].any() and not (stricter[0].amax(dim=0) > 0.5)[36:].any()
    # none kept: probability exactly 0, and a kept IoU of 0
    method.eval_iou_threshold = 0.95
    with torch.no_grad():
        nothing = method(batch)
    assert (method.probabilities(nothing)[:, 1] == 0).all() and (split_output(nothing)[1] == 0).all()


def test_chunked_grid_decoding_matches_one_pass(base: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    method = MaskDecoderMethod(base, eval_grid=6, eval_iou_threshold=0.0).eval()
    samples = shapes_samples(2, seed=3)
    batch = _stack([_inputs(method, s) for s in samples])
    with torch.no_grad():
        whole = method(batch)
        monkeypatch.setattr(md_decoding, "PREDICT_CHUNK", 5)  # 2 points of 2 images per call
        chunked = method(batch)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-4)
    assert (split_output(whole)[0] > OFF_LOGIT).all()  # threshold 0 keeps every mask


@pytest.mark.parametrize(("family", "multimask"), [("sam", "best"), ("sam", "single"), ("sam2", "best"),
                                                   ("sam2", "single"), ("sam-hq", "mean")])
def test_the_fast_grid_pass_matches_the_training_decoder_path(family: str, multimask: str,
                                                              tiny_models: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The grid goes through samadapt.models.accel.sam_decoder's inference pass with the adapted decoder;
    it must give what the decoder call used in training gives."""
    import samadapt.models.accel.sam_decoder as fast

    torch.manual_seed(0)
    method = MaskDecoderMethod(load_model(tiny_models[family]), multimask=multimask, eval_grid=5,
                               eval_iou_threshold=0.0).eval()
    with torch.no_grad():  # make the copy differ from the base decoder, as after training
        for p in method.mask_decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _stack([_inputs(method, s) for s in shapes_samples(2, seed=6)])
    calls: list[int] = []
    decode_sam = fast.decode_sam
    monkeypatch.setattr(fast, "decode_sam", lambda *a, **k: calls.append(1) or decode_sam(*a, **k))
    with torch.no_grad():
        quick = method(batch)
        assert calls  # the fast pass ran
        monkeypatch.setattr(fast, "supported", lambda model: False)
        slow = method(batch)
    torch.testing.assert_close(quick, slow, rtol=0, atol=1e-4)
    assert "_fast" not in method.state_dict() and not any(k.startswith("prompt_encoder") for k in method.state_dict())


def test_predict_without_prompts_is_the_evaluation_grid(base: LoadedModel) -> None:
    method = MaskDecoderMethod(base, eval_grid=8, eval_iou_threshold=0.0).eval()
    sample = _squares(TWO)
    direct = method.predict(sample.pixels)
    with torch.no_grad():
        probs = method.probabilities(method(_stack([_inputs(method, sample)])))
    via_batch = method.to_original(probs[0], method.geometry_of(96, 128))[1].numpy()
    assert direct.shape == (96, 128) and direct.dtype == np.float32 and direct.max() > 0
    np.testing.assert_allclose(direct, via_batch, atol=1e-5)


# --- (d) methods without prompts ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["domain-decoder", "lora", "unet"])
def test_methods_without_prompts_refuse_oracle_prompts(name: str, base: LoadedModel) -> None:
    method = build_method(name, base)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    method.use_oracle_prompts(False)  # a no-op
    assert method.oracle is False
    with pytest.raises(InputError, match=rf"^{name} takes no prompts, so it has no oracle prompts"):
        method.use_oracle_prompts(True)
    assert method.oracle is False
    assert all(torch.equal(v, method.state_dict()[k]) for k, v in before.items())
    with pytest.raises(InputError, match="takes True or False"):
        method.use_oracle_prompts(1)  # type: ignore[arg-type]


# --- (e) encoder-adapter ---------------------------------------------------------------------------
SMALL = {"width": 8, "depth": 2, "unet_scale": 0.25, "max_objects": 4}


def test_encoder_adapter_switches_its_evaluation_prompts(base: LoadedModel) -> None:
    method = EncoderAdapterMethod(base, **SMALL)
    sample = _squares(TWO)
    assert method.oracle is False and method.eval_prompts == "unet"
    plain = _inputs(method, sample)
    assert plain["from_unet"].item() == 1.0 and plain["valid"].sum() == 0  # no truth in the prompts
    method.use_oracle_prompts(True)
    assert method.oracle is True and method.eval_prompts == "truth"
    assert method.config()["options"]["eval_prompts"] == "truth"  # rebuilding gives the same evaluation
    oracle = _inputs(method, sample)
    assert oracle["from_unet"].item() == 0.0 and oracle["valid"].tolist() == [1.0, 1.0, 0.0, 0.0]
    x, y = (oracle["points"][0] / 2).tolist()  # 96 x 128 -> 192 x 256: halve back
    assert sample.target[int(y), int(x)] == 1
    assert torch.equal(plain["target"], oracle["target"])  # the same scored target
    method.use_oracle_prompts(False)
    assert method.oracle is False and method.config()["options"]["eval_prompts"] == "unet"
    assert _inputs(method, sample)["from_unet"].item() == 1.0
    # training prompts come from the ground truth whatever the switch says
    assert _inputs(method, sample, train=True)["from_unet"].item() == 0.0
    assert EncoderAdapterMethod(base, eval_prompts="truth", **SMALL).oracle is True
    with pytest.raises(InputError, match="takes True or False"):
        method.use_oracle_prompts(None)  # type: ignore[arg-type]


# --- the training module's evaluation, end to end ---------------------------------------------------
def test_evaluate_method_runs_on_mask_decoder_in_both_modes(base: LoadedModel, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = MaskDecoderMethod(base, max_objects=2, eval_grid=8, eval_iou_threshold=0.0)
    empty = _squares([], shape=(128, 128), pixels=shapes_samples(1, seed=9)[0].pixels, stem="empty")
    samples = [*shapes_samples(3, seed=2), empty, _squares(TWO)]  # sizes differ; batches of 4 still stack
    pixels = sum(s.target.size for s in samples)
    with monkeypatch.context() as m:
        _no_truth_for_prompts(m)
        grid, grid_loss = evaluate_method(method, samples, batch_size=4)
    assert grid.num_pixels == pixels and np.isfinite(grid_loss) and method.oracle is False
    method.use_oracle_prompts(True)
    oracle, oracle_loss = evaluate_method(method, samples, batch_size=4)
    assert oracle.num_pixels == pixels and np.isfinite(oracle_loss) and method.oracle is True
    assert not np.array_equal(grid.confusion, oracle.confusion)
    # the training loop's validation goes through the same code, in the mode the method is in
    method.use_oracle_prompts(False)
    result = train(method, samples[:2], samples[2:], tmp_path / "run", TrainConfig(epochs=1, batch_size=2),
                   progress=False)
    assert np.isfinite(result.history[0]["val_loss"]) and "val_miou" in result.history[0]
