"""Contract tests: each registry model loads as its repository publishes it.

The facts come from ``published.json`` (the repositories' own files and transformers' conversion
scripts). Full-size random models of three layouts are saved exactly as their repositories
are (``config.json`` from the published config class, ``model.safetensors``), put in a
Hugging Face cache and loaded by registry name offline and from the folder, then decode a box
and a point. Every other size is checked on a ``meta``-device model: its recorded architecture
must account for the published file's size, and its published weight names must cover the
image model's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from helpers.hf_cache import put_in_hf_cache
from samadapt.models.check import config_mismatches
from samadapt.models.loading import VIDEO_ONLY_PREFIXES, load_model, locate
from samadapt.models.registry import PUBLISHED_CLASSES, REGISTRY, get_spec, published_config
from samadapt.predict.segmenter import Segmenter
from samadapt.prompts.types import box, point

#: One full-size layout per family and published model_type.
FULL_SIZE = ["sam-vit-base", "sam-hq-vit-base", "sam2.1-hiera-tiny"]

#: The models with an original release whose size the recorded architecture must account for (SAM, SAM-HQ,
#: SAM 2); SAM 3, EdgeTAM and the detectors have contract tests of their own (tests/models/test_sam3.py ...).
RELEASED = [name for name, spec in REGISTRY.items() if spec.official is not None]


def _meta_models(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model as published and the image model samadapt loads from it, on the meta device."""
    spec = get_spec(name)
    config = published_config(spec)
    _, published_cls, image_cls = PUBLISHED_CLASSES[spec.model_type]
    with torch.device("meta"):
        published = getattr(transformers, published_cls)(config)
        if image_cls == published_cls:
            return published, published
        parts = {k: getattr(config, k) for k in ("vision_config", "prompt_encoder_config", "mask_decoder_config")}
        return published, getattr(transformers, image_cls)(transformers.Sam2Config(**parts))


@pytest.mark.parametrize("name", RELEASED)
def test_recorded_architecture_accounts_for_the_published_file_size(name: str) -> None:
    """fp32 parameters of the recorded architecture weigh what the original release weighs (within 0.5 %)."""
    spec = get_spec(name)
    assert spec.official is not None
    published, _ = _meta_models(name)
    nbytes = 4 * sum(t.numel() for t in published.state_dict().values())
    assert abs(nbytes / spec.official.bytes - 1) < 0.005, (nbytes, spec.official.bytes)


@pytest.mark.parametrize("name", RELEASED)
def test_published_weight_names_cover_the_image_model(name: str) -> None:
    """Loading keeps every weight the image model needs; what it leaves unread is video-only."""
    published, image = _meta_models(name)
    published_keys, image_keys = set(published.state_dict()), set(image.state_dict())
    assert image_keys <= published_keys
    unread = published_keys - image_keys
    assert all(k.startswith(VIDEO_ONLY_PREFIXES) for k in unread)
    assert bool(unread) == (get_spec(name).model_type == "sam2_video")


@pytest.mark.parametrize("name", RELEASED)
def test_published_config_passes_the_check_and_a_changed_fact_does_not(name: str, tmp_path: Path) -> None:
    spec = get_spec(name)
    published_config(spec).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == spec.model_type
    assert saved["architectures"] == spec.config["architectures"]
    assert config_mismatches(tmp_path, spec) == []

    vision = saved["vision_config"].get("backbone_config", saved["vision_config"])
    key = "global_attention_blocks" if "global_attention_blocks" in vision else "global_attn_indexes"
    vision[key] = vision[key][:-1]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert any(key in problem for problem in config_mismatches(tmp_path, spec))


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_published_layout_loads_by_name_and_folder_and_decodes(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = get_spec(name)
    torch.manual_seed(0)
    model = getattr(transformers, PUBLISHED_CLASSES[spec.model_type][1])(published_config(spec)).eval()
    repo = tmp_path / "repo"
    model.save_pretrained(repo)
    assert sorted(p.name for p in repo.iterdir()) == sorted(spec.files)
    saved = json.loads((repo / "config.json").read_text())
    assert (saved["model_type"], saved["architectures"]) == (spec.model_type, spec.config["architectures"])

    put_in_hf_cache(tmp_path / "hf" / "hub", spec.repo_id, [repo / f for f in spec.files])
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert locate(name)[0] == "hf-cache"
    by_name = load_model(name)
    by_folder = load_model(repo, runtime=None)
    digest = hashlib.sha256((repo / "model.safetensors").read_bytes()).hexdigest()
    assert by_name.weights_sha256 == by_folder.weights_sha256 == digest
    assert by_name.family == spec.family and by_name.preprocessing.size == 1024

    # Every weight the image model has is the published one.
    published = model.state_dict()
    for key, tensor in by_folder.model.state_dict().items():
        assert torch.equal(tensor, published[key]), key

    rng = np.random.default_rng(0)
    image = rng.integers(30, 90, size=(384, 512, 3), dtype=np.uint8)
    image[100:200, 150:300] = 220
    result = Segmenter(by_name, cache=False).segment(image, [box(150, 100, 300, 200), point(220, 150)])
    assert result.masks.shape == (2, 384, 512) and result.masks.dtype == bool
    assert np.isfinite(result.scores).all()
