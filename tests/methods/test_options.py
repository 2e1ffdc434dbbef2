"""Declared method options: checked on construction, listed for --help-options, and every one of
them changes something a user could observe (prompts, module shapes, the loss, what trains)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers.training import shapes_samples
from samadapt.errors import InputError
from samadapt.methods import METHOD_NAMES, describe_options, method_class, option_rows, validate_options
from samadapt.methods.base import AdaptationMethod, Option, Sample
from samadapt.models.loading import LoadedModel, load_model

#: Constructor keywords that are not options: the model and the class and band counts.
STRUCTURAL = {"self", "base", "num_classes", "in_channels", "options"}


@pytest.fixture(scope="module")
def bases(tiny_models: dict[str, Path]) -> dict[str, LoadedModel]:
    return {family: load_model(path) for family, path in tiny_models.items()}


def _stack(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _inputs(method: AdaptationMethod, samples: list[Sample], *, train: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return _stack([method.make_inputs(s, train=train, rng=rng) for s in samples])


def _bad_value(opt: Option) -> Any:
    """A value of the wrong type for an option."""
    return {bool: "yes", int: 1.5, float: "a lot", str: 3, list: 7}[opt.type]


def _out_of_range(opt: Option) -> Any:
    """A value of the right type outside the option's range or choices, or None when it has neither."""
    if opt.choices:
        return "none-of-these"
    if opt.type in (int, float) and opt.low is not None:
        return opt.type(opt.low) if opt.low_open else opt.type(opt.low - 1)
    if opt.type in (int, float) and opt.high is not None:
        return opt.type(opt.high) if opt.high_open else opt.type(opt.high + 1)
    if opt.type is list and opt.length:
        return [0] * (opt.length + 1) if opt.item is int else ["x"] * (opt.length + 1)
    return None


ALL_OPTIONS = [(m, name) for m in METHOD_NAMES for name in method_class(m).OPTIONS]


# --- declarations -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_declarations_match_the_constructor_keywords_and_defaults(method: str) -> None:
    cls = method_class(method)
    params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if n not in STRUCTURAL}
    assert list(params) == list(cls.OPTIONS)  # same names, same order
    for name, opt in cls.OPTIONS.items():
        assert opt.check(method, name, params[name].default) == opt.check(method, name, opt.default), name
        assert opt.help and not opt.help.endswith("."), name


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_validate_fills_every_default(method: str) -> None:
    cls = method_class(method)
    options = validate_options(method, {})
    assert list(options) == list(cls.OPTIONS)
    assert options == {name: opt.default for name, opt in cls.OPTIONS.items()}


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_unknown_option_names_the_accepted_ones(method: str) -> None:
    cls = method_class(method)
    with pytest.raises(InputError) as err:
        cls.validate_options({"no_such_option": 1})
    message = str(err.value)
    assert f"{method} has no option 'no_such_option'" in message
    assert all(name in message for name in cls.OPTIONS)


def test_unknown_option_suggests_a_close_name(bases: dict[str, LoadedModel]) -> None:
    with pytest.raises(InputError, match=r"has no option 'eroded' \(did you mean erode\?\); its options are: prompt"):
        build("mask-decoder", bases, eroded=5)


@pytest.mark.parametrize(("method", "name"), ALL_OPTIONS)
def test_wrong_types_and_ranges_name_the_option_and_the_value(method: str, name: str) -> None:
    cls = method_class(method)
    opt = cls.OPTIONS[name]
    for value in (_bad_value(opt), _out_of_range(opt)):
        if value is None:
            continue
        with pytest.raises(InputError) as err:
            cls.validate_options({name: value})
        message = str(err.value)
        assert message.startswith(f"{method} option {name} must be {opt.allowed()}, got {value!r}"), message
    if not opt.nullable:
        with pytest.raises(InputError, match=f"option {name} must be"):
            cls.validate_options({name: None})


def test_values_are_normalised_to_plain_types() -> None:
    out = validate_options("lora", {"rank": np.int64(8), "dropout": 0, "target_modules": "qkv",
                                    "rgb_bands": (2, 1, 0), "unfreeze": np.bool_(True)})
    assert out["rank"] == 8 and type(out["rank"]) is int
    assert out["dropout"] == 0.0 and type(out["dropout"]) is float
    assert out["target_modules"] == ["qkv"] and out["rgb_bands"] == [2, 1, 0] and out["unfreeze"] is True
    assert validate_options("lora", {"alpha": None})["alpha"] is None  # null: work it out from the rank
    with pytest.raises(InputError, match=r"lora option rgb_bands must be a list of 3 integers, got \[0, -1, 2\]"):
        validate_options("lora", {"rgb_bands": [0, -1, 2]})
    with pytest.raises(InputError, match=r"got inf"):
        validate_options("mask-decoder", {"box_noise": float("inf")})


def test_the_river_tutorials_perturbation_is_box_noise() -> None:
    assert validate_options("mask-decoder", {"perturbation": 10})["box_noise"] == 10.0
    assert "perturbation" not in validate_options("mask-decoder", {"perturbation": 10})
    # constructors pass every keyword, so the declared name at its default gives way to the alias
    assert validate_options("mask-decoder", {"box_noise": 0.0, "perturbation": 4})["box_noise"] == 4.0
    assert validate_options("mask-decoder", {"box_noise": 4, "perturbation": 4})["box_noise"] == 4.0
    with pytest.raises(InputError, match=r"box_noise=3 and perturbation=4 set the same thing; give only box_noise"):
        validate_options("mask-decoder", {"box_noise": 3, "perturbation": 4})


def test_describe_options_lists_every_option() -> None:
    for method in METHOD_NAMES:
        rows = option_rows(method)
        assert [r[0] for r in rows] == list(method_class(method).OPTIONS)
        text = describe_options(method)
        assert text.startswith(f"Options of {method} (give each as --option NAME=VALUE")
        for name, kind, default, help_text in rows:
            line = next(line for line in text.splitlines() if line.startswith(f"{name} "))
            assert kind in line and default in line and help_text in line
    rows = {r[0]: r for r in option_rows("mask-decoder")}
    assert rows["prompt"][1:3] == ("box | point | points", "box")
    assert rows["box_noise"][1:3] == ("float >= 0", "0.0") and "also accepted as perturbation" in rows["box_noise"][3]
    assert option_rows("lora")[1][1:3] == ("float > 0 or null", "null")
    assert {r[0]: r[1] for r in option_rows("lora")}["dropout"] == "float in [0, 1)"
    assert {r[0]: r[1] for r in option_rows("lora")}["rgb_bands"] == "list[int] (3)"
    with pytest.raises(InputError, match="unknown method 'nope'"):
        describe_options("nope")


@pytest.mark.parametrize("method", [m for m in METHOD_NAMES if m != "encoder-adapter"])
def test_single_stage_methods_ignore_the_epoch(method: str, bases: dict[str, LoadedModel]) -> None:
    m = build(method, bases)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.begin_epoch(0, 1)
    m.begin_epoch(3, 5)
    assert m.selection_start(5) == 0 and m.training
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


# --- every option has an effect ---------------------------------------------------------------------
def build(method: str, bases: dict[str, LoadedModel], family: str = "sam", **options: Any) -> AdaptationMethod:
    torch.manual_seed(0)
    return method_class(method)(bases[family], **options)


def _small_region_sample() -> Sample:
    """A 64 x 64 image with one 8 x 8 square and one 2 x 2 square."""
    target = np.zeros((64, 64), np.uint8)
    target[8:16, 8:16] = 1
    target[40:42, 40:42] = 1
    pixels = np.repeat((40 + 150 * target).astype(np.uint8)[:, :, None], 3, axis=2)
    return Sample("small", pixels, np.ones((64, 64), bool), target)


def _lora_layer(method: Any, suffix: str = "qkv") -> Any:
    return next(m for n, m in method.encoder.named_modules() if n.endswith(suffix) and hasattr(m, "lora_A"))


def _adapted_layers(method: Any) -> set[str]:
    return {n.rsplit(".", 1)[-1] for n, m in method.encoder.named_modules() if hasattr(m, "lora_A")}


def _trainable(method: AdaptationMethod) -> int:
    return sum(p.numel() for p in method.parameters() if p.requires_grad)


def _loss_of_fixed_output(method: Any, samples: list[Sample]) -> float:
    """mask-decoder's loss on fixed candidate masks and IoUs (so only the loss settings differ)."""
    from samadapt.methods.mask_decoder import pack_output

    method.use_oracle_prompts(True)  # per-object targets: the prompts of training, without box noise
    batch = _inputs(method, samples, train=False)
    target = batch["object_target"]
    right = torch.where(target == 1, 4.0, -4.0)
    masks = torch.stack([right, -right, 0.5 * right], dim=2)
    return method.loss(pack_output(masks, torch.full(masks.shape[:3], 0.5)), batch).item()


def _grid_probabilities(method: Any, samples: list[Sample]) -> torch.Tensor:
    """mask-decoder's object probabilities at evaluation without oracle prompts (the automatic grid)."""
    with torch.no_grad():
        return method.eval().probabilities(method(_inputs(method, samples, train=False)))[:, 1]


def _stage_loss(method: Any, samples: list[Sample], epoch: int) -> float:
    """encoder-adapter's training loss in the stage of ``epoch`` of a 2-epoch two-stage run."""
    method.train()
    method.begin_epoch(epoch, 2)
    batch = _inputs(method, samples)
    return method.loss(method(batch), batch).item()


def _unet_gets_gradient(method: Any, samples: list[Sample]) -> bool:
    method.train()
    method.begin_epoch(0, 2)
    batch = _inputs(method, samples)
    method.loss(method(batch), batch).backward()
    grad = method.unet.down[0][0].weight.grad
    return grad is not None and bool(grad.abs().sum() > 0)


def _positive_depths(method: Any) -> tuple[torch.Tensor, np.ndarray]:
    """Points of one object (model frame) and the distance of each to the object's edge (original pixels)."""
    from scipy import ndimage

    target = np.zeros((128, 128), np.uint8)
    target[20:100, 30:110] = 1
    pixels = np.repeat((40 + 150 * target).astype(np.uint8)[:, :, None], 3, axis=2)
    out = method.make_inputs(Sample("big", pixels, np.ones(target.shape, bool), target), train=True,
                             rng=np.random.default_rng(3))
    points = out["points"][0][out["labels"][0] == 1] / 2  # 128 -> 256 model input: halve back
    depth = ndimage.distance_transform_edt(np.pad(target, 1))[1:-1, 1:-1]
    return out["points"][0], depth[points[:, 1].long().numpy(), points[:, 0].long().numpy()]


# (method, base options, option, changed value, family, check(default method, changed method))
Check = Callable[[Any, Any], None]
SAMPLES = shapes_samples(2, seed=11)


def _differs(a: Any, b: Any) -> None:
    assert not (torch.equal(a, b) if isinstance(a, torch.Tensor) and a.shape == b.shape else a == b), (a, b)


EFFECTS: list[tuple[str, dict[str, Any], str, Any, str, Check]] = [
    # domain-decoder: module shapes
    ("domain-decoder", {}, "width", 32, "sam",
     lambda a, b: _differs(a.up1[0].out_channels, b.up1[0].out_channels)),
    ("domain-decoder", {}, "use_high_res", True, "sam2",
     lambda a, b: _differs(a.up2[0].in_channels, b.up2[0].in_channels)),
    # unet: module shapes
    ("unet", {}, "width", 4, "sam", lambda a, b: _differs(a.unet.widths, b.unet.widths)),
    ("unet", {}, "depth", 2, "sam", lambda a, b: _differs(len(a.unet.down), len(b.unet.down))),
    # lora: adapter shapes, scaling, layers, what trains, the inputs
    ("lora", {}, "rank", 2, "sam",
     lambda a, b: _differs(_lora_layer(a).lora_A["default"].weight.shape,
                           _lora_layer(b).lora_A["default"].weight.shape)),
    ("lora", {}, "alpha", 16.0, "sam",
     lambda a, b: _differs(_lora_layer(a).scaling["default"], _lora_layer(b).scaling["default"])),
    ("lora", {}, "target_modules", ["proj"], "sam", lambda a, b: _differs(_adapted_layers(a), _adapted_layers(b))),
    ("lora", {}, "dropout", 0.5, "sam",
     lambda a, b: _differs(repr(_lora_layer(a).lora_dropout["default"]), repr(_lora_layer(b).lora_dropout["default"]))),
    ("lora", {}, "unfreeze", True, "sam", lambda a, b: _differs(_trainable(a), _trainable(b))),
    ("lora", {"in_channels": 4}, "rgb_bands", [3, 1, 0], "sam",
     lambda a, b: _differs(a.band_adapter.conv.weight, b.band_adapter.conv.weight)),
    ("lora", {}, "augment", True, "sam",
     lambda a, b: _differs(_inputs(a, SAMPLES)["target"], _inputs(b, SAMPLES)["target"])),
    # mask-decoder: the prompts, the output, the loss
    ("mask-decoder", {}, "prompt", "point", "sam",
     lambda a, b: _differs(sorted(_inputs(a, SAMPLES)), sorted(_inputs(b, SAMPLES)))),
    ("mask-decoder", {"prompt": "points"}, "n_pos", 3, "sam",
     lambda a, b: _differs(_inputs(a, SAMPLES)["points"].shape, _inputs(b, SAMPLES)["points"].shape)),
    ("mask-decoder", {"prompt": "point"}, "n_neg", 2, "sam",
     lambda a, b: _differs(_inputs(a, SAMPLES)["labels"].shape, _inputs(b, SAMPLES)["labels"].shape)),
    ("mask-decoder", {"prompt": "points", "n_pos": 6}, "erode", 12, "sam",
     lambda a, b: _differs(_positive_depths(a)[0], _positive_depths(b)[0])),
    ("mask-decoder", {}, "box_noise", 6.0, "sam",
     lambda a, b: _differs(_inputs(a, SAMPLES)["boxes"], _inputs(b, SAMPLES)["boxes"])),
    ("mask-decoder", {}, "max_objects", 2, "sam",
     lambda a, b: _differs(_inputs(a, SAMPLES)["object_valid"].shape, _inputs(b, SAMPLES)["object_valid"].shape)),
    ("mask-decoder", {}, "multimask", "single", "sam",
     lambda a, b: _differs(a.eval()(_inputs(a, SAMPLES)).shape, b.eval()(_inputs(b, SAMPLES)).shape)),
    ("mask-decoder", {}, "iou_weight", 3.0, "sam",
     lambda a, b: _differs(_loss_of_fixed_output(a, SAMPLES), _loss_of_fixed_output(b, SAMPLES))),
    ("mask-decoder", {}, "eval_grid", 4, "sam",
     lambda a, b: _differs(_inputs(a, SAMPLES, train=False)["grid_points"].shape,
                           _inputs(b, SAMPLES, train=False)["grid_points"].shape)),
    ("mask-decoder", {}, "eval_iou_threshold", 0.0, "sam",
     lambda a, b: _differs(_grid_probabilities(a, SAMPLES), _grid_probabilities(b, SAMPLES))),
    # encoder-adapter: module shapes, prompts, the loss of each stage, what trains
    ("encoder-adapter", {}, "width", 8, "sam", lambda a, b: _differs(a.unet.widths, b.unet.widths)),
    ("encoder-adapter", {}, "depth", 2, "sam", lambda a, b: _differs(len(a.unet.down), len(b.unet.down))),
    ("encoder-adapter", {}, "unet_scale", 0.25, "sam",
     lambda a, b: _differs(_inputs(a, SAMPLES)["image"].shape, _inputs(b, SAMPLES)["image"].shape)),
    ("encoder-adapter", {}, "level", 1, "sam",
     lambda a, b: _differs(a.adapter["image"].in_channels, b.adapter["image"].in_channels)),
    ("encoder-adapter", {}, "max_objects", 1, "sam",
     lambda a, b: _differs(_inputs(a, SAMPLES)["valid"].shape, _inputs(b, SAMPLES)["valid"].shape)),
    ("encoder-adapter", {}, "min_area", 5, "sam",
     lambda a, b: _differs(_inputs(a, [_small_region_sample()])["valid"].sum(),
                           _inputs(b, [_small_region_sample()])["valid"].sum())),
    ("encoder-adapter", {}, "unet_weight", 2.0, "sam",
     lambda a, b: _differs(_stage_loss(a, SAMPLES, 0), _stage_loss(b, SAMPLES, 0))),
    ("encoder-adapter", {}, "sam_weight", 2.0, "sam",
     lambda a, b: _differs(_stage_loss(a, SAMPLES, 1), _stage_loss(b, SAMPLES, 1))),
    ("encoder-adapter", {}, "iou_weight", 2.0, "sam",
     lambda a, b: _differs(_stage_loss(a, SAMPLES, 1), _stage_loss(b, SAMPLES, 1))),
    ("encoder-adapter", {"schedule": "joint", "unet_weight": 0.0}, "detach_features", True, "sam",
     lambda a, b: _differs(_unet_gets_gradient(a, SAMPLES), _unet_gets_gradient(b, SAMPLES))),
    ("encoder-adapter", {}, "eval_prompts", "truth", "sam",
     lambda a, b: _differs(_inputs(a, SAMPLES, train=False)["from_unet"],
                           _inputs(b, SAMPLES, train=False)["from_unet"])),
    ("encoder-adapter", {}, "schedule", "joint", "sam",
     lambda a, b: _differs([a.stage_for_epoch(0, 4)], [b.stage_for_epoch(0, 4)])),
    ("encoder-adapter", {}, "unet_fraction", 0.25, "sam",
     lambda a, b: _differs([a.stage_for_epoch(e, 4) for e in range(4)], [b.stage_for_epoch(e, 4) for e in range(4)])),
]


def test_every_declared_option_has_an_effect_test() -> None:
    covered = {(m, name) for m, _, name, *_ in EFFECTS}
    assert covered == set(ALL_OPTIONS)


@pytest.mark.parametrize(("method", "context", "name", "value", "family", "check"), EFFECTS,
                         ids=[f"{m}-{name}" for m, _, name, *_ in EFFECTS])
def test_each_option_changes_something(method: str, context: dict[str, Any], name: str, value: Any, family: str,
                                       check: Check, bases: dict[str, LoadedModel]) -> None:
    default = build(method, bases, family, **context)
    changed = build(method, bases, family, **{**context, name: value})
    assert changed.options[name] == value and default.options[name] != value
    assert changed.config()["options"][name] == value
    check(default, changed)


def test_erode_keeps_sampled_points_inside_the_object(bases: dict[str, LoadedModel]) -> None:
    loose = build("mask-decoder", bases, prompt="points", n_pos=6)
    eroded = build("mask-decoder", bases, prompt="points", n_pos=6, erode=12)
    _, depth_loose = _positive_depths(loose)
    _, depth_eroded = _positive_depths(eroded)
    assert (depth_eroded > 12).all() and len(depth_eroded) == 6
    assert (depth_loose <= 12).any()  # without erosion some positives land near the edge


def test_erode_applies_to_rough_mask_prompts_too(bases: dict[str, LoadedModel],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import samadapt.prompts.rough as rough

    seen: list[int] = []
    original = rough.prompts_from_rough

    def spy(mask: np.ndarray, options: Any = None) -> Any:
        seen.append(options.erode)
        return original(mask, options)

    monkeypatch.setattr(rough, "prompts_from_rough", spy)
    method = build("mask-decoder", bases, prompt="points", n_pos=3, erode=2).eval()
    s = SAMPLES[0]
    method.predict(s.pixels, rough=s.target == 1)
    assert seen == [2]


def test_perturbation_moves_training_boxes_as_box_noise_does(bases: dict[str, LoadedModel]) -> None:
    tight = _inputs(build("mask-decoder", bases), SAMPLES)["boxes"]
    noisy = _inputs(build("mask-decoder", bases, box_noise=10), SAMPLES)["boxes"]
    perturbed = build("mask-decoder", bases, perturbation=10)
    assert perturbed.box_noise == 10.0 and perturbed.config()["options"]["box_noise"] == 10.0
    assert torch.equal(_inputs(perturbed, SAMPLES)["boxes"], noisy)
    assert not torch.equal(noisy, tight)
    valid = _inputs(perturbed, SAMPLES)["object_valid"]
    assert (noisy - tight)[valid].abs().max() <= 2 * 10 + 1e-4  # 10 px of a 128 px image, in the 256 px input
    # evaluation with oracle prompts keeps the tight box
    perturbed.use_oracle_prompts(True)
    assert torch.equal(_inputs(perturbed, SAMPLES, train=False)["boxes"], tight)


@pytest.mark.parametrize(("options", "match"), [
    ({"erode": 3}, r"erode=3 keeps sampled positive points inside the object, which needs prompt 'points' with "
                   r"n_pos >= 2 .* got prompt 'box' with n_pos=1"),
    ({"prompt": "points", "erode": 3}, r"n_pos >= 2"),
    ({"prompt": "point", "perturbation": 5},
     r"box_noise=5.0 \(perturbation\) shifts box prompts, but prompt is 'point'"),
    ({"n_pos": 3}, r"n_pos=3 sets the positive points of prompt 'points', but prompt is 'box'"),
    ({"box_noise": "10px"}, r"mask-decoder option box_noise must be a finite number >= 0, got '10px'"),
])
def test_mask_decoder_refuses_options_that_would_change_nothing(options: dict[str, Any], match: str,
                                                                bases: dict[str, LoadedModel]) -> None:
    with pytest.raises(InputError, match=match):
        build("mask-decoder", bases, **options)


@pytest.mark.parametrize(("method", "options", "family", "match"), [
    ("domain-decoder", {"use_high_res": True}, "sam", r"use_high_res needs a SAM 2 model.*this model is 'sam'"),
    ("domain-decoder", {"width": 24}, "sam", r"width must be 4, 8, 16 or a multiple of 32, got 24"),
    ("lora", {"rgb_bands": [2, 1, 0]}, "sam", r"rgb_bands=\[2, 1, 0\] .* with 3 input bands there is no band adapter"),
    ("encoder-adapter", {"detach_features": True}, "sam", r"detach_features applies to schedule joint"),
    ("encoder-adapter", {"schedule": "joint", "unet_fraction": 0.3}, "sam",
     r"unet_fraction=0.3 splits the epochs of the two-stage schedule, but schedule is joint"),
    ("encoder-adapter", {"unet_weight": 0.0}, "sam", r"unet_weight=0 leaves stage one .* nothing to train"),
    ("encoder-adapter", {"sam_weight": 0.0}, "sam", r"sam_weight=0 and iou_weight=0 leave stage two"),
])
def test_options_that_would_change_nothing_are_refused(method: str, options: dict[str, Any], family: str, match: str,
                                                       bases: dict[str, LoadedModel]) -> None:
    with pytest.raises(InputError, match=match):
        build(method, bases, family, **options)
