"""Shared fixtures: tiny models of each family, an isolated SAMADAPT_HOME, generated rasters."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

# huggingface_hub reads this once, on import: no test may send its telemetry request to the real hub.
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from samadapt.models.tiny import save_tiny_model  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own SAMADAPT_HOME, and no test can reach a real model hub."""
    home = tmp_path_factory.mktemp("samadapt-home")
    monkeypatch.setenv("SAMADAPT_HOME", str(home))
    monkeypatch.setenv("SAMADAPT_HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    # An empty Hugging Face cache of its own, no token, online unless a test says otherwise.
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders with a tiny random model of each family, in the transformers layout."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: save_tiny_model(root / family, family) for family in ("sam", "sam2", "sam-hq")}


@pytest.fixture(params=["sam", "sam2", "sam-hq"])
def tiny_model(request: pytest.FixtureRequest, tiny_models: dict[str, Path]) -> Path:
    """Each family's tiny model in turn."""
    return tiny_models[request.param]


@pytest.fixture
def textured_image() -> np.ndarray:
    """A (300, 500, 3) uint8 image: noise with a bright disc and a dark square."""
    rng = np.random.default_rng(0)
    img = rng.integers(60, 120, size=(300, 500, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:300, :500]
    img[(xx - 120) ** 2 + (yy - 150) ** 2 < 50**2] = 230
    img[60:140, 300:420] = 10
    return img


@pytest.fixture
def utm_raster(tmp_path: Path, textured_image: np.ndarray) -> Path:
    """A 3-band uint8 GeoTIFF in EPSG:32616 with non-square pixels and a nodata strip."""
    path = tmp_path / "utm.tif"
    data = np.moveaxis(textured_image, 2, 0).copy()
    data[:, :, :20] = 0
    with rasterio.open(
        path, "w", driver="GTiff", width=500, height=300, count=3, dtype="uint8",
        crs="EPSG:32616", transform=from_origin(740000.0, 3740000.0, 0.5, 0.75), nodata=0,
    ) as dst:
        dst.write(data)
    return path


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the ``samadapt`` command in-process; its exit code and its output with whitespace folded."""
    import sys

    from samadapt.cli import main

    monkeypatch.setattr(sys, "argv", ["samadapt", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    code = exc.value.code if isinstance(exc.value.code, int) else (0 if exc.value.code is None else 1)
    return code, " ".join((captured.out + captured.err).split())


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not present: {path}")
    return path


def box_decoder(seg):  # noqa: ANN001, ANN202
    """A stand-in mask decoder that segments exactly its box prompt, in the model-input frame.

    With it, any error in the coordinate chain (map -> pixel -> model input -> low-res mask ->
    original image -> polygon -> map) moves the output polygon away from the prompt.
    """
    size = seg.loaded.preprocessing.size
    side = size // 4
    centres = (torch.arange(side) + 0.5) * 4

    def fake(loaded, embedding, prompts, *, multimask=True):  # noqa: ANN001, ANN202
        if prompts.boxes is not None:
            boxes = torch.as_tensor(prompts.boxes, dtype=torch.float32)
        else:  # points: a square of 24 model pixels around the first point
            first = torch.as_tensor(prompts.points[:, 0], dtype=torch.float32)
            boxes = torch.cat([first - 12, first + 12], dim=1)
        inside_x = (centres[None] >= boxes[:, 0:1]) & (centres[None] <= boxes[:, 2:3])
        inside_y = (centres[None] >= boxes[:, 1:2]) & (centres[None] <= boxes[:, 3:4])
        m = inside_y[:, :, None] & inside_x[:, None, :]
        logits = torch.where(m, 10.0, -10.0)[:, None].repeat(1, 3 if multimask else 1, 1, 1)
        return logits, torch.ones(logits.shape[:2])

    return fake



def fit(method, next_batch, *, steps: int, lr: float) -> list[float]:  # noqa: ANN001
    """The training loop's contract in miniature: AdamW on the trainable parameters.

    ``next_batch()`` gives each step's batch; returns the losses, with the method left in eval mode.
    """
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=lr)
    method.train()
    losses = []
    for _ in range(steps):
        batch = next_batch()
        loss = method.loss(method(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    method.eval()
    return losses

def shapes_samples(n: int, *, size: int = 128, seed: int = 0, classes: int = 1) -> list:
    """Generated training data: bright discs / squares on a textured dark background.

    Returns ``samadapt.methods.base.Sample`` objects; class 1 = discs, class 2 = squares
    when ``classes`` is 2. The task is easy on purpose: a method that learns anything beats
    the all-background and all-foreground baselines by a wide margin.
    """
    from scipy import ndimage

    from samadapt.methods.base import Sample

    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        texture = ndimage.gaussian_filter(rng.normal(size=(size, size)), 2) * 25 + 60
        target = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(size * 0.08, size * 0.18)
            cx, cy = rng.uniform(r, size - r, size=2)
            if classes == 2 and rng.random() < 0.5:
                target[(abs(xx - cx) < r) & (abs(yy - cy) < r)] = 2
            else:
                target[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = 1
        img = texture + (target > 0) * 120 + (target == 2) * 40 + rng.normal(scale=8, size=(size, size))
        pixels = np.repeat(np.clip(img, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
        pixels[:, :, 1] = np.clip(pixels[:, :, 1].astype(int) + 10, 0, 255)
        out.append(Sample(stem=f"s{i:03d}", pixels=pixels, valid=np.ones((size, size), bool), target=target))
    return out
