"""The small U-Net and the ``unet`` method (the "U-Net alone" baseline of seed 003)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.training import fit, shapes_samples
from samadapt.errors import InputError
from samadapt.methods.base import Sample
from samadapt.methods.unet import UNet, UNetMethod
from samadapt.models.loading import load_model


@pytest.mark.parametrize(("depth", "side"), [(1, 8), (2, 32), (3, 40), (4, 64)])
def test_encode_levels_have_the_documented_shapes(depth: int, side: int) -> None:
    net = UNet(in_channels=5, out_channels=3, base=4, depth=depth)
    x = torch.randn(2, 5, side, side + 2**depth)
    feats = net.encode(x)
    assert len(feats) == depth + 1
    for level, f in enumerate(feats):
        assert f.shape == (2, 4 * 2**level, side // 2**level, (side + 2**depth) // 2**level)
    assert net.decode(feats).shape == (2, 3, side, side + 2**depth)


@pytest.mark.parametrize(("depth", "hw"), [(2, (30, 45)), (3, (17, 64)), (4, (50, 33))])
def test_forward_pads_any_size_and_crops_back(depth: int, hw: tuple[int, int]) -> None:
    net = UNet(base=4, depth=depth).eval()
    x = torch.randn(1, 3, *hw)
    out = net(x)
    assert out.shape == (1, 1, *hw)
    # the same as padding by hand: the crop is the top-left corner of the padded result
    m = 2**depth
    padded = torch.nn.functional.pad(x, (0, -hw[1] % m, 0, -hw[0] % m))
    assert torch.allclose(out, net(padded)[..., : hw[0], : hw[1]])


def test_encode_rejects_sizes_and_bands_it_cannot_take() -> None:
    net = UNet(base=4, depth=3)
    with pytest.raises(InputError, match="multiples of 2\\*\\*depth = 8"):
        net.encode(torch.zeros(1, 3, 20, 16))
    with pytest.raises(InputError, match="takes \\(B, 3, H, W\\)"):
        net.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(InputError, match="depth must be an integer of at least 1"):
        UNet(depth=0)


def test_every_parameter_receives_gradient() -> None:
    """Skip connections and every level are wired into the output."""
    net = UNet(base=4, depth=3)
    net(torch.randn(2, 3, 32, 32)).square().mean().backward()
    starved = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert starved == []


def _batch(method: UNetMethod, samples: list[Sample], rng: np.random.Generator) -> dict[str, torch.Tensor]:
    items = [method.make_inputs(s, train=True, rng=rng) for s in samples]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _foreground_iou(method: UNetMethod, samples: list[Sample]) -> float:
    inter = union = 0
    method.eval()
    with torch.no_grad():
        for s in samples:
            probs = method.probabilities(method(_batch(method, [s], np.random.default_rng(0))))
            pred = method.to_original(probs[0], method.geometry_of(*s.target.shape)).argmax(0).numpy() > 0
            truth = s.target > 0
            inter += int((pred & truth).sum())
            union += int((pred | truth).sum())
    return inter / union


def test_unet_method_learns_shapes_and_round_trips(tiny_models: dict[str, Path]) -> None:
    base = load_model(tiny_models["sam"])
    torch.manual_seed(0)
    method = UNetMethod(base, width=8, depth=3)
    assert method.output_side == 128
    train, test = shapes_samples(16, seed=1), shapes_samples(8, seed=2)
    rng = np.random.default_rng(0)
    losses = fit(method, lambda: _batch(method, [train[i] for i in rng.choice(len(train), 4, replace=False)], rng),
                 steps=60, lr=3e-3)
    assert np.mean(losses[-10:]) < 0.65 * np.mean(losses[:10])

    iou = _foreground_iou(method, test)
    all_foreground = float(np.mean([(s.target > 0).mean() for s in test]))
    print(f"unet held-out IoU {iou:.3f}; all-foreground {all_foreground:.3f}; all-background 0")
    assert iou > 0.7 > all_foreground + 0.4

    # artifact round trip: batch-norm statistics travel with the weights
    state = method.trainable_state_dict()
    assert "unet.down.0.1.running_mean" in state
    config = json.loads(json.dumps(method.config()))
    assert config["method"] == "unet"
    torch.manual_seed(123)
    again = UNetMethod(base, num_classes=config["num_classes"], in_channels=config["in_channels"], **config["options"])
    result = again.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    method.eval(), again.eval()
    batch = _batch(method, test[:3], rng)
    with torch.no_grad():
        assert torch.equal(method(batch), again(batch))


def test_unet_method_inputs_classes_and_bands(tiny_models: dict[str, Path]) -> None:
    base = load_model(tiny_models["sam"])
    method = UNetMethod(base, num_classes=3, width=4, depth=2)
    sample = shapes_samples(1, size=96, seed=3, classes=2)[0]
    inputs = method.make_inputs(sample, train=False, rng=np.random.default_rng(0))
    assert inputs["image"].shape == (3, 128, 128) and inputs["target"].shape == (128, 128)
    assert set(inputs["target"].unique().tolist()) <= {0, 1, 2, 255}
    probs = method.probabilities(method({k: v[None] for k, v in inputs.items()}))
    assert probs.shape == (1, 3, 128, 128)
    assert torch.allclose(probs.sum(1), torch.ones(1, 128, 128), atol=1e-5)

    four = Sample("four", np.zeros((40, 40, 4), np.uint8), np.ones((40, 40), bool))
    with pytest.raises(InputError, match="in_channels=4"):
        method.make_inputs(four, train=False, rng=np.random.default_rng(0))
    multi = UNetMethod(base, in_channels=4, width=4, depth=2)
    assert multi.make_inputs(four, train=False, rng=np.random.default_rng(0))["image"].shape == (4, 128, 128)
