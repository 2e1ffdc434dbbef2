"""``samadapt models check``, ``models fetch`` and ``info``: what a user runs first, and their bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.hf_cache import put_in_hf_cache
from samadapt.models import registry
from samadapt.models.hub import hf_hub_cache

NAME = "sam-vit-base"


def _cache_tiny_as(name: str, tiny: Path) -> Path:
    """The tiny SAM in the HF cache under a registry name's repository (its weights are not the published ones)."""
    return put_in_hf_cache(hf_hub_cache(), registry.get_spec(name).repo_id,
                           [tiny / "config.json", tiny / "model.safetensors"])


def test_check_runs_a_tiny_model_and_calls_it_unknown(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run_cli(["models", "check", str(tiny_models["sam"]), "--runtime", "fp32"], monkeypatch, capsys)
    assert code == 0, text
    for part in ("family │ sam", "256 px", "unknown: a random-initialised test model", "torch-fp32",
                 "seconds per image", "check passed"):
        assert part in text, part


def test_check_fails_on_weights_other_than_the_recorded_digest(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """facebook/sam-vit-base's model.safetensors has a recorded sha256: other weights under that name mismatch."""
    assert registry.get_spec(NAME).sha256["model.safetensors"]
    _cache_tiny_as(NAME, tiny_models["sam"])
    code, text = run_cli(["models", "check", NAME], monkeypatch, capsys)
    assert code == 1
    assert "mismatch: model.safetensors has sha256" in text and "facebook/sam-vit-base publishes 892c410e" in text
    assert "not run" in text and "check passed" not in text


def test_check_fails_on_an_architecture_other_than_the_published_one(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = registry.get_spec("sam-hq-vit-base")
    assert not spec.sha256  # no public record of this file's digest: the config is what is checked
    _cache_tiny_as("sam-hq-vit-base", tiny_models["sam-hq"])
    code, text = run_cli(["models", "check", "sam-hq-vit-base"], monkeypatch, capsys)
    assert code == 1
    assert "config.json has vision_config.hidden_size = 32; syscv-community/sam-hq-vit-base publishes 768" in text


def test_check_accepts_weights_whose_digest_matches_the_record(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Weights equal to the recorded digest are 'published' (a record made to match the tiny model here)."""
    from samadapt.models.digest import file_sha256

    tiny = tiny_models["sam"]
    spec = registry.get_spec(NAME)
    digest = file_sha256(tiny / "model.safetensors")
    config = json.loads((tiny / "config.json").read_text())
    facts = {"model_type": "sam", "architectures": ["SamModel"],
             "vision_config": {"hidden_size": config["vision_config"]["hidden_size"]}}
    monkeypatch.setitem(registry.REGISTRY, NAME, replace(spec, sha256={"model.safetensors": digest}, config=facts))
    snapshot = _cache_tiny_as(NAME, tiny)
    assert not (snapshot / "samadapt.json").exists()  # no tiny-model marker: the model counts as real
    code, text = run_cli(["models", "check", NAME, "--runtime", "fp32"], monkeypatch, capsys)
    assert code == 0, text
    assert "published: facebook/sam-vit-base model.safetensors" in text and "check passed" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models", "check", "sam-vit-bas"], "unknown model 'sam-vit-bas'"),
        (["models", "check", "missing/folder"], "model path missing/folder does not exist"),
        (["models", "fetch", "nope"], "unknown model 'nope'"),
        (["models", "check", NAME, "--runtime", "fp64"], "fp64"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, text = run_cli(args, monkeypatch, capsys)
    assert code == 2 and message in text and "Traceback" not in text


def test_check_offline_names_the_files_and_places(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, text = run_cli(["models", "check", NAME], monkeypatch, capsys)
    assert code == 2 and "config.json, model.safetensors" in text and "Hugging Face cache" in text


def test_fetch_official_unreachable_leaves_nothing(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = registry.get_spec(NAME)
    assert spec.official is not None
    dead = replace(spec.official, url="http://127.0.0.1:9/sam_vit_b_01ec64.pth")
    monkeypatch.setitem(registry.REGISTRY, NAME, replace(spec, official=dead))
    code, text = run_cli(["models", "fetch", NAME, "--official"], monkeypatch, capsys)
    assert code == 2 and "Could not download" in text and "sam_vit_b_01ec64.pth" in text
    from samadapt._home import models_dir

    assert not (models_dir() / "official" / "sam_vit_b_01ec64.pth").exists()


def test_fetch_reports_a_model_already_in_the_hf_cache(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshot = _cache_tiny_as(NAME, tiny_models["sam"])
    code, text = run_cli(["models", "fetch", NAME], monkeypatch, capsys)
    assert code == 0 and str(snapshot) in text and "already in the Hugging Face cache" in text


def test_info_prints_the_versions_in_use(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub
    import torch
    import transformers

    code, text = run_cli(["info", "--model", "sam2.1-hiera-tiny"], monkeypatch, capsys)
    assert code == 0
    for name, module in (("torch", torch), ("transformers", transformers), ("huggingface_hub", huggingface_hub)):
        assert f"{name} │ {module.__version__}" in text
    assert "outside the tested range" not in text


def test_versions_outside_the_tested_range_are_flagged() -> None:
    from samadapt.versions import DependencyVersion

    assert DependencyVersion("transformers", ">=5.23,<5.26", "5.25.0").in_range
    assert not DependencyVersion("transformers", ">=5.23,<5.26", "5.26.0").in_range
    assert not DependencyVersion("torch", ">=2.13,<2.14", None).in_range
