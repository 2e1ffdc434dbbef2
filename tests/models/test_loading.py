"""Loading models by registry name, folder and family, through the same code as real checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from samadapt.errors import CheckpointError, ModelNotFoundError
from samadapt.models.digest import file_sha256
from samadapt.models.loading import cached_model_dir, load_model
from samadapt.models.registry import REGISTRY, get_spec


@pytest.mark.parametrize("family", ["sam", "sam2", "sam-hq"])
def test_tiny_model_loads_with_family_and_facts(tiny_models: dict[str, Path], family: str) -> None:
    loaded = load_model(tiny_models[family])
    assert loaded.family == family
    assert loaded.trusted is False  # random-initialised: outputs must say their masks mean nothing
    assert loaded.preprocessing.size == 256
    assert loaded.preprocessing.resize == ("square" if family == "sam2" else "longest")
    assert loaded.weights_sha256 == file_sha256(tiny_models[family] / "model.safetensors")
    assert not loaded.model.training


def test_same_weights_same_outputs_after_reload(tiny_models: dict[str, Path]) -> None:
    a, b = load_model(tiny_models["sam"]), load_model(tiny_models["sam"])
    x = torch.randn(1, 3, 256, 256)
    assert torch.equal(a.model.get_image_embeddings(x), b.model.get_image_embeddings(x))


def test_wrong_family_is_refused(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match="is a sam2 checkpoint, but a sam checkpoint was expected"):
        load_model(tiny_models["sam2"], expected_family="sam")


def test_non_sam_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="'bert' model, not a SAM-family checkpoint"):
        load_model(tmp_path)


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model 'sam-vit-bass'.*sam-vit-base.*sam2.1-hiera-tiny"):
        load_model("sam-vit-bass")


def test_missing_path_and_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere" / "model")
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        load_model(tmp_path)


def test_not_downloaded_without_download_says_where_to_put_files() -> None:
    with pytest.raises(ModelNotFoundError, match=str(cached_model_dir("sam-vit-base"))):
        load_model("sam-vit-base", download=False)


def test_registry_facts() -> None:
    assert set(REGISTRY) >= {
        "sam-vit-base", "sam-vit-large", "sam-vit-huge", "sam2.1-hiera-tiny", "sam2.1-hiera-small",
        "sam2.1-hiera-base-plus", "sam2.1-hiera-large", "sam-hq-vit-base", "sam-hq-vit-large", "sam-hq-vit-huge",
    }
    assert get_spec("sam2.1-hiera-tiny").preprocessing.resize == "square"
    assert get_spec("sam-vit-base").preprocessing.resize == "longest"
    # Meta's SAM names end with the first digits of the file's md5 (not its sha256).
    official = get_spec("sam-vit-base").official
    assert official is not None and official.name_digest == "md5"
    assert official.md5 is not None and official.md5.startswith(official.file.removesuffix(".pth")[-6:])
    assert official.sha256 is not None and not official.sha256.startswith("01ec64")


def test_sam_hq_models_get_the_decoder_correction(tiny_models: dict[str, Path]) -> None:
    from samadapt.models.hq_fix import needs_hq_decoder_fix

    loaded = load_model(tiny_models["sam-hq"])
    assert getattr(loaded.model.mask_decoder, "_samadapt_fixed", False) == needs_hq_decoder_fix()


def test_weights_missing_from_the_file_are_named(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Loading is strict: a weight the config needs but the file lacks is an error, not a random init."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "cut"
    shutil.copytree(tiny_models["sam"], folder)
    weights = load_file(folder / "model.safetensors")
    del weights["mask_decoder.iou_token.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"1 missing \(mask_decoder\.iou_token\.weight\)"):
        load_model(folder)


def test_a_corrupted_blob_in_the_hf_cache_is_refused(tiny_models: dict[str, Path]) -> None:
    from helpers.hf_cache import put_in_hf_cache
    from samadapt.models.hub import hf_hub_cache

    src = tiny_models["sam"]
    snapshot = put_in_hf_cache(hf_hub_cache(), "org/tiny", [src / "config.json", src / "model.safetensors"])
    assert load_model(snapshot).family == "sam"
    blob = (snapshot / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="differs from the sha256 the hub published"):
        load_model(snapshot)


@pytest.mark.parametrize(("device", "message"),
                         [("cuda", "sees none"), ("cuda:3", "sees none"), ("gpu0", "not a torch device")])
def test_a_device_this_torch_lacks_is_one_sentence(tiny_models: dict[str, Path], device: str, message: str) -> None:
    from samadapt.errors import InputError

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InputError, match=message):
        load_model(tiny_models["sam"], device=device)
