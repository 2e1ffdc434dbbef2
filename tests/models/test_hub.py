"""Registry models through huggingface_hub: a local fake hub, the shared Hugging Face cache, offline use.

The fake hub (tests/helpers/fake_hub.py) answers as the real one does: a HEAD with
X-Repo-Commit and an ETag, LFS files redirected to another port, errors in X-Error-Code.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.fake_hub import FakeHub
from helpers.hf_cache import put_in_hf_cache
from samadapt.errors import DownloadError, ModelNotFoundError
from samadapt.models import registry
from samadapt.models.hub import download_hf_files, hf_hub_cache
from samadapt.models.loading import cached_model_dir, load_model, locate

NAME = "sam2.1-hiera-tiny"
REPO = registry.get_spec(NAME).repo_id


@pytest.fixture(scope="session")
def sam2_video_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model saved as the SAM 2.1 repositories publish theirs: a ``sam2_video`` Sam2VideoModel."""
    import torch
    from transformers import Sam2VideoConfig, Sam2VideoModel

    from samadapt.models.tiny import tiny_config

    image = tiny_config("sam2")
    config = Sam2VideoConfig(vision_config=image.vision_config.to_dict(),
                             prompt_encoder_config=image.prompt_encoder_config.to_dict(),
                             mask_decoder_config=image.mask_decoder_config.to_dict(),
                             memory_attention_hidden_size=32, memory_encoder_hidden_size=32,
                             memory_encoder_output_channels=16, mask_downsampler_embed_dim=32,
                             memory_fuser_embed_dim=32, memory_attention_feed_forward_hidden_size=64,
                             memory_fuser_intermediate_dim=64, memory_attention_num_layers=1, image_size=256,
                             memory_attention_rope_feat_sizes=[16, 16])
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sam2-video") / "model"
    Sam2VideoModel(config).save_pretrained(folder)
    return folder


def _repo_files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}


@pytest.fixture
def hub(sam2_video_folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub({REPO: _repo_files(sam2_video_folder)}) as server:
        monkeypatch.delenv("SAMADAPT_HF_ENDPOINT")
        monkeypatch.setenv("HF_ENDPOINT", server.url)  # the variable huggingface_hub users already set
        yield server


@pytest.fixture
def no_hub_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub retries an unreachable hub for about 23 s; the outcome is the same without."""
    import huggingface_hub.file_download as fd

    monkeypatch.setattr(fd, "_DEFAULT_RETRY_ON_EXCEPTIONS", ())
    monkeypatch.setattr(fd, "_DEFAULT_RETRY_ON_STATUS_CODES", ())


def test_sam2_video_folder_loads_as_the_image_model(sam2_video_folder: Path) -> None:
    import json

    assert json.loads((sam2_video_folder / "config.json").read_text())["model_type"] == "sam2_video"
    loaded = load_model(sam2_video_folder)
    assert loaded.family == "sam2" and type(loaded.model).__name__ == "Sam2Model"
    assert loaded.preprocessing.size == 256 and loaded.preprocessing.resize == "square"


def test_registry_name_downloads_into_the_hf_cache_then_loads_with_no_request(hub: FakeHub) -> None:
    loaded = load_model(NAME, progress=False)
    assert loaded.family == "sam2"
    place, folder = locate(NAME)
    assert place == "hf-cache" and folder is not None and hf_hub_cache() in folder.parents
    assert (folder / "model.safetensors").is_symlink()  # huggingface_hub's layout: snapshot links to blobs
    assert [p for p, _ in hub.requests("hub", "GET")] == [f"/{REPO}/resolve/main/config.json"]
    assert len(hub.requests("cdn")) == 1  # the weights, from the LFS host
    count = len(hub.log)
    again = load_model(NAME, progress=False)
    assert len(hub.log) == count  # found in the cache: no request at all
    assert again.weights_sha256 == loaded.weights_sha256


def test_interrupted_transfer_resumes_from_what_was_written(tmp_path: Path, hub: FakeHub) -> None:
    big = random.Random(1).randbytes(24 << 20)  # past huggingface_hub's 10 MiB write chunk
    hub.repos["org/big"] = {"config.json": b"{}", "model.safetensors": big}
    hub.drop_at = 15 << 20
    folder = download_hf_files("org/big", ["config.json", "model.safetensors"], progress=False)
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).digest() == hashlib.sha256(big).digest()
    assert [r for _, r in hub.requests("cdn")] == [None, f"bytes={10 << 20}-"]


def test_wrong_digest_is_refused_and_removed_then_fetched_again(hub: FakeHub) -> None:
    hub.corrupt = True
    with pytest.raises(DownloadError, match="not the published .* removed from the cache"):
        load_model(NAME, progress=False)
    assert locate(NAME) == ("missing", None)
    snapshot = next((hf_hub_cache() / f"models--{REPO.replace('/', '--')}" / "snapshots").iterdir())
    assert not (snapshot / "model.safetensors").exists()
    hub.corrupt = False
    assert load_model(NAME, progress=False).family == "sam2"


def test_a_pinned_digest_wins_over_what_the_server_says(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = registry.get_spec(NAME)
    monkeypatch.setitem(registry.REGISTRY, NAME, replace(spec, sha256={"model.safetensors": "ab" * 32}))
    with pytest.raises(DownloadError, match="not the published abab"):
        load_model(NAME, progress=False)


def test_gated_repository_names_hf_token_and_the_token_opens_it(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.token = "hf_test_token"
    with pytest.raises(DownloadError, match="gated repository.*set HF_TOKEN"):
        load_model(NAME, progress=False)
    assert hub.log[-1][4] is None
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert load_model(NAME, progress=False).family == "sam2"
    assert ("hub", "HEAD", f"/{REPO}/resolve/main/config.json", None, "Bearer hf_test_token") in hub.log


def test_plain_401_names_hf_token(hub: FakeHub) -> None:
    hub.plain_401 = True
    with pytest.raises(DownloadError, match=r"HTTP 401.*set HF_TOKEN"):
        load_model(NAME, progress=False)


def test_offline_and_not_cached_names_the_files_and_both_places(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        load_model(NAME, progress=False)
    text = str(err.value)
    for part in ("config.json, model.safetensors", str(cached_model_dir(NAME)),
                 str(hf_hub_cache() / "models--facebook--sam2.1-hiera-tiny" / "snapshots")):
        assert part in text
    assert hub.log == []


@pytest.mark.usefixtures("no_hub_retries")
def test_unreachable_hub_names_the_files_and_both_places() -> None:
    with pytest.raises(DownloadError, match=r"did not answer.*config\.json, model\.safetensors.*samadapt's folder"):
        load_model("sam-vit-base", progress=False)


def test_files_in_samadapt_folder_come_first(sam2_video_folder: Path) -> None:
    own = cached_model_dir(NAME)
    own.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (own / name).write_bytes((sam2_video_folder / name).read_bytes())
    assert locate(NAME) == ("samadapt", own)
    assert load_model(NAME, download=False).family == "sam2"


def test_hf_cache_made_by_hand_without_refs_is_used(sam2_video_folder: Path) -> None:
    files = [sam2_video_folder / "config.json", sam2_video_folder / "model.safetensors"]
    snapshot = put_in_hf_cache(hf_hub_cache(), REPO, files, commit="a" * 40, ref=None)
    assert locate(NAME) == ("hf-cache", snapshot)


def test_cli_segments_a_cached_registry_model_offline_with_an_empty_home(
    sam2_video_folder: Path, utm_raster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The scenario of a user whose HF cache already holds the model: HF_HOME, HF_HUB_OFFLINE=1."""
    hf_home = tmp_path / "hf"
    put_in_hf_cache(hf_home / "hub", REPO, [sam2_video_folder / "config.json", sam2_video_folder / "model.safetensors"])
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAMADAPT_HOME", str(tmp_path / "empty-home"))
    for model in (NAME, str(sam2_video_folder)):
        out = tmp_path / f"a-{len(model)}.gpkg"
        code, text = run_cli(["segment", str(utm_raster), "--model", model, "--box", "80,60,160,130",
                              "--out", str(out)], monkeypatch, capsys)
        assert code == 0, text
        assert out.is_file()
    code, text = run_cli(["models", "list"], monkeypatch, capsys)
    assert code == 0 and f"{NAME} │ sam2 │ 156 MB │ HF cache" in text
    assert "sam-vit-base │ sam │ 375 MB │ missing" in text


def test_a_hub_name_that_does_not_resolve_fails_at_once_with_the_offline_advice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No retries for a host name that does not resolve (no network): the error says what to do."""
    monkeypatch.setenv("SAMADAPT_HF_ENDPOINT", "https://hub.invalid")  # .invalid never resolves (RFC 2606)
    with pytest.raises(DownloadError, match=r"hub\.invalid does not resolve.*HF_HUB_OFFLINE=1.*config\.json"):
        load_model(NAME, progress=False)
