"""The mask-decoder method (the river fine-tuning tutorial): SAM's decoder fine-tuned on prompts from ground truth.

Most tests here score with oracle prompts (``use_oracle_prompts(True)``: prompts from the target,
as in training); evaluation without them (the automatic grid) is tested in test_oracle_prompts.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers.training import fit, shapes_samples
from samadapt.errors import InputError
from samadapt.imagery.preprocess import boxes_to_model
from samadapt.methods import method_class
from samadapt.methods.base import Sample, target_in_frame
from samadapt.methods.mask_decoder import OFF_LOGIT, MaskDecoderMethod, pack_output, split_output
from samadapt.models.loading import load_model
from samadapt.predict.cache import EmbeddingCache
from samadapt.prompts.sampling import SamplingOptions, prompts_from_mask, regions, tight_box
from samadapt.prompts.types import IGNORE, ObjectPrompt, point
from samadapt.train.confusion import binary_iou


def _batch(method: MaskDecoderMethod, samples: list[Sample], *, train: bool, rng: np.random.Generator) -> dict:
    items = [method.make_inputs(s, train=train, rng=rng) for s in samples]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _train(method: MaskDecoderMethod, samples: list[Sample], steps: int, seed: int = 0) -> list[float]:
    """The training loop's contract in miniature: AdamW on the trainable parameters, batch 4."""
    rng = np.random.default_rng(seed)
    return fit(method, lambda: _batch(method, [samples[i] for i in rng.choice(len(samples), 4, replace=False)],
                                      train=True, rng=rng), steps=steps, lr=3e-3)


def _prompted_iou(method: MaskDecoderMethod, samples: list[Sample]) -> float:
    """Mean IoU at the original size, each object prompted with the tight box of its ground truth (an oracle)."""
    method.use_oracle_prompts(True)
    with torch.no_grad():
        probs = method.probabilities(method(_batch(method, samples, train=False, rng=np.random.default_rng(1))))
    ious = []
    for p, s in zip(probs, samples, strict=False):
        pred = method.to_original(p, method.geometry_of(*s.target.shape))[1].numpy() > 0.5
        ious.append(binary_iou(pred, s.target == 1))
    return float(np.mean(ious))


def _memory_cache(tmp: Path) -> EmbeddingCache:
    return EmbeddingCache(root=tmp, persist=False, memory_items=64)


@pytest.fixture(scope="module")
def trained(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A box-prompted ("best") method trained for 60 steps on 12 images, with held-out scores."""
    torch.manual_seed(0)
    base = load_model(tiny_models["sam"])
    base_decoder = {k: v.clone() for k, v in base.model.mask_decoder.state_dict().items()}
    method = MaskDecoderMethod(base, box_noise=2.0, max_objects=4)
    method.use_oracle_prompts(True)  # every test of this fixture scores prompts from the ground truth
    method.cache = _memory_cache(tmp_path_factory.mktemp("emb"))  # module scope: keep off any home folder
    train, held_out = shapes_samples(12, seed=0), shapes_samples(8, seed=1)
    method.eval()
    untrained = _prompted_iou(method, held_out)
    losses = _train(method, train, steps=60)
    return {"method": method, "base": base, "base_decoder": base_decoder, "losses": losses,
            "held_out": held_out, "untrained_iou": untrained, "iou": _prompted_iou(method, held_out)}


def _two_squares() -> Sample:
    """A 96 x 128 image (not square, to exercise the geometry) with two bright rectangles."""
    target = np.zeros((96, 128), np.uint8)
    target[10:40, 20:60] = 1  # the larger region: object 0
    target[60:80, 90:110] = 1
    target[0:5, 0:5] = IGNORE
    pixels = np.repeat((40 + 150 * (target == 1)).astype(np.uint8)[:, :, None], 3, axis=2)
    return Sample("two", pixels, np.ones(target.shape, bool), target)


# --- what trains and what is cached -------------------------------------------------------------
def test_only_the_mask_decoder_copy_trains(trained: dict) -> None:
    method = trained["method"]
    names = {n for n, p in method.named_parameters() if p.requires_grad}
    assert names == {f"mask_decoder.{n}" for n, _ in method.mask_decoder.named_parameters()}
    assert set(method.trainable_state_dict()) == names
    # the base model's own decoder is left as loaded, so the untrained model stays available
    after = trained["base"].model.mask_decoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in trained["base_decoder"].items())
    assert not all(torch.equal(method.mask_decoder.state_dict()[k], v) for k, v in trained["base_decoder"].items())


def test_encoder_runs_once_per_image(tiny_models: dict[str, Path]) -> None:
    method = MaskDecoderMethod(load_model(tiny_models["sam"]), max_objects=4)
    samples, rng = shapes_samples(4, seed=3), np.random.default_rng(0)
    for _ in range(3):  # three epochs
        _batch(method, samples, train=True, rng=rng)
    assert method.embedder.encoder_calls == 4
    assert method.embedder.cache.hits >= 8


# --- prompts and targets ------------------------------------------------------------------------
def test_box_prompts_are_reproducible_and_in_the_model_frame(tiny_models: dict[str, Path]) -> None:
    method = MaskDecoderMethod(load_model(tiny_models["sam"]), box_noise=4.0, max_objects=3)
    sample = _two_squares()
    a = method.make_inputs(sample, train=True, rng=np.random.default_rng(7))
    b = method.make_inputs(sample, train=True, rng=np.random.default_rng(7))
    c = method.make_inputs(sample, train=True, rng=np.random.default_rng(8))
    assert torch.equal(a["boxes"], b["boxes"])
    assert not torch.equal(a["boxes"], c["boxes"])
    assert a["object_valid"].tolist() == [True, True, False]
    # evaluation with oracle prompts uses the tight box, scaled by 256 / 128 into the model input
    method.use_oracle_prompts(True)
    e = method.make_inputs(sample, train=False, rng=np.random.default_rng(7))
    assert e["boxes"][0].tolist() == [40.0, 20.0, 120.0, 80.0]
    found = regions(sample.target)
    box1 = boxes_to_model(tight_box(found[1]), method.geometry_of(96, 128))
    assert torch.allclose(e["boxes"][1], torch.tensor(box1).float())
    assert (a["boxes"][:2] - e["boxes"][:2]).abs().max() <= 8.0 + 1e-6  # 4 px noise, times 2
    # each object's target is its own region; padding objects are ignored everywhere
    g, spec, side = method.geometry_of(96, 128), method.preprocessing, method.output_side
    own = target_in_frame(np.where(found[1], 1, np.where(sample.target == IGNORE, IGNORE, 0)), g, spec, side)
    assert torch.equal(e["object_target"][1], own)
    assert (e["object_target"][1] == 1).sum() < (e["object_target"][0] == 1).sum()
    assert (e["object_target"][2] == IGNORE).all()
    assert torch.equal(e["target"], target_in_frame(sample.target, g, spec, side))


def test_point_prompts_are_padded_with_a_validity_flag(tiny_models: dict[str, Path]) -> None:
    method = MaskDecoderMethod(load_model(tiny_models["sam"]), prompt="points", n_pos=3, n_neg=2, max_objects=4)
    sample = _two_squares()
    a = method.make_inputs(sample, train=True, rng=np.random.default_rng(1))
    b = method.make_inputs(sample, train=True, rng=np.random.default_rng(1))
    assert torch.equal(a["points"], b["points"]) and torch.equal(a["labels"], b["labels"])
    assert a["points"].shape == (4, 5, 2) and "boxes" not in a
    assert a["labels"][0].tolist() == [1, 1, 1, 0, 0]
    assert (a["labels"][2:] == -10).all() and a["object_valid"].tolist() == [True, True, False, False]
    # the first positive is the region's interior point, mapped into the model input (x2)
    x, y = a["points"][0, 0].tolist()
    assert 40 <= x < 120 and 20 <= y < 80


def test_unprompted_regions_are_ignored_in_the_union_target(tiny_models: dict[str, Path]) -> None:
    method = MaskDecoderMethod(load_model(tiny_models["sam"]), max_objects=1)
    method.use_oracle_prompts(True)  # the union target is the oracle mode's; the grid scores the whole truth
    out = method.make_inputs(_two_squares(), train=False, rng=np.random.default_rng(0))
    assert out["object_valid"].tolist() == [True]
    assert (out["target"] == 1).sum() == (out["object_target"][0] == 1).sum()
    assert (out["target"][30:40, 45:55] == IGNORE).all()  # the smaller square, at a quarter of 2x


# --- forward, loss, probabilities ---------------------------------------------------------------
def test_forward_packs_candidates_and_ious(tiny_models: dict[str, Path]) -> None:
    method = MaskDecoderMethod(load_model(tiny_models["sam"]), max_objects=3).eval()
    method.use_oracle_prompts(True)
    batch = _batch(method, [_two_squares()] + shapes_samples(1, seed=5), train=False, rng=np.random.default_rng(0))
    out = method(batch)
    assert out.shape == (2, 3, 4, 64, 64)
    masks, iou = split_output(out)
    assert masks.shape == (2, 3, 3, 64, 64) and iou.shape == (2, 3, 3)
    assert torch.equal(pack_output(masks, iou), out)
    invalid = ~batch["object_valid"]
    assert (masks[invalid] == OFF_LOGIT).all()
    probs = method.probabilities(out)
    assert probs.shape == (2, 2, 64, 64)
    assert torch.allclose(probs.sum(1), torch.ones(2, 64, 64))
    # the union is the max over objects of each object's chosen mask; padding adds nothing
    chosen = torch.sigmoid(method.object_logits(out))
    assert torch.allclose(probs[:, 1], chosen.amax(1))
    best = iou.argmax(2)
    assert torch.equal(method.object_logits(out)[0, 0], masks[0, 0, best[0, 0]])


def test_best_and_mean_losses_differ_and_mean_trains(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    torch.manual_seed(1)
    base = load_model(tiny_models["sam"])
    best = MaskDecoderMethod(base, max_objects=4)
    mean = MaskDecoderMethod(base, max_objects=4, multimask="mean")
    mean.cache = _memory_cache(tmp_path)
    mean.use_oracle_prompts(True)
    batch = _batch(mean, shapes_samples(4, seed=2), train=False, rng=np.random.default_rng(0))
    with torch.no_grad():
        assert torch.equal(mean(batch), best(batch))  # same weights: only the loss and the choice differ
    # candidate 0 is each object's target exactly, candidates 1 and 2 its opposite
    right = torch.where(batch["object_target"] == 1, 10.0, -10.0)
    masks = torch.stack([right, -right, -right], dim=2)
    out = pack_output(masks, torch.tensor([1.0, 0.0, 0.0]).expand(*masks.shape[:3]))  # the IoUs are right too
    loss_best, loss_mean = best.loss(out, batch).item(), mean.loss(out, batch).item()
    assert loss_best < 0.05 < 1.0 < loss_mean
    assert torch.equal(best.object_logits(out), torch.where(batch["object_target"] == 1, 10.0, -10.0))
    held_out = shapes_samples(8, seed=1)
    mean.eval()
    before = _prompted_iou(mean, held_out)
    losses = _train(mean, shapes_samples(12, seed=0), steps=40)
    after = _prompted_iou(mean, held_out)
    print(f"mean: loss {np.mean(losses[:8]):.3f} -> {np.mean(losses[-8:]):.3f}; "
          f"held-out IoU {before:.3f} -> {after:.3f}")
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8])
    assert after > before + 0.3


def test_training_beats_untrained_decoder_and_trivial_baselines(trained: dict) -> None:
    losses, held_out = trained["losses"], trained["held_out"]
    all_fg = float(np.mean([binary_iou(np.ones_like(s.target, bool), s.target == 1) for s in held_out]))
    all_bg = float(np.mean([binary_iou(np.zeros_like(s.target, bool), s.target == 1) for s in held_out]))
    print(f"best: loss {np.mean(losses[:10]):.3f} -> {np.mean(losses[-10:]):.3f}; held-out box-prompted IoU "
          f"{trained['untrained_iou']:.3f} untrained, {trained['iou']:.3f} trained; "
          f"baselines fg {all_fg:.3f} bg {all_bg:.3f}")
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    assert trained["iou"] > trained["untrained_iou"] + 0.3
    assert trained["iou"] > max(all_fg, all_bg) + 0.3


# --- artifacts ------------------------------------------------------------------------------------
def test_trainable_state_round_trip_reproduces_logits(trained: dict, tmp_path: Path) -> None:
    method, base = trained["method"], trained["base"]
    save_file(method.trainable_state_dict(), str(tmp_path / "adapter.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(method.config()))
    config = json.loads((tmp_path / "config.json").read_text())
    cls = method_class(config["method"])
    rebuilt = cls(base, num_classes=config["num_classes"], in_channels=config["in_channels"], **config["options"])
    batch = _batch(method, trained["held_out"][:3], train=False, rng=np.random.default_rng(0))
    with torch.no_grad():
        fresh = rebuilt.eval()(batch)
        result = rebuilt.load_state_dict(load_file(str(tmp_path / "adapter.safetensors")), strict=False)
        assert result.unexpected_keys == []
        expected, got = method.eval()(batch), rebuilt(batch)
    assert torch.equal(got, expected)
    assert not torch.equal(fresh, expected)
    assert rebuilt.config() == method.config()


# --- prediction -----------------------------------------------------------------------------------
def test_predict_with_a_rough_mask_from_a_threshold(trained: dict, tiny_models: dict[str, Path]) -> None:
    method = trained["method"]
    untrained = MaskDecoderMethod(trained["base"])
    ious, ious_untrained = [], []
    for s in trained["held_out"][:4]:
        rough = s.pixels[:, :, 0] > 150  # shapes are about 180, the background about 60
        probs = method.predict(s.pixels, rough=rough)
        assert probs.shape == s.target.shape and probs.dtype == np.float32
        assert 0.0 <= probs.min() and probs.max() <= 1.0
        ious.append(binary_iou(probs > 0.5, s.target == 1))
        ious_untrained.append(binary_iou(untrained.predict(s.pixels, rough=rough) > 0.5, s.target == 1))
    print(f"rough-mask prompts: IoU {np.mean(ious):.3f} trained, {np.mean(ious_untrained):.3f} untrained")
    assert np.mean(ious) > 0.6 and np.mean(ious) > np.mean(ious_untrained) + 0.3


def test_predict_with_user_prompts_matches_the_batch_path(trained: dict) -> None:
    method, s = trained["method"], trained["held_out"][0]
    prompts = prompts_from_mask(s.target, SamplingOptions(mode="box"))
    direct = method.predict(s.pixels, prompts=prompts)
    with torch.no_grad():
        probs = method.probabilities(method(_batch(method, [s], train=False, rng=np.random.default_rng(0))))
    via_batch = method.to_original(probs[0], method.geometry_of(*s.target.shape))[1].numpy()
    np.testing.assert_allclose(direct, via_batch, atol=1e-5)
    nothing = method.predict(s.pixels, rough=np.zeros(s.target.shape, bool))
    assert nothing.shape == s.target.shape and not nothing.any()
    assert method.predict(s.pixels, prompts=[point(10, 10), prompts[0]]).shape == s.target.shape


def test_predict_refuses_bad_requests(trained: dict) -> None:
    method, s = trained["method"], trained["held_out"][0]
    with pytest.raises(InputError, match="one prompt source: .* or neither for the automatic point grid"):
        method.predict(s.pixels, prompts=[point(5, 5)], rough=s.target == 1)
    with pytest.raises(InputError, match="rough mask has shape"):
        method.predict(s.pixels, rough=np.ones((5, 5), bool))
    with pytest.raises(InputError, match="outside the image"):
        method.predict(s.pixels, prompts=[point(500, 5)])
    with pytest.raises(InputError, match="drop the mask prompt"):
        method.predict(s.pixels, prompts=[ObjectPrompt(mask=np.ones(s.target.shape))])
    with pytest.raises(InputError, match="uint8"):
        method.predict(s.pixels.astype(np.float32), rough=s.target == 1)


# --- other families and bad options -----------------------------------------------------------------
@pytest.mark.parametrize("family", ["sam2", "sam-hq"])
def test_other_families_train_through_the_same_code(family: str, tiny_models: dict[str, Path]) -> None:
    torch.manual_seed(0)
    method = MaskDecoderMethod(load_model(tiny_models[family]), prompt="point", n_neg=1, max_objects=2)
    samples = shapes_samples(2, seed=4)
    batch = _batch(method, samples, train=True, rng=np.random.default_rng(0))
    out = method(batch)
    assert out.shape == (2, 2, 4, 64, 64)
    method.loss(out, batch).backward()
    trainable = [n for n, p in method.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("mask_decoder.") for n in trainable)
    if family == "sam2":  # encoder-side projections live in the decoder but never train
        assert not any(p.requires_grad for p in method.mask_decoder.conv_s0.parameters())
    assert method.mask_decoder.iou_token.weight.grad is not None
    probs = method.predict(samples[0].pixels, rough=samples[0].target == 1)
    assert probs.shape == (128, 128)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"num_classes": 3}, "one class at a time"),
        ({"in_channels": 4}, "3-band"),
        ({"prompt": "mask"}, "mask-decoder option prompt must be one of box, point, points, got 'mask'"),
        ({"multimask": "all"}, "multimask must be one of best, mean, single, got 'all'"),
        ({"prompt": "box", "n_neg": 1}, "takes no points"),
        ({"prompt": "point", "n_pos": 2}, "use prompt 'points'"),
        ({"max_objects": 0}, "max_objects must be an integer of at least 1, got 0"),
        ({"box_noise": -1.0}, "box_noise must be a finite number >= 0, got -1.0"),
        ({"prompt": "points", "box_noise": 2.0}, "shifts box prompts"),
        ({"prompt": "points", "n_pos": 3, "erode": -2}, "erode must be an integer of at least 0, got -2"),
        ({"n_pos": 2.5}, "n_pos must be an integer of at least 1, got 2.5"),
        ({"class_id": 2}, "mask-decoder has no option 'class_id'; its options are: prompt, n_pos"),
    ],
)
def test_bad_options_are_refused(options: dict, match: str, tiny_models: dict[str, Path]) -> None:
    with pytest.raises(InputError, match=match):
        MaskDecoderMethod(load_model(tiny_models["sam"]), **options)


def test_unlabelled_sample_points_to_predict(tiny_models: dict[str, Path]) -> None:
    method = MaskDecoderMethod(load_model(tiny_models["sam"]))
    sample = Sample("u", np.zeros((32, 32, 3), np.uint8), np.ones((32, 32), bool))
    with pytest.raises(InputError, match=r"training prompts from the ground truth, and u has none; .*predict"):
        method.make_inputs(sample, train=True, rng=np.random.default_rng(0))
    # evaluation's grid needs no target: the inputs come without one
    out = method.make_inputs(sample, train=False, rng=np.random.default_rng(0))
    assert "target" not in out and out["grid_points"].shape == (16 * 16, 2)
    method.use_oracle_prompts(True)
    with pytest.raises(InputError, match=r"oracle prompts from the ground truth, and u has none"):
        method.make_inputs(sample, train=False, rng=np.random.default_rng(0))


def test_multi_class_targets_are_refused(tiny_models: dict[str, Path]) -> None:
    method = MaskDecoderMethod(load_model(tiny_models["sam"]))
    sample = shapes_samples(1, seed=2, classes=2)[0]
    sample.target[:4, :4] = 2  # make sure class 2 is there
    with pytest.raises(InputError, match=r"binary targets .* class ids \[2\]"):
        method.make_inputs(sample, train=True, rng=np.random.default_rng(0))
