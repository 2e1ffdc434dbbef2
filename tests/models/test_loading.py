"""Loading models by registry name, folder and family, through the same code as real checkpoints."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from samadapt.errors import CheckpointError, DownloadError, ModelNotFoundError
from samadapt.models.loading import cached_model_dir, file_sha256, is_cached, load_model
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


def test_offline_download_error_names_the_file_and_place() -> None:
    # conftest points the hub at a closed local port
    with pytest.raises(DownloadError, match="put it at .*sam-vit-base/config.json"):
        load_model("sam-vit-base", progress=False)


def test_registry_facts() -> None:
    assert set(REGISTRY) >= {
        "sam-vit-base", "sam-vit-large", "sam-vit-huge", "sam2.1-hiera-tiny", "sam2.1-hiera-small",
        "sam2.1-hiera-base-plus", "sam2.1-hiera-large", "sam-hq-vit-base", "sam-hq-vit-large", "sam-hq-vit-huge",
    }
    assert get_spec("sam2.1-hiera-tiny").preprocessing.resize == "square"
    assert get_spec("sam-vit-base").preprocessing.resize == "longest"
    assert get_spec("sam-vit-base").meta_sha256_prefix == "01ec64"


class _Hub(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).requests.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_registry_name_downloads_from_the_hub_then_loads_from_cache(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real download path, against a local server that plays the model hub."""
    src = tiny_models["sam2"]
    spec = get_spec("sam2.1-hiera-tiny")
    _Hub.files = {f"/{spec.repo_id}/resolve/main/{name}": (src / name).read_bytes() for name in spec.files}
    _Hub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("SAMADAPT_HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        loaded = load_model("sam2.1-hiera-tiny", progress=False)
        assert loaded.family == "sam2" and is_cached("sam2.1-hiera-tiny")
        assert len(_Hub.requests) == len(spec.files)
        again = load_model("sam2.1-hiera-tiny", progress=False)
        assert len(_Hub.requests) == len(spec.files)  # second load: no request at all
        assert again.weights_sha256 == loaded.weights_sha256
    finally:
        server.shutdown()


def test_sam_hq_models_get_the_decoder_correction(tiny_models: dict[str, Path]) -> None:
    from samadapt.models.hq_fix import needs_hq_decoder_fix

    loaded = load_model(tiny_models["sam-hq"])
    assert getattr(loaded.model.mask_decoder, "_samadapt_fixed", False) == needs_hq_decoder_fix()
