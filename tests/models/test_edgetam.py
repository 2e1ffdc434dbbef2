"""EdgeTAM without timm: samadapt's RepViT backbone, the tiny model, loading and segmenting.

The reference for the backbone's weight names is the published checkpoint's layout, which
follows from three sources (read, not imported: timm cannot be installed here):

* timm ``timm/models/repvit.py`` (huggingface/pytorch-image-models): ``repvit_m1`` is
  ``RepVit(embed_dim=(48, 96, 192, 384), depth=(2, 2, 14, 2), legacy=True)``, with
  ``stem`` / ``stages.i.downsample`` / ``stages.i.blocks.j`` and ``c`` / ``bn`` pairs;
* timm ``timm/models/_features.py``: ``features_only=True`` gives a ``FeatureListNet`` built with
  ``flatten_sequential=True``, so ``stages.i`` becomes ``stages_i`` and the head is dropped;
* transformers ``models/edgetam/convert_edgetam_to_hf.py``: ``image_encoder`` ->
  ``vision_encoder.backbone``, ``trunk.`` -> ``""``, ``body.`` -> ``timm_model.``.

:data:`REPVIT_M1_LAYOUT_SHA256` was computed from timm's own ``RepVit`` class (its source at
pytorch-image-models HEAD, run with stand-ins for the timm helpers it imports), wrapped as that
feature net: the sha256 of one ``<checkpoint key> <shape>`` line per state-dict entry, in order.
The same run found samadapt's RepViT giving timm's outputs exactly (eval mode, random weights
and batch-norm statistics, repvit_m1, repvit_m1_1 and a narrow variant).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers.cli import run_cli
from samadapt.errors import CheckpointError
from samadapt.imagery.preprocess import prepare
from samadapt.models.edgetam import BACKBONE_PREFIX, build_edgetam, published_config
from samadapt.models.loading import load_model
from samadapt.models.repvit import RepVitBackbone, RepVitFeatures, RepVitSpec
from samadapt.models.sam import encode
from samadapt.models.tiny import build_tiny_model, save_tiny_model
from samadapt.predict.segmenter import Segmenter
from samadapt.prompts.types import ObjectPrompt

REPVIT_M1_LAYOUT_SHA256 = "2cb3f670694f32d3a7a2246a54a5ce3efc574ca2ef84589261787eee386a6d63"

#: A few of the published keys (with shapes), one of each kind of module, spelled out.
REPVIT_M1_KEYS = {
    "stem.conv1.c.weight": (24, 3, 3, 3),
    "stem.conv2.bn.running_var": (48,),
    "stages_0.blocks.0.token_mixer.conv.c.weight": (48, 1, 3, 3),
    "stages_0.blocks.0.token_mixer.conv1.c.weight": (48, 1, 1, 1),  # legacy: the 1x1 branch has its own bn
    "stages_0.blocks.0.token_mixer.conv1.bn.num_batches_tracked": (),
    "stages_0.blocks.0.se.fc1.weight": (16, 48, 1, 1),  # squeeze to make_divisible(48 / 4, 8)
    "stages_0.blocks.0.se.fc2.bias": (48,),
    "stages_0.blocks.1.channel_mixer.conv1.c.weight": (96, 48, 1, 1),
    "stages_1.downsample.pre_block.token_mixer.conv.bn.weight": (48,),
    "stages_1.downsample.spatial_downsample.c.weight": (48, 1, 3, 3),
    "stages_1.downsample.channel_downsample.c.weight": (96, 48, 1, 1),
    "stages_1.downsample.ffn.conv2.c.weight": (96, 192, 1, 1),
    "stages_2.blocks.13.channel_mixer.conv2.bn.bias": (192,),
    "stages_3.blocks.1.channel_mixer.conv2.c.weight": (384, 768, 1, 1),
}


def _image(h: int = 300, w: int = 500) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    img[h // 4 : h // 2, w // 3 : w // 2] = 240
    return img


@pytest.fixture(scope="module")
def tiny_edgetam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("edgetam") / "tiny", "edgetam")


def test_backbone_keys_are_the_published_checkpoints() -> None:
    backbone = RepVitFeatures(RepVitSpec.from_timm("repvit_m1.dist_in1k"))
    state = backbone.state_dict()
    layout = "\n".join(f"{BACKBONE_PREFIX}timm_model.{k} {tuple(v.shape)}" for k, v in state.items())
    assert hashlib.sha256(layout.encode()).hexdigest() == REPVIT_M1_LAYOUT_SHA256
    assert len(state) == 676 and sum(p.numel() for p in backbone.parameters()) == 4_713_712
    assert {k: tuple(state[k].shape) for k in REPVIT_M1_KEYS} == REPVIT_M1_KEYS


def test_published_config_builds_edgetam_with_repvit_features() -> None:
    with torch.device("meta"):  # the full-size model, without spending time on its weights
        model = build_edgetam(published_config())
    backbone = model.vision_encoder.backbone
    assert isinstance(backbone, RepVitBackbone) and backbone.spec == RepVitSpec.from_timm("repvit_m1")
    assert any(k.startswith(BACKBONE_PREFIX + "timm_model.stages_3.") for k in model.state_dict())


def test_backbone_gives_stage_maps_at_strides_4_to_32() -> None:
    backbone = RepVitBackbone(RepVitSpec((8, 16, 32, 64), (1, 1, 2, 1), legacy=True)).eval()
    out = backbone(torch.randn(2, 3, 64, 64), output_hidden_states=False).last_hidden_state
    assert [tuple(t.shape) for t in out] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]


def test_non_repvit_backbone_is_refused() -> None:
    from transformers import EdgeTamConfig

    with pytest.raises(CheckpointError, match="resnet50"):
        build_edgetam(EdgeTamConfig())  # transformers' default config names timm's resnet50


def test_tiny_model_saved_and_reloaded_gives_identical_embeddings(tiny_edgetam: Path) -> None:
    loaded = load_model(tiny_edgetam, runtime=None)
    assert loaded.family == "edgetam" and not loaded.trusted
    assert loaded.preprocessing.size == 256 and loaded.preprocessing.resize == "square"
    batch, _ = prepare(_image(), loaded.preprocessing)
    (emb,) = encode(loaded, batch[None])
    with torch.no_grad():
        ref = build_tiny_model("edgetam").get_image_embeddings(batch[None])
    assert [tuple(emb[k].shape) for k in ("high_res_0", "high_res_1", "image")] == \
        [(1, 4, 64, 64), (1, 8, 32, 32), (1, 32, 16, 16)]
    for key, want in zip(("high_res_0", "high_res_1", "image"), ref, strict=True):
        assert torch.equal(emb[key], want)


def test_segmenter_box_prompt_gives_a_mask_of_the_image_size(tiny_edgetam: Path) -> None:
    result = Segmenter(tiny_edgetam).segment(_image(), [ObjectPrompt(box=[160.0, 70.0, 260.0, 160.0]),
                                                        ObjectPrompt(points=[[200.0, 110.0]], labels=[1])])
    assert result.masks.shape == (2, 300, 500) and result.masks.dtype == bool


def _copy_with(src: Path, dst: Path, edit: dict[str, torch.Tensor | None], model_type: str | None = None) -> Path:
    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    for key, value in edit.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    save_file(state, str(dst / "model.safetensors"))
    if model_type is not None:
        config = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
    return dst


def test_a_missing_weight_is_one_checkpoint_error(tiny_edgetam: Path, tmp_path: Path) -> None:
    key = BACKBONE_PREFIX + "timm_model.stem.conv1.c.weight"
    folder = _copy_with(tiny_edgetam, tmp_path / "m", {key: None})
    with pytest.raises(CheckpointError, match=r"1 missing \(vision_encoder\.backbone\.timm_model\.stem\.conv1"):
        load_model(folder)


def test_video_weights_load_only_from_a_video_checkpoint(tiny_edgetam: Path, tmp_path: Path) -> None:
    extra = {"spatial_perceiver.latents_1d": torch.zeros(4, 8), "memory_attention.layers.0.x": torch.zeros(2)}
    with pytest.raises(CheckpointError, match="2 unexpected"):
        load_model(_copy_with(tiny_edgetam, tmp_path / "image", extra))
    loaded = load_model(_copy_with(tiny_edgetam, tmp_path / "video", extra, model_type="edgetam_video"))
    assert loaded.family == "edgetam"


def test_backbone_keys_saved_without_timm_model_prefix_load(tiny_edgetam: Path, tmp_path: Path) -> None:
    state = load_file(str(tiny_edgetam / "model.safetensors"))
    renamed: dict[str, torch.Tensor | None] = {k: None for k in state if k.startswith(BACKBONE_PREFIX)}
    renamed |= {k.replace("timm_model.", ""): v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    loaded = load_model(_copy_with(tiny_edgetam, tmp_path / "m", renamed), runtime=None)
    reference = load_model(tiny_edgetam, runtime=None)
    for (k, a), b in zip(loaded.model.state_dict().items(), reference.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_cli_writes_a_tiny_edgetam(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli(["models", "tiny", str(tmp_path / "t"), "--family", "edgetam"], monkeypatch, capsys)
    assert code == 0, text
    assert json.loads((tmp_path / "t" / "config.json").read_text())["model_type"] == "edgetam"


def test_auto_runtime_is_plain_fp32_for_edgetam(tiny_edgetam: Path) -> None:
    from samadapt.models.accel.speed import CpuInfo, RuntimeOptions, resolve

    bf16_cpu = CpuInfo("AVX512", frozenset({"avx512f", "avx512_bf16"}), 8)
    rt = resolve(RuntimeOptions(), "edgetam", 1024, cpu=bf16_cpu)
    assert (rt.precision, rt.fused_attention) == ("fp32", False) and "EdgeTAM" in " ".join(rt.reasons)
    assert resolve(RuntimeOptions.parse("bf16"), "edgetam", 1024, cpu=bf16_cpu).precision == "bf16"
    assert load_model(tiny_edgetam).runtime.tag == "torch-fp32"


def test_registry_name_fetches_the_branch_that_holds_the_transformers_files(
    tiny_edgetam: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """facebook/EdgeTAM keeps its transformers weights on refs/pr/1 (main has the original .pt): that
    branch is asked for, and the registry's facts are the conversion script's model."""
    from helpers.fake_hub import FakeHub
    from samadapt.models.registry import get_spec

    spec = get_spec("edgetam")
    config = json.loads((tiny_edgetam / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == (spec.model_type, spec.config["architectures"])
    files = {name: (tiny_edgetam / name).read_bytes() for name in spec.files}
    with FakeHub({spec.repo_id: files}) as hub:
        hub.branches = {"refs/pr/1"}  # main would answer "no such revision"
        monkeypatch.delenv("SAMADAPT_HF_ENDPOINT", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        loaded = load_model("edgetam", progress=False)
        paths = [p for p, _ in hub.requests("hub")]
    assert loaded.family == "edgetam" and loaded.preprocessing.resize == "square"
    assert paths and all(p.startswith("/facebook/EdgeTAM/resolve/refs/pr/1/") for p in paths), paths
