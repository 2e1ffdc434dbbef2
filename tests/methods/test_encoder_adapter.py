"""The ``encoder-adapter`` method (the encoder-adaptation abstract): a U-Net's encoder feeding
SAM's frozen decoder, trained in two stages (the U-Net, then the 1x1 convolutions) by default.

The tiny random SAM's decoder has weights of scale 0.02 everywhere, so its mask logits
stay within about 1e-3 of zero and its IoU head says nothing, whatever the embedding: a
frozen decoder like that cannot show learning. The learning tests therefore first give
the tiny SAM a decoder that has learned something, as a public checkpoint has: its mask
decoder is trained briefly on the shapes with its own (random) image encoder, then
frozen. Everything after that runs the method exactly as a user would.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers.training import shapes_samples
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
from samadapt.models import sam as runtime
from samadapt.models.loading import LoadedModel, load_model
from samadapt.train.loop import TrainConfig, TrainResult, train

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


def staged_train(method: EncoderAdapterMethod, train_samples: list[Sample], val_samples: list[Sample], out: Path,
                 config: TrainConfig, on_epoch: Any = None) -> TrainResult:
    """``samadapt.train.loop.train`` with ``method.begin_epoch(epoch, epochs)`` before every epoch.

    The call the training loop makes (made here through ``on_epoch`` too, so the test does not
    depend on it; making it twice changes nothing).
    """
    method.begin_epoch(0, config.epochs)

    def after(row: dict[str, Any]) -> None:
        if on_epoch is not None:
            on_epoch(row)
        if row["epoch"] + 1 < config.epochs:
            method.begin_epoch(row["epoch"] + 1, config.epochs)

    return train(method, train_samples, val_samples, out, config, progress=False, on_epoch=after)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (batch-norm statistics included), copied."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in before.items() if not torch.equal(v, after[k])]


@pytest.fixture(scope="module")
def trained(tiny_models: dict[str, Path]) -> dict[str, Any]:
    """An encoder-adapter trained in its default two stages, 50 steps each (batch 4), on 16 shapes images."""
    base = load_model(tiny_models["sam"])
    torch.manual_seed(0)
    pretrain_decoder(base)
    sam_before = {k: v.clone() for k, v in base.model.state_dict().items()}
    method = EncoderAdapterMethod(base, **SMALL)
    train_s, test = shapes_samples(16, seed=1), shapes_samples(8, seed=2)
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=3e-3)
    losses: dict[str, list[float]] = {"unet": [], "adapter": []}
    object_losses = []
    snapshots = [(_state(method.unet), _state(method.adapter))]
    for epoch in range(2):  # one "epoch" of 50 steps per stage
        method.train()
        method.begin_epoch(epoch, 2)
        for _ in range(50):
            batch = stack(method, [train_s[i] for i in rng.choice(len(train_s), 4, replace=False)], rng)
            logits = method(batch)
            loss = method.loss(logits, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[method.stage].append(loss.item())  # type: ignore[index]
            parts = getattr(logits, PARTS)
            if parts["object_loss"] is not None:
                object_losses.append(parts["object_loss"][parts["valid"]].mean().item())
        snapshots.append((_state(method.unet), _state(method.adapter)))
    method.eval()
    return {"method": method, "base": base, "sam_before": sam_before, "losses": losses,
            "object_losses": object_losses, "test": test, "snapshots": snapshots}


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


def test_stage_one_trains_the_unet_alone_and_stage_two_the_1x1_convolutions_alone(trained: dict[str, Any]) -> None:
    (unet0, adapter0), (unet1, adapter1), (unet2, adapter2) = trained["snapshots"]
    assert _changed(adapter0, adapter1) == []  # stage one: the 1x1 convolution is untouched
    assert len(_changed(unet0, unet1)) == len(unet0)  # ... and every U-Net tensor moved
    assert _changed(unet1, unet2) == []  # stage two: the U-Net, batch-norm statistics included, is frozen
    assert sorted(_changed(adapter1, adapter2)) == ["image.bias", "image.weight"]


def test_loss_falls_in_each_stage(trained: dict[str, Any]) -> None:
    losses, objects = trained["losses"], trained["object_losses"]
    unet, adapter = losses["unet"], losses["adapter"]
    print(f"stage one (U-Net) loss {np.mean(unet[:10]):.3f} -> {np.mean(unet[-10:]):.3f}; "
          f"stage two (1x1 convolutions) loss {np.mean(adapter[:10]):.3f} -> {np.mean(adapter[-10:]):.3f}")
    assert len(unet) == len(adapter) == 50 and len(objects) == 50  # SAM runs in stage two only
    assert np.mean(unet[-10:]) < 0.8 * np.mean(unet[:10])
    assert np.mean(adapter[-10:]) < 0.8 * np.mean(adapter[:10])


def test_the_training_loop_runs_the_two_stages(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Through samadapt.train.loop.train (AdamW with weight decay, clipping, validation, checkpoints)."""
    base = load_model(tiny_models["sam"])
    torch.manual_seed(0)
    method = EncoderAdapterMethod(base, **SMALL)
    snapshots = [(_state(method.unet), _state(method.adapter))]
    stages = []
    config = TrainConfig(epochs=4, batch_size=2, lr=3e-3, weight_decay=0.1)

    def record(row: dict[str, Any]) -> None:
        snapshots.append((_state(method.unet), _state(method.adapter)))
        stages.append(method.stage)

    result = staged_train(method, shapes_samples(4, seed=1), shapes_samples(2, seed=2), tmp_path, config, record)
    assert stages == ["unet", "unet", "adapter", "adapter"]
    assert all(np.isfinite(row["val_loss"]) for row in result.history)
    for epoch, ((unet_a, adapter_a), (unet_b, adapter_b)) in enumerate(zip(snapshots, snapshots[1:], strict=False)):
        if stages[epoch] == "unet":
            assert _changed(adapter_a, adapter_b) == [] and _changed(unet_a, unet_b), epoch
        else:
            assert _changed(unet_a, unet_b) == [], epoch
            assert sorted(_changed(adapter_a, adapter_b)) == ["image.bias", "image.weight"], epoch


def test_stages_split_the_epochs(tiny_models: dict[str, Path]) -> None:
    base = load_model(tiny_models["sam"])
    method = EncoderAdapterMethod(base, **SMALL)
    assert [method.stage_for_epoch(e, 5) for e in range(5)] == ["unet"] * 2 + ["adapter"] * 3  # round(2.5) = 2
    assert [method.stage_for_epoch(e, 2) for e in range(2)] == ["unet", "adapter"]
    early = EncoderAdapterMethod(base, unet_fraction=0.01, **SMALL)
    assert [early.stage_for_epoch(e, 3) for e in range(3)] == ["unet", "adapter", "adapter"]  # each stage >= 1
    late = EncoderAdapterMethod(base, unet_fraction=0.99, **SMALL)
    assert [late.stage_for_epoch(e, 3) for e in range(3)] == ["unet", "unet", "adapter"]
    assert (method.selection_start(5), early.selection_start(3), late.selection_start(3)) == (2, 1, 2)
    joint = EncoderAdapterMethod(base, schedule="joint", **SMALL)
    assert {joint.stage_for_epoch(e, 3) for e in range(3)} == {"joint"}
    assert joint.stage_for_epoch(0, 1) == "joint" and joint.selection_start(3) == 0
    with pytest.raises(InputError, match="two-stage schedule needs at least 2 epochs .* got 1; .* schedule=joint"):
        method.begin_epoch(0, 1)
    with pytest.raises(InputError, match="epoch 3 lies outside a run of 3 epochs"):
        method.stage_for_epoch(3, 3)
    method.begin_epoch(1, 2)
    method.train()
    assert method.training and not method.unet.training  # the frozen U-Net keeps its batch-norm statistics
    method.eval()
    method.train()
    assert not method.unet.training and method.adapter.training
    method.begin_epoch(0, 2)
    assert method.unet.training


def test_a_loop_that_never_says_the_epoch_trains_jointly_and_warns(tiny_models: dict[str, Path]) -> None:
    torch.manual_seed(0)
    method = EncoderAdapterMethod(load_model(tiny_models["sam"]), **SMALL)
    batch = stack(method, shapes_samples(2, seed=3), np.random.default_rng(0))
    with pytest.warns(UserWarning, match="did not call begin_epoch"):
        logits = method(batch)
    method.loss(logits, batch).backward()
    assert method.adapter["image"].weight.grad.abs().sum() > 0 and method.unet.head.weight.grad.abs().sum() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per method is enough
        method(batch)
        EncoderAdapterMethod(load_model(tiny_models["sam"]), schedule="joint", **SMALL)(batch)  # joint: no warning


def test_evaluation_loss_is_the_adapted_models_own(tiny_models: dict[str, Path]) -> None:
    """Validation losses of both stages compare: the two-stage loss in eval mode is that of the output."""
    from samadapt.methods.base import segmentation_loss

    torch.manual_seed(0)
    method = EncoderAdapterMethod(load_model(tiny_models["sam"]), eval_prompts="truth", **SMALL).eval()
    batch = stack(method, shapes_samples(2, seed=3), np.random.default_rng(0), train=False)
    with torch.no_grad():
        logits = method(batch)
        loss = method.loss(logits, batch)
        assert torch.equal(loss, segmentation_loss(logits, batch["target"], 2))
        for epoch in (0, 1):  # the stage does not change evaluation
            method.begin_epoch(epoch, 2)
            assert torch.equal(method.loss(method(batch), batch), loss)


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


def test_joint_schedule_passes_sams_gradient_to_the_unet(tiny_models: dict[str, Path]) -> None:
    base = load_model(tiny_models["sam"])
    samples = shapes_samples(2, seed=3)
    for detach in (False, True):
        torch.manual_seed(0)
        method = EncoderAdapterMethod(base, schedule="joint", unet_weight=0.0, detach_features=detach, **SMALL)
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
        method.begin_epoch(1, 2)  # stage two, where SAM's masks train the 1x1 convolution
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
    method.begin_epoch(1, 2)
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
    for point, own in zip(inputs["points"], inputs["object_targets"], strict=False):
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
    method.begin_epoch(1, 2)
    batch = stack(method, shapes_samples(2, seed=6, classes=2), np.random.default_rng(0))
    assert set(batch["classes"][batch["valid"] > 0].tolist()) <= {1, 2}
    logits = method(batch)
    assert logits.shape == (2, 3, 64, 64)
    assert torch.allclose(method.probabilities(logits).sum(1), torch.ones(2, 64, 64), atol=1e-5)
    assert torch.isfinite(method.loss(logits, batch))


@pytest.mark.parametrize(("options", "message"), [
    ({"level": 5}, "level must be an encoder level from 0 to depth=2"),
    ({"eval_prompts": "boxes"}, "encoder-adapter option eval_prompts must be one of unet, truth, got 'boxes'"),
    ({"unet_scale": 0.3}, "must be a multiple of 2\\*\\*depth = 4"),
    ({"unet_scale": 0.0}, "unet_scale must be a finite number in \\(0, 1\\], got 0.0"),
    ({"schedule": "stages"}, "schedule must be one of two-stage, joint, got 'stages'"),
    ({"unet_fraction": 1.0}, "unet_fraction must be a finite number in \\(0, 1\\), got 1.0"),
    ({"stages": 2}, "encoder-adapter has no option 'stages'"),
    ({"sam_weight": -1.0}, "sam_weight must be a finite number >= 0"),
    ({"max_objects": 0}, "max_objects must be an integer of at least 1"),
])
def test_bad_options_are_refused(tiny_models: dict[str, Path], options: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        EncoderAdapterMethod(load_model(tiny_models["sam"]), **{**SMALL, **options})
