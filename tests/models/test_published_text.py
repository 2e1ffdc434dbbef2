"""Contract tests of the registry's text-reading entries: SAM 3 and the open-vocabulary detectors.

The recorded facts (``published.json``) with transformers' defaults for the rest must account for the
published weights' size, checked on ``meta``-device models (SAM 3 is 3.4 GB). A full-size random
GroundingDINO laid out as its repository is (config, weights, BERT tokenizer files, processor config)
is then loaded by registry name from a Hugging Face cache, offline, and detects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from helpers.hf_cache import put_in_hf_cache
from samadapt.models.loading import locate
from samadapt.models.registry import PUBLISHED_CLASSES, get_spec, published_config
from samadapt.text.detectors import load_detector
from samadapt.text.tiny_detectors import save_tiny_detector
from samadapt.text.types import Thresholds

TEXT_MODELS = ["sam3", "grounding-dino-tiny", "grounding-dino-base", "owlv2-base"]


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_recorded_architecture_accounts_for_the_published_weights(name: str) -> None:
    """fp32 parameters of the recorded architecture weigh what the hub lists for the weights file (within 1 %)."""
    spec = get_spec(name)
    config = published_config(spec)
    assert config.architectures == spec.config["architectures"]
    with torch.device("meta"):
        model = getattr(transformers, PUBLISHED_CLASSES[spec.model_type][1])(config)
    nbytes = 4 * sum(t.numel() for t in model.state_dict().values())
    assert abs(nbytes / (spec.size_mb * 1e6) - 1) < 0.01, (nbytes, spec.size_mb)


def test_grounding_dino_base_is_swin_b_and_tiny_swin_t() -> None:
    """The two checkpoints differ in their backbone alone (transformers' conversion script)."""
    tiny, base = (published_config(get_spec(n)).backbone_config for n in ("grounding-dino-tiny", "grounding-dino-base"))
    assert (tiny.embed_dim, list(tiny.depths), tiny.window_size) == (96, [2, 2, 6, 2], 7)
    assert (base.embed_dim, list(base.depths), base.window_size) == (128, [2, 2, 18, 2], 12)


@pytest.mark.slow
def test_full_size_grounding_dino_loads_by_name_from_the_hf_cache_and_detects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = get_spec("grounding-dino-tiny")
    repo = tmp_path / "repo"
    save_tiny_detector(tmp_path / "tiny", "grounding-dino")  # its tokenizer and processor files
    torch.manual_seed(0)
    transformers.GroundingDinoForObjectDetection(published_config(spec)).eval().save_pretrained(repo)
    for name in spec.files:
        if not (repo / name).exists():
            (repo / name).write_bytes((tmp_path / "tiny" / name).read_bytes())
    # the published processor resizes to 800 px (about 10 s a detection here); 256 px still leaves the
    # 900 queries more image positions than they need
    processor = json.loads((repo / "preprocessor_config.json").read_text())
    processor["size"] = {"shortest_edge": 256, "longest_edge": 400}
    (repo / "preprocessor_config.json").write_text(json.dumps(processor))
    saved = json.loads((repo / "config.json").read_text())
    assert (saved["model_type"], saved["architectures"]) == (spec.model_type, spec.config["architectures"])
    put_in_hf_cache(tmp_path / "hf" / "hub", spec.repo_id, [repo / f for f in spec.files])
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert locate("grounding-dino-tiny")[0] == "hf-cache"
    detector = load_detector("grounding-dino-tiny")
    assert detector.trusted and detector.model_id.startswith("grounding-dino:")
    image = np.random.default_rng(0).integers(0, 255, size=(120, 160, 3), dtype=np.uint8)
    found = detector.detect(image, ["crater"], Thresholds(box=0.0, text=0.0))
    assert found and all(d.phrase == "crater" for d in found)
    # boxes in the image's pixels (a random model's may reach past its edges, as transformers' do)
    assert all(d.box[0] < d.box[2] and d.box[1] < d.box[3] and d.box[0] < 160 and d.box[1] < 120
               and d.box[2] > 0 and d.box[3] > 0 for d in found)
