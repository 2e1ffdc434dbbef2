"""The ``encoder-adapter`` method (seed 003): a U-Net's encoder feeding SAM's frozen decoder.

The tiny random SAM's decoder has weights of scale 0.02 everywhere, so its mask logits
stay within about 1e-3 of zero and its IoU head says nothing, whatever the embedding: a
frozen decoder like that cannot show learning. The learning tests therefore first give
the tiny SAM a decoder that has learned something, as a public checkpoint has: its mask
decoder is trained briefly on the shapes with its own (random) image encoder, then
frozen. Everything after that runs the method exactly as a user would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import shapes_samples
from samadapt.errors import InputError
from samadapt.imagery.preprocess import prepare
from samadapt.methods.base import Sample
from samadapt.methods.encoder_adapter import (
    PARTS,
    EncoderAdapterMethod,
    candidate_ious,
    candidate_losses,
    compare_baselines,
)
from samadapt.models import runtime
from samadapt.models.loading import LoadedModel, load_model


SMALL = {"width": 8, "depth": 2, "unet_scale": 0.25, "max_objects": 4}


def stack(method: EncoderAdapterMethod, samples: list[Sample], rng: np.random.Generator, *, train: bool = True,
          prompts: str | None = None) -> dict[str, torch.Tensor]:
    if prompts is None:
        items = [method.make_inputs(s, train=train, rng=rng) for s in samples]
    else:
        items = [method.inputs(s, prompts=prompts) for s in samples]  # type: ignore[arg-type]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def pretrain_decoder(base: LoadedModel, steps: int = 100) -> None:
    """Train the tiny SAM's mask decoder on its own embeddings of the shapes, then freeze it."""
    samples = shapes_samples(12, seed=5)
    embeddings = runtime.encode(base, torch.stack([prepare(s.pixels, base.preprocessing)[0] for s in samples]))
    helper = EncoderAdapterMethod(base, **SMALL)
    rng = np.random.default_rng(5)
    inputs = stack(helper, samples, rng)
    decoder = base.model.mask_decoder
    for p in decoder.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(decoder.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = rng.choice(len(samples), 4, replace=False)
        out = base.model(image_embeddings=torch.cat([embeddings[i]["image"] for i in idx]),
                         input_points=inputs["points"][idx][:, :, None], multimask_output=True,
                         input_labels=torch.ones(4, inputs["points"].shape[1], 1, dtype=torch.long))
        targets, valid = inputs["object_targets"][idx], inputs["valid"][idx] > 0
        losses = candidate_losses(out.pred_masks, targets)
        iou_error = (out.iou_scores - candidate_ious(out.pred_masks.detach(), targets)) ** 2
        loss = losses.min(-1).values[valid].mean() + iou_error.mean(-1)[valid].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in base.model.parameters():
        p.requires_grad_(False)


@pytest.fixture(scope="module")
def trained(tiny_models: dict[str, Path]) -> dict[str, Any]:
    """An encoder-adapter trained for 100 steps (batch 4) on 16 shapes images."""
    base = load_model(tiny_models["sam"])
    torch.manual_seed(0)
    pretrain_decoder(base)
    sam_before = {k: v.clone() for k, v in base.model.state_dict().items()}
    method = EncoderAdapterMethod(base, **SMALL)
    train, test = shapes_samples(16, seed=1), shapes_samples(8, seed=2)
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=3e-3)
    losses, object_losses = [], []
    method.train()
    for _ in range(100):
        batch = stack(method, [train[i] for i in rng.choice(len(train), 4, replace=False)], rng)
        logits = method(batch)
        loss = method.loss(logits, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        parts = getattr(logits, PARTS)
        losses.append(loss.item())
        object_losses.append(parts["object_loss"][parts["valid"]].mean().item())
    method.eval()
    return {"method": method, "base": base, "sam_before": sam_before, "losses": losses,
            "object_losses": object_losses, "test": test}


def test_only_the_unet_and_the_1x1_convolutions_train(trained: dict[str, Any]) -> None:
    method, base = trained["method"], trained["base"]
    trainable = [n for n, p in method.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("unet.", "adapter.")) for n in trainable)
    assert sorted(n for n in trainable if n.startswith("adapter.")) == ["adapter.image.bias", "adapter.image.weight"]
    assert method.adapter["image"].kernel_size == (1, 1)
    assert not any(p.requires_grad for p in base.model.parameters())
    after = base.model.state_dict()
    changed = [k for k, v in trained["sam_before"].items() if not torch.equal(v, after[k])]
    assert changed == []  # image encoder, prompt encoder and mask decoder untouched


def test_loss_falls(trained: dict[str, Any]) -> None:
    losses, objects = trained["losses"], trained["object_losses"]
    print(f"loss {np.mean(losses[:10]):.3f} -> {np.mean(losses[-10:]):.3f}; "
          f"SAM-path object loss {np.mean(objects[:10]):.3f} -> {np.mean(objects[-10:]):.3f}")
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    assert np.mean(objects[-10:]) < 0.8 * np.mean(objects[:10])


@pytest.mark.parametrize("prompts", ["truth", "unet"])
def test_held_out_iou_beats_trivial_baselines(trained: dict[str, Any], prompts: str) -> None:
    test = trained["test"]
    scores = compare_baselines(trained["method"], test, prompts=prompts)  # type: ignore[arg-type]
    assert set(scores) == {"unet", "sam", "adapted"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    truth = np.concatenate([s.target.ravel() > 0 for s in test])
    all_foreground = truth.sum() / truth.size  # IoU of predicting foreground everywhere
    print(f"{prompts} prompts: {', '.join(f'{k} {v:.3f}' for k, v in scores.items())}; "
          f"all-foreground {all_foreground:.3f}; all-background 0")
    assert scores["adapted"] > max(0.6, all_foreground + 0.3)
    assert scores["unet"] > all_foreground + 0.3
    assert scores["sam"] > 0.0


def test_trainable_state_round_trip_reproduces_logits(trained: dict[str, Any]) -> None:
    method, base = trained["method"], trained["base"]
    state = method.trainable_state_dict()
    assert "unet.down.0.1.running_var" in state  # batch-norm statistics travel too
    config = json.loads(json.dumps(method.config()))
    assert config["method"] == "encoder-adapter"
    torch.manual_seed(99)
    again = EncoderAdapterMethod(base, num_classes=config["num_classes"], in_channels=config["in_channels"],
                                 **config["options"])
    result = again.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    again.eval()
    rng = np.random.default_rng(1)
    for prompts in ("truth", "unet"):
        batch = stack(method, trained["test"][:4], rng, prompts=prompts)
        with torch.no_grad():
            assert torch.equal(method(batch), again(batch))


def test_sam_decoder_passes_gradient_to_the_unet(tiny_models: dict[str, Path]) -> None:
    base = load_model(tiny_models["sam"])
    samples = shapes_samples(2, seed=3)
    for detach in (False, True):
        torch.manual_seed(0)
        method = EncoderAdapterMethod(base, unet_weight=0.0, detach_features=detach, **SMALL)
        batch = stack(method, samples, np.random.default_rng(0))
        method.loss(method(batch), batch).backward()
        assert method.adapter["image"].weight.grad.abs().sum() > 0
        first = method.unet.down[0][0].weight.grad
        assert (first is None or first.abs().sum() == 0) == detach


def test_candidate_scores_follow_the_object_and_skip_ignored_pixels() -> None:
    target = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    target[..., 2:6, 2:6] = 1
    target[..., 0, :] = 255  # ignored: whatever the masks say there does not count
    exact = torch.where(target == 1, 10.0, -10.0).float()
    half = exact.clone()
    half[..., 2:4, :] = -10.0  # covers 8 of the object's 16 pixels
    masks = torch.stack([exact, half, -exact], dim=2)  # (1, 1, 3, 8, 8)
    masks[..., 0, :] = 10.0
    ious = candidate_ious(masks, target)[0, 0]
    assert torch.allclose(ious, torch.tensor([1.0, 0.5, 0.0]))
    losses = candidate_losses(masks, target)[0, 0]
    assert losses[0] < 1e-3 < losses[1] < losses[2]


def test_iou_weight_adds_the_iou_head_error(tiny_models: dict[str, Path]) -> None:
    base = load_model(tiny_models["sam"])
    batch = stack(EncoderAdapterMethod(base, **SMALL), shapes_samples(2, seed=3), np.random.default_rng(0))
    totals, parts = [], []
    for weight in (0.0, 2.0):
        torch.manual_seed(0)
        method = EncoderAdapterMethod(base, iou_weight=weight, **SMALL)
        logits = method(batch)
        totals.append(method.loss(logits, batch))
        parts.append(getattr(logits, PARTS))
    assert parts[0]["iou_loss"] is None
    error = parts[1]["iou_loss"][parts[1]["valid"]].mean()
    assert error > 0
    assert torch.allclose(totals[1] - totals[0], 2.0 * error, atol=1e-5)


@pytest.mark.parametrize(("family", "slots"), [("sam2", ["high_res_0", "high_res_1", "image"]),
                                               ("sam-hq", ["image", "vit_0"])])
def test_other_families_get_every_tensor_their_decoder_reads(tiny_models: dict[str, Path], family: str,
                                                              slots: list[str]) -> None:
    base = load_model(tiny_models[family])
    method = EncoderAdapterMethod(base, width=4, max_objects=3)
    assert sorted(method.adapter.keys()) == slots
    batch = stack(method, shapes_samples(2, seed=4), np.random.default_rng(0))
    logits = method(batch)
    assert logits.shape == (2, 1, 64, 64)
    method.loss(logits, batch).backward()
    starved = [n for n, p in method.adapter.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert starved == []


def test_inputs_prompt_each_region_at_an_interior_point(tiny_models: dict[str, Path]) -> None:
    method = EncoderAdapterMethod(load_model(tiny_models["sam"]), **{**SMALL, "max_objects": 2})
    sample = shapes_samples(1, size=96, seed=7)[0]
    sample.target[:8, :8] = 1  # a fourth, small region
    inputs = method.make_inputs(sample, train=True, rng=np.random.default_rng(0))
    assert inputs["image"].shape == (3, 64, 64) and inputs["target"].shape == (64, 64)
    assert inputs["valid"].tolist() == [1.0, 1.0]  # capped at max_objects
    scale = 96 / 256
    for point, own in zip(inputs["points"], inputs["object_targets"]):
        x, y = (point * scale).round().long().tolist()
        assert sample.target[y, x] == 1  # the point lies on the object, in original pixels
        col, row = (point / 4).long().tolist()
        assert own[row, col] == 1 and 0 < (own == 1).sum() < (inputs["target"] == 1).sum()
    with pytest.raises(InputError, match="ground-truth prompts need one"):
        method.make_inputs(Sample("bare", sample.pixels, sample.valid), train=True, rng=np.random.default_rng(0))
    with pytest.raises(InputError, match="labelled samples"):
        compare_baselines(method, [Sample("bare", sample.pixels, sample.valid)])


def test_prediction_prompts_come_from_the_unet(tiny_models: dict[str, Path]) -> None:
    """Without ground truth, the U-Net's regions give the prompts; no region gives the U-Net's own output."""
    method = EncoderAdapterMethod(load_model(tiny_models["sam"]), **SMALL).eval()
    wide = Sample("wide", np.full((64, 128, 3), 90, np.uint8), np.ones((64, 128), bool))
    batch = stack(method, [wide], np.random.default_rng(0), train=False)
    assert batch["from_unet"].item() == 1.0 and "object_targets" not in batch
    with torch.no_grad():
        method.unet.head.bias.fill_(-50.0)
        logits = method(batch)
        assert not getattr(logits, PARTS)["valid"].any()
        assert torch.equal(logits, getattr(logits, PARTS)["unet"])
        method.unet.head.bias.fill_(50.0)  # everything is foreground: one region, the image itself
        parts = getattr(method(batch), PARTS)
    assert parts["valid"].tolist() == [[True]]
    x, y = parts["points"][0, 0].tolist()
    # the image fills rows 0..127 of the 256 x 256 input (padding below): the point is its middle
    assert abs(x - 128) <= 4 and abs(y - 64) <= 4


def test_several_classes_give_softmax_channels(tiny_models: dict[str, Path]) -> None:
    method = EncoderAdapterMethod(load_model(tiny_models["sam"]), num_classes=3, **SMALL)
    batch = stack(method, shapes_samples(2, seed=6, classes=2), np.random.default_rng(0))
    assert set(batch["classes"][batch["valid"] > 0].tolist()) <= {1, 2}
    logits = method(batch)
    assert logits.shape == (2, 3, 64, 64)
    assert torch.allclose(method.probabilities(logits).sum(1), torch.ones(2, 64, 64), atol=1e-5)
    assert torch.isfinite(method.loss(logits, batch))


@pytest.mark.parametrize(("options", "message"), [
    ({"level": 5}, "level must be an encoder level from 0 to depth=2"),
    ({"eval_prompts": "boxes"}, "eval_prompts must be 'unet' or 'truth'"),
    ({"unet_scale": 0.3}, "must be a multiple of 2\\*\\*depth = 4"),
    ({"unet_scale": 0.0}, "unet_scale must be a fraction"),
    ({"sam_weight": -1.0}, "sam_weight must be a finite number >= 0"),
    ({"max_objects": 0}, "max_objects must be an integer of at least 1"),
])
def test_bad_options_are_refused(tiny_models: dict[str, Path], options: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        EncoderAdapterMethod(load_model(tiny_models["sam"]), **{**SMALL, **options})
