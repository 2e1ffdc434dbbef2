"""Every method through the one training loop: it learns, beats trivial baselines, and its
adapter folder reproduces its predictions exactly after loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.realdata import shared_data
from helpers.training import shapes_samples
from samadapt.methods import build_method
from samadapt.models.loading import load_model
from samadapt.train.adapter import load_adapter, save_adapter
from samadapt.train.loop import TrainConfig, evaluate_method, train
from samadapt.train.metrics import evaluate

# small settings that learn the generated shapes in a few seconds on 2 cores
CASES = {
    "domain-decoder": ({"width": 32}, TrainConfig(epochs=6, lr=3e-3)),
    # scored without ground truth (the automatic grid); the tiny model's IoU head predicts about
    # 0.17 for every mask after 20 epochs, so SAM's 0.88 would keep none: keep every grid mask
    "mask-decoder": ({"prompt": "box", "eval_iou_threshold": 0.0}, TrainConfig(epochs=20, lr=1e-3)),
    "lora": ({"rank": 4}, TrainConfig(epochs=8, lr=3e-3)),
    "encoder-adapter": ({}, TrainConfig(epochs=10, lr=3e-3)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_method_learns_and_round_trips(name: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    options, cfg = CASES[name]
    torch.manual_seed(0)
    base = load_model(tiny_models["sam"])
    if name == "encoder-adapter":
        # its SAM decoder stays frozen: a random one cannot segment anything, so give it one
        # that has learned the shapes (a stand-in for a real checkpoint)
        from methods.test_encoder_adapter import pretrain_decoder

        pretrain_decoder(base)
    method = build_method(name, base, **options)
    train_s, val_s = shapes_samples(12, seed=0), shapes_samples(6, seed=1)
    before, _ = evaluate_method(method, val_s)
    if name == "encoder-adapter":  # its two stages, told the epoch as the loop tells it
        from methods.test_encoder_adapter import staged_train

        result = staged_train(method, train_s, val_s, tmp_path / "run", cfg)  # type: ignore[arg-type]
    else:
        result = train(method, train_s, val_s, tmp_path / "run", cfg, progress=False)
    losses = [r["train_loss"] for r in result.history]
    assert min(losses[-2:]) < losses[0], losses
    after, _ = evaluate_method(method, val_s)
    targets = [s.target for s in val_s]
    baselines = [evaluate([np.full_like(t, v) for t in targets], targets, 2).miou for v in (0, 1)]
    assert after.miou > max(baselines) + 0.1, (name, after.miou, baselines, before.miou)
    path = save_adapter(method, tmp_path / "adapter")
    adapter = load_adapter(path, base=base)
    reloaded, _ = evaluate_method(adapter.method, val_s)
    np.testing.assert_array_equal(reloaded.confusion, after.confusion)


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("name", ["domain-decoder", "encoder-adapter"])
def test_losses_fall_on_atlanta_buildings(name: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from samadapt.data.build import build_from_vectors
    from samadapt.data.dataset import SegDataset
    from samadapt.train.learner import load_samples

    folder = shared_data("spacenet_geotiff", "atlanta_buildings")
    raster = folder / "sample_geotiff.tif"
    vectors = folder / "geotiff_labels.geojson"
    root = build_from_vectors(raster, vectors, tmp_path / "atlanta", tile_size=300)
    ds = SegDataset.open(root)
    samples = load_samples(ds, ds.stems()[:6])
    torch.manual_seed(0)
    method = build_method(name, load_model(tiny_models["sam"]), **CASES[name][0])
    if name == "encoder-adapter":
        # Stage one (the U-Net) must learn; stage two trains the 1x1 convolution through the tiny
        # model's random frozen decoder, whose masks barely depend on the embedding (see
        # test_encoder_adapter), so its loss only has to be finite here.
        from methods.test_encoder_adapter import staged_train

        config = TrainConfig(epochs=4, lr=3e-3)
        result = staged_train(method, samples, [], tmp_path / "run", config)  # type: ignore[arg-type]
        losses = [r["train_loss"] for r in result.history]
        assert losses[1] < losses[0] and np.isfinite(losses[2:]).all(), losses
        return
    result = train(method, samples, [], tmp_path / "run", TrainConfig(epochs=4, lr=3e-3), progress=False)
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0], losses


def test_learner_fit_unfreeze_save_load(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """The arcgis.learn-shaped API: fit, unfreeze, fit again, save, load, predict."""
    from PIL import Image

    from samadapt.data.splits import write_splits
    from samadapt.mapping.outputs import write_mask_png
    from samadapt.train.learner import Learner

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    samples = shapes_samples(6, seed=4)
    for s in samples:
        Image.fromarray(s.pixels).save(root / "images" / f"{s.stem}.png")
        write_mask_png(root / "masks" / f"{s.stem}.png", s.target, overwrite=True)
    stems = [s.stem for s in samples]
    write_splits(root, {"train": stems[:4], "val": stems[4:5], "test": stems[5:]})
    base = load_model(tiny_models["sam"])
    encoder_before = {k: v.clone() for k, v in base.model.vision_encoder.state_dict().items()}
    learner = Learner(root, method="lora", model=base, labels=3)
    learner.fit(1, progress=False, out_dir=tmp_path / "run1")
    lora_state = learner.method.trainable_state_dict()
    learner.unfreeze()
    n_trainable = sum(p.numel() for p in learner.method.parameters() if p.requires_grad)
    assert n_trainable > sum(v.numel() for v in lora_state.values())
    for k, v in lora_state.items():  # what was learned is carried over
        torch.testing.assert_close(learner.method.state_dict()[k], v)
    learner.fit(1, lr=1e-4, progress=False, out_dir=tmp_path / "run2")
    for k, v in base.model.vision_encoder.state_dict().items():  # the shared base never changes
        torch.testing.assert_close(v, encoder_before[k])
    path = learner.save(tmp_path / "adapter")
    pred = load_adapter(path, base=base).predict(root / "images" / f"{stems[5]}.png")
    assert pred.labels.shape == (128, 128) and pred.probabilities.shape == (2, 128, 128)
    assert learner.evaluate("test").num_pixels == 128 * 128
