"""The fast batched decoder gives what transformers gives for each object decoded alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from samadapt.imagery.preprocess import Geometry
from samadapt.models import sam as runtime
from samadapt.models.accel import sam_decoder, sam_hq_decoder, sam_upscale
from samadapt.models.loading import LoadedModel, load_model
from samadapt.models.sam import DecoderPrompts, _call_model, decode
from samadapt.predict.segmenter import Embedded, Segmenter
from samadapt.prompts.types import ObjectPrompt


def _prompts(size: float, n: int = 10, seed: int = 0) -> list[ObjectPrompt]:
    """A mix of single points, several points with a background one, boxes, and box + point."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x0, y0 = rng.uniform(0, size * 0.6, 2)
        box = np.array([x0, y0, x0 + size * 0.3, y0 + size * 0.3])
        pts = rng.uniform(0, size - 1, (1 + i % 3, 2))
        labels = np.ones(len(pts), np.int64)
        labels[-1] = 0 if len(pts) > 1 else 1
        kind = i % 4
        if kind == 0:
            out.append(ObjectPrompt(points=pts[:1], labels=np.array([1])))
        elif kind == 1:
            out.append(ObjectPrompt(points=pts, labels=labels))
        elif kind == 2:
            out.append(ObjectPrompt(box=box))
        else:
            out.append(ObjectPrompt(points=pts[:1], labels=np.array([1]), box=box))
    return out


def _reference(loaded: LoadedModel, emb: Embedded, prompts: list[ObjectPrompt], multimask: bool):
    """transformers' own forward, one object per call, no padding."""
    masks, scores = [], []
    for p in prompts:
        dp = Segmenter._decoder_prompts([p], emb.geometry)
        kwargs: dict[str, object] = {"multimask_output": multimask}
        points, labels, boxes = dp.subset(np.array([0]))
        if points is not None:
            kwargs["input_points"], kwargs["input_labels"] = points, labels
        if boxes is not None:
            kwargs["input_boxes"] = boxes
        with torch.no_grad():
            lr, sc = _call_model(loaded, emb.embedding, kwargs)
        masks.append(lr[0])
        scores.append(sc[0])
    return torch.stack(masks), torch.stack(scores)


def _check_agreement(fast: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor]) -> None:
    (lr, sc), (rlr, rsc) = fast, ref
    assert lr.shape == rlr.shape and sc.shape == rsc.shape
    scale = rlr.abs().max()
    assert (lr - rlr).abs().max() <= 1e-4 * scale
    torch.testing.assert_close(sc, rsc, atol=1e-5, rtol=1e-4)
    a, b = lr > 0, rlr > 0
    inter, union = (a & b).sum((-1, -2)).float(), (a | b).sum((-1, -2)).float()
    assert (inter / union.clamp(min=1)).min() >= 0.99
    fraction = b.float().mean((-1, -2))
    assert ((fraction > 0.01) & (fraction < 0.99)).float().mean() >= 0.5  # the masks are not trivial


def _livelier(loaded: LoadedModel, seed: int = 0) -> LoadedModel:
    """Random decoder weights scaled up so masks are neither empty nor full."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in loaded.model.mask_decoder.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return loaded


def _embedded(loaded: LoadedModel, size: int, hw: tuple[int, int]) -> Embedded:
    """A random embedding of the model's shapes (SAM 2: with its two high-resolution features)."""
    c = loaded.model.config.mask_decoder_config.hidden_size
    side = loaded.model.prompt_encoder.image_embedding_size
    side = side[0] if isinstance(side, (tuple, list)) else side
    gen = torch.Generator().manual_seed(1)
    emb = {"image": torch.randn(1, c, side, side, generator=gen)}
    if loaded.family == "sam2":
        emb["high_res_0"] = torch.randn(1, c // 8, 4 * side, 4 * side, generator=gen)
        emb["high_res_1"] = torch.randn(1, c // 4, 2 * side, 2 * side, generator=gen)
    if loaded.family == "sam-hq":  # early ViT features, channels-last
        emb["vit_0"] = torch.randn(1, side, side, loaded.model.config.mask_decoder_config.vit_dim, generator=gen)
    scale = size / max(hw)
    geometry = Geometry(original_hw=hw, resized_hw=(int(hw[0] * scale + 0.5), int(hw[1] * scale + 0.5)))
    return Embedded(image=None, embedding=emb, geometry=geometry, from_cache=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("multimask", [True, False])
def test_tiny_sam_batched_mixed_prompts_equal_one_at_a_time(tiny_models: dict[str, Path], multimask: bool) -> None:
    loaded = _livelier(load_model(tiny_models["sam"]))
    assert sam_decoder.supported(loaded.model)
    emb = _embedded(loaded, loaded.preprocessing.size, (300, 500))
    prompts = _prompts(300, n=20)  # more than one chunk of the fast decoder
    seg = Segmenter(loaded, cache=False)
    _check_agreement(seg.decode(emb, prompts, multimask=multimask), _reference(loaded, emb, prompts, multimask))


def _vit_base_decoder(root: Path, runtime: str) -> LoadedModel:
    """sam-vit-base's decoder (256 channels, 8 heads, 64x64 embedding) behind a small encoder."""
    from transformers import AutoModel, SamConfig

    if not (root / "m").is_dir():
        config = SamConfig(vision_config={"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                                          "global_attn_indexes": [0], "mlp_dim": 128})
        torch.manual_seed(0)
        AutoModel.from_config(config).save_pretrained(root / "m")
    loaded = _livelier(load_model(root / "m", runtime=runtime))
    assert loaded.model.config.mask_decoder_config.hidden_size == 256
    return loaded


def test_sam_vit_base_decoder_batched_equals_one_at_a_time(tmp_path: Path) -> None:
    loaded = _vit_base_decoder(tmp_path, "fp32")
    assert sam_decoder.precision_for(loaded) == "fp32"
    emb = _embedded(loaded, 1024, (700, 1000))
    prompts = _prompts(700, n=8)
    seg = Segmenter(loaded, cache=False)
    _check_agreement(seg.decode(emb, prompts), _reference(loaded, emb, prompts, True))


def _check_bf16_agreement(fast: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The bounds of the bf16 path against the float32 reference.

    Every mask has IoU >= 0.99 with the reference mask; logits differ by at most 2% of the
    largest reference logit (0.2% on average); predicted IoUs by at most 0.005.
    """
    (lr, sc), (rlr, rsc) = fast, ref
    assert lr.shape == rlr.shape and sc.shape == rsc.shape
    assert lr.dtype == rlr.dtype == torch.float32
    scale = rlr.abs().max()
    assert (lr - rlr).abs().max() <= 2e-2 * scale
    assert (lr - rlr).abs().mean() <= 2e-3 * scale
    torch.testing.assert_close(sc, rsc, atol=5e-3, rtol=0)
    a, b = lr > 0, rlr > 0
    inter, union = (a & b).sum((-1, -2)).float(), (a | b).sum((-1, -2)).float()
    assert (inter / union.clamp(min=1)).min() >= 0.99
    fraction = b.float().mean((-1, -2))
    assert ((fraction > 0.01) & (fraction < 0.99)).float().mean() >= 0.5  # the masks are not trivial


def test_sam_vit_base_decoder_bf16_agrees_with_fp32_one_at_a_time(tmp_path: Path) -> None:
    """A bf16 encoder runtime makes the decoder run in bf16, within the stated bounds of fp32."""
    loaded = _vit_base_decoder(tmp_path, "bf16")
    assert sam_decoder.precision_for(loaded) == "bf16"
    emb = _embedded(loaded, 1024, (700, 1000))
    prompts = _prompts(700, n=12)  # 12 prompts: more than one group of the bf16 path
    fast = Segmenter(loaded, cache=False).decode(emb, prompts)
    _check_bf16_agreement(fast, _reference(loaded, emb, prompts, True))


@pytest.mark.parametrize(("multimask", "one_per_group"), [(True, False), (False, True)])
def test_tiny_sam_bf16_agrees_with_fp32_one_at_a_time(tiny_models: dict[str, Path], multimask: bool,
                                                      one_per_group: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _livelier(load_model(tiny_models["sam"]))
    assert sam_decoder.precision_for(loaded) == "fp32"  # 256 px: the runtime keeps fp32
    emb = _embedded(loaded, loaded.preprocessing.size, (300, 500))
    prompts = _prompts(300, n=20)
    monkeypatch.setattr(sam_decoder, "precision_for", lambda _loaded: "bf16")
    if one_per_group:
        monkeypatch.setattr(sam_decoder, "GROUP_BYTES", 1)
    fast = Segmenter(loaded, cache=False).decode(emb, prompts, multimask=multimask)
    _check_bf16_agreement(fast, _reference(loaded, emb, prompts, multimask))


@pytest.mark.parametrize("family", ["sam", "sam-hq"])
def test_upscaling_blocks_equal_one_block(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                          family: str) -> None:
    """Masks do not depend on how the upscaling and the prompts are cut into blocks and groups."""
    loaded = _livelier(load_model(tiny_models[family]))
    emb = _embedded(loaded, loaded.preprocessing.size, (256, 256))
    dp = Segmenter._decoder_prompts(_prompts(256, n=6), emb.geometry)
    whole = decode(loaded, emb.embedding, dp)
    monkeypatch.setattr(sam_upscale, "UPSCALE_TOKENS", 48)  # 3 rows of 16 tokens: does not divide 16 rows
    monkeypatch.setattr(sam_decoder, "GROUP_BYTES", 1)  # one prompt per group
    cut = decode(loaded, emb.embedding, dp)
    torch.testing.assert_close(cut[0], whole[0], atol=1e-5 * float(whole[0].abs().max()), rtol=1e-4)
    torch.testing.assert_close(cut[1], whole[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("multimask", [True, False])
def test_tiny_sam2_batched_mixed_prompts_equal_one_at_a_time(tiny_models: dict[str, Path], multimask: bool) -> None:
    """SAM 2 through the fast pass: its object-score token, high-resolution features and, for
    one mask, its stability rule (which needs all four masks) as transformers has them."""
    loaded = _livelier(load_model(tiny_models["sam2"]))
    assert sam_decoder.supported(loaded.model)
    assert loaded.model.mask_decoder.dynamic_multimask_via_stability
    emb = _embedded(loaded, loaded.preprocessing.size, (300, 500))
    prompts = _prompts(300, n=20)
    seg = Segmenter(loaded, cache=False)
    _check_agreement(seg.decode(emb, prompts, multimask=multimask), _reference(loaded, emb, prompts, multimask))


@pytest.mark.parametrize("multimask", [True, False])
def test_tiny_sam_hq_batched_mixed_prompts_equal_one_at_a_time(tiny_models: dict[str, Path], multimask: bool) -> None:
    """SAM-HQ through the fast pass: its HQ token, the HQ mask from the upscaled and image-side
    features, and the IoU-sorted multimask output, as transformers (with the decoder fix) has them."""
    loaded = _livelier(load_model(tiny_models["sam-hq"]))
    assert sam_decoder.supported(loaded.model)
    seg = Segmenter(loaded, cache=False)
    emb = seg.embed(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    assert sorted(emb.embedding) == ["image", "vit_0"]  # only the ViT features the decoder reads are kept
    prompts = _prompts(300, n=20)
    _check_agreement(seg.decode(emb, prompts, multimask=multimask), _reference(loaded, emb, prompts, multimask))


@pytest.mark.parametrize("scale", [1.0, 0.0, 1e-3])
def test_sam_hq_mask_norm_folded_or_not_agrees(tiny_models: dict[str, Path], scale: float) -> None:
    """The HQ mask's LayerNorm is folded into the convolution before it (centring, its weight) unless a weight
    is near zero (the variance would divide by it): both ways agree with transformers."""
    loaded = _livelier(load_model(tiny_models["sam-hq"]))
    dec = loaded.model.mask_decoder
    with torch.no_grad():
        dec.mask_norm.weight[0] = dec.mask_norm.weight[0] * scale
    assert (sam_hq_decoder._normed_conv(dec, torch.float32) is None) == (scale < 0.01)
    seg = Segmenter(loaded, cache=False)
    emb = seg.embed(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    prompts = _prompts(300, n=6)
    _check_agreement(seg.decode(emb, prompts), _reference(loaded, emb, prompts, True))


@pytest.mark.parametrize("scale", [1.0, 1e-3])
@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_upscaling_norm_folded_or_not_agrees(tiny_models: dict[str, Path], family: str, scale: float) -> None:
    """The upscaling's LayerNorm is folded into the first convolution (and SAM 2's high-resolution term) unless a
    weight is near zero: both ways agree with transformers."""
    loaded = _livelier(load_model(tiny_models[family]))
    dec = loaded.model.mask_decoder
    with torch.no_grad():
        dec.upscale_layer_norm.weight[1] = dec.upscale_layer_norm.weight[1] * scale
    assert (sam_upscale._folded_norm(dec) is None) == (scale < 0.01)
    seg = Segmenter(loaded, cache=False)
    emb = seg.embed(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    prompts = _prompts(300, n=6)
    _check_agreement(seg.decode(emb, prompts), _reference(loaded, emb, prompts, True))


def test_sam_hq_image_features_are_kept_per_embedding(tiny_models: dict[str, Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The image-side HQ features are computed once per embedding and follow weight changes."""
    import gc

    loaded = _livelier(load_model(tiny_models["sam-hq"]))
    seg = Segmenter(loaded, cache=False)
    emb = seg.embed(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    computed: list[int] = []
    real = sam_hq_decoder._compute_hq_features
    monkeypatch.setattr(sam_hq_decoder, "_compute_hq_features", lambda *a: computed.append(1) or real(*a))
    prompts = _prompts(300, n=4)
    first = seg.decode(emb, prompts)
    again = seg.decode(emb, prompts[:2])
    assert len(computed) == 1
    torch.testing.assert_close(again[0], first[0][:2])
    with torch.no_grad():
        loaded.model.mask_decoder.compress_vit_conv1.weight.mul_(1.5)
    changed = seg.decode(emb, prompts)
    assert len(computed) == 2
    _check_agreement(changed, _reference(loaded, emb, prompts, True))
    second = _livelier(load_model(tiny_models["sam-hq"]), seed=1)  # another decoder on the same embedding
    _check_agreement(Segmenter(second, cache=False).decode(emb, prompts), _reference(second, emb, prompts, True))
    assert len(computed) == 3
    other = seg.embed(np.random.default_rng(1).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    seg.decode(other, prompts[:1])
    assert len(computed) == 4
    held = len(sam_hq_decoder._FEATURES)
    del other
    gc.collect()
    assert len(sam_hq_decoder._FEATURES) == held - 1  # gone with its embedding


@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_image_side_projections_are_kept_per_embedding(tiny_models: dict[str, Path], family: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The projections of the shared image tokens (the first layer's, and the later attentions' through the
    folded weights) are computed once per embedding, follow weight changes, are not shared between models, and
    go with their embedding."""
    import gc

    loaded = _livelier(load_model(tiny_models[family]))
    seg = Segmenter(loaded, cache=False)
    emb = seg.embed(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    computed: list[int] = []
    kept = sam_decoder._IMAGE_SIDE
    real_get = kept.get
    monkeypatch.setattr(kept, "get", lambda tensor, key, others, compute: real_get(
        tensor, key, others, lambda: computed.append(1) or compute()))
    prompts = _prompts(300, n=4)
    first = seg.decode(emb, prompts)
    again = seg.decode(emb, prompts[:2])
    assert len(computed) == 1
    torch.testing.assert_close(again[0], first[0][:2])
    transformer = loaded.model.mask_decoder.transformer
    for weight in (transformer.layers[0].cross_attn_image_to_token.q_proj.weight,
                   loaded.model.prompt_encoder.no_mask_embed.weight, transformer.layers[1].layer_norm4.bias,
                   transformer.layers[1].cross_attn_token_to_image.v_proj.weight,
                   transformer.layers[1].cross_attn_image_to_token.q_proj.weight,
                   transformer.final_attn_token_to_image.k_proj.weight):
        with torch.no_grad():
            weight.mul_(1.5)
        _check_agreement(seg.decode(emb, prompts), _reference(loaded, emb, prompts, True))
    assert len(computed) == 7
    if family == "sam2":  # its high-resolution features' terms follow their values and the weights
        with torch.no_grad():
            emb.embedding["high_res_0"].mul_(0.5)
            loaded.model.mask_decoder.upscale_conv2.bias.add_(0.1)
        _check_agreement(seg.decode(emb, prompts), _reference(loaded, emb, prompts, True))
    second = _livelier(load_model(tiny_models[family]), seed=1)  # another decoder on the same embedding
    _check_agreement(Segmenter(second, cache=False).decode(emb, prompts), _reference(second, emb, prompts, True))
    assert len(computed) == 8
    held, terms = len(kept), len(sam_upscale._HIGH_RES)
    del emb
    gc.collect()
    assert len(kept) == held - 1  # gone with its embedding
    assert len(sam_upscale._HIGH_RES) == terms - (family == "sam2")


def _full_size_config(family: str):
    """SAM-HQ's or SAM 2's decoder at full size (256 channels, 64x64 embedding, 1024 px) behind a small encoder."""
    from transformers import Sam2Config, SamHQConfig

    if family == "sam-hq":
        return SamHQConfig(vision_config={"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                                          "global_attn_indexes": [0], "mlp_dim": 128},
                           mask_decoder_config={"vit_dim": 64})
    backbone = {"model_type": "sam2_hiera_det_model", "hidden_size": 8, "blocks_per_stage": [1, 1, 1, 1],
                "embed_dim_per_stage": [8, 16, 32, 64], "num_attention_heads_per_stage": [1, 1, 1, 1],
                "global_attention_blocks": [3]}
    return Sam2Config(vision_config={"backbone_config": backbone, "backbone_channel_list": [64, 32, 16, 8]})


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("family", ["sam-hq", "sam2"])
def test_full_size_decoder_agrees_with_one_at_a_time(tmp_path: Path, family: str, precision: str) -> None:
    from transformers import AutoModel

    torch.manual_seed(0)
    AutoModel.from_config(_full_size_config(family)).save_pretrained(tmp_path / family)
    loaded = _livelier(load_model(tmp_path / family, runtime=precision))
    assert loaded.model.config.mask_decoder_config.hidden_size == 256 and loaded.preprocessing.size == 1024
    assert sam_decoder.supported(loaded.model) and sam_decoder.precision_for(loaded) == precision
    emb = _embedded(loaded, 1024, (700, 1000))
    prompts = _prompts(700, n=12)  # more than one group of the bf16 path
    fast = Segmenter(loaded, cache=False).decode(emb, prompts)
    check = _check_agreement if precision == "fp32" else _check_bf16_agreement
    check(fast, _reference(loaded, emb, prompts, True))


@pytest.mark.parametrize("family", ["sam2", "sam-hq"])
def test_other_families_batch_mixed_prompts_exactly(tiny_models: dict[str, Path], family: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sam_decoder, "supported", lambda model: False)  # as with an adapter: transformers' forward
    loaded = load_model(tiny_models[family])
    assert not sam_decoder.supported(loaded.model)
    cfg = loaded.model.config
    emb = Segmenter(loaded, cache=False).embed(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    prompts = _prompts(300, n=8)
    lr, sc = Segmenter(loaded, cache=False).decode(emb, prompts)
    rlr, rsc = _reference(loaded, emb, prompts, True)
    torch.testing.assert_close(lr, rlr, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sc, rsc, atol=1e-5, rtol=1e-4)
    assert cfg is not None


@pytest.mark.parametrize(("family", "calls"), [("sam2", 8), ("sam-hq", None)])
def test_forward_batch_per_family(tiny_models: dict[str, Path], monkeypatch, family: str, calls: int | None) -> None:
    """Without the fast pass, SAM 2 goes one object per call (faster per object than batched
    there); SAM-HQ one call per prompt shape."""
    monkeypatch.setattr(sam_decoder, "supported", lambda model: False)
    loaded = load_model(tiny_models[family])
    seg = Segmenter(loaded, cache=False)
    emb = seg.embed(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    prompts = _prompts(300, n=8)
    seen: list[int] = []
    real = runtime._call_model

    def counted(loaded, embedding, kwargs):
        out = real(loaded, embedding, kwargs)
        seen.append(len(out[0]))
        return out

    monkeypatch.setattr(runtime, "_call_model", counted)
    seg.decode(emb, prompts)
    shapes = len(seg._decoder_prompts(prompts, emb.geometry).groups())
    assert sum(seen) == 8
    assert len(seen) == (calls if calls is not None else shapes) and shapes < 8


def test_padding_points_change_nothing(tiny_models: dict[str, Path]) -> None:
    loaded = _livelier(load_model(tiny_models["sam"]))
    emb = _embedded(loaded, loaded.preprocessing.size, (256, 256)).embedding
    alone = DecoderPrompts(points=np.array([[[40.0, 60.0]]]), labels=np.array([[1]]))
    padded = DecoderPrompts(
        points=np.array([[[40.0, 60.0], [0.0, 0.0], [9.0, 9.0]], [[10.0, 20.0], [30.0, 30.0], [5.0, 5.0]]]),
        labels=np.array([[1, -10, -10], [1, 0, 1]]))
    a, b = decode(loaded, emb, alone), decode(loaded, emb, padded)
    torch.testing.assert_close(b[0][:1], a[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b[1][:1], a[1], atol=1e-6, rtol=1e-5)


def test_padding_among_a_prompts_tokens_equals_padding_at_the_end(tiny_models: dict[str, Path]) -> None:
    """decode_sam skips the padding at the end of a prompt's tokens; padding elsewhere is masked instead, with the
    same result (the attention does not depend on the order of the prompt tokens)."""
    loaded = _livelier(load_model(tiny_models["sam"]))
    image = _embedded(loaded, loaded.preprocessing.size, (256, 256)).embedding["image"]
    gen = torch.Generator().manual_seed(0)
    sparse = torch.randn(2, 4, image.shape[1], generator=gen)
    at_end = torch.tensor([[True, True, False, False], [True, True, True, True]])
    order = torch.tensor([0, 2, 1, 3])  # prompt 0's second token moved behind a padding token
    inside = at_end.clone()
    inside[0] = at_end[0, order]
    moved = sparse.clone()
    moved[0] = sparse[0, order]
    with torch.inference_mode():
        a = sam_decoder.decode_sam(loaded.model, image, sparse, at_end, multimask=True)
        b = sam_decoder.decode_sam(loaded.model, image, moved, inside, multimask=True)
    torch.testing.assert_close(b[0], a[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b[1], a[1], atol=1e-6, rtol=1e-5)


def test_positional_embedding_is_cached_and_follows_the_weights(tiny_models: dict[str, Path]) -> None:
    model = load_model(tiny_models["sam"]).model
    first = sam_decoder.image_positional_embedding(model)
    assert sam_decoder.image_positional_embedding(model) is first
    with torch.no_grad():
        model.shared_image_embedding.positional_embedding.mul_(2.0)
    again = sam_decoder.image_positional_embedding(model)
    assert again is not first
    ref = model.get_image_wide_positional_embeddings()[0].flatten(1).T
    torch.testing.assert_close(again, ref)
