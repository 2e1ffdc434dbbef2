"""The fused encoder blocks: they run when they should, step aside when they must, and follow
the weights they were packed from."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import AutoModel, Sam2Config, SamConfig

from samadapt.models.accel import fast_encoder
from samadapt.models.accel.speed import apply_runtime
from samadapt.models.loading import load_model
from samadapt.models.sam import encode
from samadapt.models.tiny import _sam_parts, build_tiny_model, save_tiny_model


@pytest.fixture
def count_linear(monkeypatch) -> list[int]:
    calls = [0]
    real = fast_encoder.linear

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(fast_encoder, "linear", counted)
    return calls


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def x256(seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.randn(1, 3, 32, 32, generator=gen), size=256, mode="bilinear")


def scaled(model: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
            elif p.dim() == 1 and torch.count_nonzero(p) == 0:
                p.normal_(0, 0.02, generator=gen)
    return model.eval()


def padded_model(family: str) -> torch.nn.Module:
    """Tiny models whose windows do not divide the token grid, so windows are padded."""
    torch.manual_seed(0)
    parts = _sam_parts()
    if family == "sam":
        parts["vision_config"].update(window_size=5, global_attn_indexes=[1])
        return scaled(AutoModel.from_config(SamConfig(**parts)))
    s = 256
    parts["vision_config"] = {
        "backbone_config": {
            "model_type": "sam2_hiera_det_model", "hidden_size": 8, "image_size": [s, s],
            "blocks_per_stage": [1, 1, 2, 1],
            "embed_dim_per_stage": [8, 16, 32, 64], "num_attention_heads_per_stage": [1, 2, 2, 2],
            "window_size_per_stage": [4, 6, 6, 6], "global_attention_blocks": [3],
            "window_positional_embedding_background_size": [4, 4],
        },
        "backbone_channel_list": [64, 32, 16, 8],
        "backbone_feature_sizes": [[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
        "fpn_hidden_size": 32,
    }
    return scaled(AutoModel.from_config(Sam2Config(**parts)))


def embeddings(model: torch.nn.Module, x: torch.Tensor, fused: bool, bf16: bool) -> list[torch.Tensor]:
    """Every tensor ``get_image_embeddings`` returns, as float32."""
    if fused:
        fast_encoder.install_fast_encoder(model)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model.get_image_embeddings(x)
    flat = [out] if isinstance(out, torch.Tensor) else [
        t for part in out for t in (part if isinstance(part, (list, tuple)) else [part])]
    return [t.float() for t in flat]


@pytest.mark.parametrize("family", ["sam", "sam-hq", "sam2"])
def test_fused_blocks_run_under_bf16_and_only_when_asked(tmp_path, count_linear, family: str) -> None:
    path = save_tiny_model(tmp_path / family, family)
    fused = load_model(path, runtime="bf16,fused")
    encode(fused, x256())
    assert count_linear[0] > 0  # the fused blocks did the work, not a silent fallback
    count_linear[0] = 0
    encode(load_model(path, runtime="bf16,no-fused"), x256())
    encode(load_model(path, runtime=None), x256())
    assert count_linear[0] == 0


@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_padded_windows_match_transformers(family: str) -> None:
    x = x256()
    ref = embeddings(padded_model(family), x, fused=False, bf16=False)
    fp32 = embeddings(padded_model(family), x, fused=True, bf16=False)
    assert len(fp32) == len(ref)
    for a, b in zip(fp32, ref, strict=True):
        assert a.shape == b.shape and rel_err(a, b) <= 1e-5
    for a, b in zip(embeddings(padded_model(family), x, fused=True, bf16=True), ref, strict=True):
        assert rel_err(a, b) <= 2e-2


@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_half_precision_model_keeps_transformers_blocks(count_linear, family: str) -> None:
    """A model cast to bf16 (no autocast) runs transformers' own code, unchanged."""
    model = scaled(build_tiny_model(family)).to(torch.bfloat16)
    want = embeddings(copy.deepcopy(model), x256().bfloat16(), fused=False, bf16=False)
    got = embeddings(model, x256().bfloat16(), fused=True, bf16=False)
    assert count_linear[0] == 0
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_training_goes_through_transformers_blocks(count_linear, family: str) -> None:
    model = build_tiny_model(family)
    fast_encoder.install_fast_encoder(model)
    x = x256().requires_grad_()
    model.vision_encoder(x).last_hidden_state.sum().backward()  # get_image_embeddings is no_grad
    assert count_linear[0] == 0
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_packed_weights_follow_the_weights(count_linear, family: str) -> None:
    x = x256()
    model = scaled(build_tiny_model(family))
    before = embeddings(model, x, fused=True, bf16=True)
    with torch.no_grad():  # as an optimiser step would
        for name, p in model.vision_encoder.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.mul_(1.5)
    after = embeddings(model, x, fused=True, bf16=True)
    fresh = copy.deepcopy(model)  # a new module: nothing packed for it yet
    want = embeddings(fresh, x, fused=True, bf16=True)
    assert count_linear[0] > 0
    assert max(rel_err(a, b) for a, b in zip(after, before, strict=True)) > 1e-2  # the change shows
    for a, b in zip(after, want, strict=True):
        assert torch.equal(a, b)


def test_packed_weights_follow_a_replaced_parameter() -> None:
    x = x256()
    model = scaled(build_tiny_model("sam"))
    embeddings(model, x, fused=True, bf16=True)
    lin = model.vision_encoder.layers[0].mlp.lin1
    lin.weight = torch.nn.Parameter(lin.weight.detach() * 1.5)  # a new tensor, version 0 like the old one
    after = embeddings(model, x, fused=True, bf16=True)
    for a, b in zip(after, embeddings(copy.deepcopy(model), x, fused=True, bf16=True), strict=True):
        assert torch.equal(a, b)


def test_hiera_position_embedding_follows_its_parameter() -> None:
    x = x256()
    model = scaled(build_tiny_model("sam2"))
    embeddings(model, x, fused=True, bf16=False)
    with torch.no_grad():
        model.vision_encoder.backbone.pos_embed.add_(0.5)
    after = embeddings(model, x, fused=True, bf16=False)
    plain = copy.deepcopy(model)
    for m in plain.modules():  # back to transformers' own methods
        for name in ("forward", "_get_pos_embed"):
            m.__dict__.pop(name, None)
    for a, b in zip(after, embeddings(plain, x, fused=False, bf16=False), strict=True):
        assert rel_err(a, b) <= 1e-5


def test_wrapped_linear_falls_back_to_transformers(count_linear) -> None:
    """A layer whose linear was replaced (as LoRA does) runs transformers' forward; the others stay fused."""
    x = x256()
    model = scaled(build_tiny_model("sam"))
    ref = embeddings(copy.deepcopy(model), x, fused=False, bf16=False)
    layer = model.vision_encoder.layers[0]
    layer.attn.qkv = torch.nn.Sequential(layer.attn.qkv)
    got = embeddings(model, x, fused=True, bf16=False)
    assert count_linear[0] == 4  # the second layer's qkv, proj, lin1, lin2 only
    assert rel_err(got[0], ref[0]) <= 1e-5


def test_fused_runtime_deepcopies_and_pickles(tmp_path) -> None:
    import pickle

    loaded = load_model(save_tiny_model(tmp_path / "sam", "sam"), runtime="bf16,fused")
    want = encode(loaded, x256())[0]["image"]
    again = pickle.loads(pickle.dumps(loaded))
    apply_runtime(again, "bf16,fused")
    assert torch.equal(encode(again, x256())[0]["image"], want)
