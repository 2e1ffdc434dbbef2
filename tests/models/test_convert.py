"""Official Meta SAM / SAM-HQ checkpoints load into transformers models and predict what the reference does."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModel, SamConfig, SamHQModel, SamModel

from helpers import sam_reference
from samadapt.errors import CheckpointError, ModelNotFoundError, OutputExistsError
from samadapt.models.convert import (
    convert_meta_checkpoint,
    convert_meta_sam_state_dict,
    detect_checkpoint_family,
    infer_sam_config,
    load_meta_sam,
)

ATOL = 1e-5  # fp32: the two implementations order a few sums differently


class _NotATensor:
    """A custom object that a weights-only unpickler must refuse."""


@pytest.fixture(scope="module")
def reference() -> Any:
    return sam_reference.build_tiny_reference_sam(seed=0)


@pytest.fixture(scope="module")
def checkpoint(reference: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("meta") / "sam_vit_tiny.pth"
    torch.save(reference.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> SamModel:
    return load_meta_sam(checkpoint)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def embeddings(reference: Any, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return reference.image_encoder(pixels)


def _hf_decode(model: SamModel, embeddings: torch.Tensor, multimask: bool, **prompts: Any) -> tuple[Any, Any]:
    """Run the HF model with the reference's prompts: one image, the reference batch as point batch."""
    kwargs: dict[str, Any] = {}
    if prompts.get("point_coords") is not None:
        kwargs["input_points"] = prompts["point_coords"][None]
        kwargs["input_labels"] = prompts["point_labels"][None]
    if prompts.get("boxes") is not None:
        kwargs["input_boxes"] = prompts["boxes"][None]
    if prompts.get("mask_input") is not None:
        kwargs["input_masks"] = prompts["mask_input"]
    with torch.no_grad():
        out = model(image_embeddings=embeddings, multimask_output=multimask, **kwargs)
    return out.pred_masks[0], out.iou_scores[0]


_GEN = torch.Generator().manual_seed(3)
PROMPTS: dict[str, dict[str, torch.Tensor]] = {
    "one point": {"point_coords": torch.tensor([[[101.0, 57.0]]]), "point_labels": torch.tensor([[1]])},
    "points with background": {
        "point_coords": torch.tensor([[[101.0, 57.0], [30.5, 200.0], [250.0, 3.0]]]),
        "point_labels": torch.tensor([[1, 0, 1]]),
    },
    "two prompts of two points": {
        "point_coords": torch.tensor([[[101.0, 57.0], [30.0, 200.0]], [[12.0, 240.0], [180.0, 90.0]]]),
        "point_labels": torch.tensor([[1, 0], [1, 1]]),
    },
    "box": {"boxes": torch.tensor([[40.0, 60.0, 190.0, 230.0]])},
    "box and point": {
        "boxes": torch.tensor([[40.0, 60.0, 190.0, 230.0]]),
        "point_coords": torch.tensor([[[120.0, 150.0]]]),
        "point_labels": torch.tensor([[0]]),
    },
    "mask and point": {
        "mask_input": 3 * torch.randn(1, 1, 64, 64, generator=_GEN),
        "point_coords": torch.tensor([[[101.0, 57.0]]]),
        "point_labels": torch.tensor([[1]]),
    },
    "mask alone": {"mask_input": 3 * torch.randn(1, 1, 64, 64, generator=_GEN)},
}


def test_image_embeddings_match_reference(model: SamModel, pixels: torch.Tensor, embeddings: torch.Tensor) -> None:
    hf = model.get_image_embeddings(pixels)
    assert hf.shape == (1, 32, 16, 16)
    torch.testing.assert_close(hf, embeddings, atol=ATOL, rtol=0)


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("name", list(PROMPTS))
def test_masks_and_scores_match_reference(
    reference: Any, model: SamModel, embeddings: torch.Tensor, name: str, multimask: bool
) -> None:
    prompts = PROMPTS[name]
    masks, scores = sam_reference.reference_decode(reference, embeddings, multimask_output=multimask, **prompts)
    hf_masks, hf_scores = _hf_decode(model, embeddings, multimask, **prompts)
    assert hf_masks.shape == masks.shape == (masks.shape[0], 3 if multimask else 1, 64, 64)
    torch.testing.assert_close(hf_masks, masks, atol=ATOL, rtol=0)
    torch.testing.assert_close(hf_scores, scores, atol=ATOL, rtol=0)


def test_parity_check_detects_a_wrong_mapping(
    reference: Any, checkpoint: Path, embeddings: torch.Tensor
) -> None:
    """Guards the parity tests themselves: swapping two prompt embeddings must show up."""
    model = load_meta_sam(checkpoint)
    with torch.no_grad():
        first, second = model.prompt_encoder.point_embed[0].weight, model.prompt_encoder.point_embed[1].weight
        first_copy = first.clone()
        first.copy_(second)
        second.copy_(first_copy)
    prompts = PROMPTS["points with background"]
    masks, _ = sam_reference.reference_decode(reference, embeddings, **prompts)
    hf_masks, _ = _hf_decode(model, embeddings, True, **prompts)
    assert (hf_masks - masks).abs().max() > 100 * ATOL


def test_converted_folder_loads_with_from_pretrained(
    reference: Any, checkpoint: Path, embeddings: torch.Tensor, tmp_path: Path
) -> None:
    out_dir = tmp_path / "cache" / "sam-tiny"
    assert convert_meta_checkpoint(checkpoint, out_dir) == out_dir
    assert {p.name for p in out_dir.iterdir()} == {"config.json", "model.safetensors"}
    assert [p.name for p in out_dir.parent.iterdir()] == ["sam-tiny"]  # no temporary folder left
    loaded = AutoModel.from_pretrained(out_dir)
    assert isinstance(loaded, SamModel)
    tied = loaded.prompt_encoder.shared_embedding.positional_embedding
    assert tied is loaded.shared_image_embedding.positional_embedding
    prompts = PROMPTS["box and point"]
    masks, scores = sam_reference.reference_decode(reference, embeddings, **prompts)
    hf_masks, hf_scores = _hf_decode(loaded.eval(), embeddings, True, **prompts)
    torch.testing.assert_close(hf_masks, masks, atol=ATOL, rtol=0)
    torch.testing.assert_close(hf_scores, scores, atol=ATOL, rtol=0)

    with pytest.raises(OutputExistsError, match="sam-tiny.*overwrite=True"):
        convert_meta_checkpoint(checkpoint, out_dir)
    (out_dir / "stale.txt").write_text("old")
    convert_meta_checkpoint(checkpoint, out_dir, overwrite=True)
    assert not (out_dir / "stale.txt").exists()
    assert [p.name for p in out_dir.parent.iterdir()] == ["sam-tiny"]


def test_model_is_returned_in_eval_mode_and_strictly_complete(model: SamModel, reference: Any) -> None:
    assert not model.training
    assert torch.equal(model.vision_encoder.layers[0].attn.rel_pos_h, reference.image_encoder.blocks[0].attn.rel_pos_h)
    assert torch.equal(model.vision_encoder.pos_embed, reference.image_encoder.pos_embed)


def test_convert_is_a_pure_renaming(reference: Any) -> None:
    state = dict(reference.state_dict())
    state["some.unknown.key"] = torch.zeros(2)
    converted = convert_meta_sam_state_dict(state)
    gaussian = state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    assert converted["shared_image_embedding.positional_embedding"] is gaussian
    assert converted["prompt_encoder.shared_embedding.positional_embedding"] is gaussian
    assert converted["some.unknown.key"] is state["some.unknown.key"]
    assert len(converted) == len(state) + 1
    last = state["mask_decoder.iou_prediction_head.layers.2.weight"]
    assert converted["mask_decoder.iou_prediction_head.proj_out.weight"] is last
    assert converted["mask_decoder.output_hypernetworks_mlps.3.layers.0.bias"] is (
        state["mask_decoder.output_hypernetworks_mlps.3.layers.1.bias"]
    )
    assert {id(v) for v in converted.values()} == {id(v) for v in state.values()}


def test_infer_config_reads_the_architecture(reference: Any) -> None:
    config = infer_sam_config(reference.state_dict())
    assert isinstance(config, SamConfig)
    vision = config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (64, 3, 4)
    assert (vision.image_size, vision.patch_size, vision.window_size) == (256, 16, 6)
    assert list(vision.global_attn_indexes) == [1]
    assert (vision.mlp_dim, vision.output_channels, vision.num_pos_feats) == (256, 32, 16)
    assert config.prompt_encoder_config.mask_input_channels == 16
    decoder = config.mask_decoder_config
    assert (decoder.num_attention_heads, decoder.mlp_dim, decoder.layer_norm_eps) == (8, 64, 1e-5)
    assert infer_sam_config(reference.state_dict(), decoder_num_heads=2).mask_decoder_config.num_attention_heads == 2


def _official_meta_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """The official builder's state dict, on the meta device: true shapes, no memory, no download."""
    sam_reference.import_segment_anything()
    from segment_anything.build_sam import sam_model_registry

    with torch.device("meta"):
        return dict(sam_model_registry[variant]().state_dict())


@pytest.mark.parametrize(
    ("variant", "width", "heads", "global_indexes"),
    [
        ("vit_b", 768, 12, [2, 5, 8, 11]),
        ("vit_l", 1024, 16, [5, 11, 17, 23]),
        ("vit_h", 1280, 16, [7, 15, 23, 31]),
    ],
)
def test_official_variants_are_inferred_and_fit_samodel(
    variant: str, width: int, heads: int, global_indexes: list[int]
) -> None:
    state = _official_meta_state_dict(variant)
    config = infer_sam_config(state)
    vision = config.vision_config
    assert (vision.hidden_size, vision.num_attention_heads, vision.window_size) == (width, heads, 14)
    assert list(vision.global_attn_indexes) == global_indexes
    assert (vision.image_size, vision.output_channels) == (1024, 256)
    assert config.mask_decoder_config.num_attention_heads == 8
    with torch.device("meta"):
        hf = SamModel(config)
    expected = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in convert_meta_sam_state_dict(state).items()} == expected


def test_wrong_vision_heads_are_refused(reference: Any) -> None:
    with pytest.raises(CheckpointError, match="vision_num_heads=8 .* 4 heads"):
        infer_sam_config(reference.state_dict(), vision_num_heads=8)
    assert infer_sam_config(reference.state_dict(), vision_num_heads=4).vision_config.num_attention_heads == 4


def test_undivisible_decoder_heads_are_refused(reference: Any) -> None:
    with pytest.raises(CheckpointError, match="decoder_num_heads=3"):
        infer_sam_config(reference.state_dict(), decoder_num_heads=3)


def _save(tmp_path: Path, obj: object, name: str = "ckpt.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"module.{k}": v for k, v in state.items()}


@pytest.mark.parametrize(
    "wrap",
    [lambda s: {"model": s, "epoch": 3}, lambda s: {"state_dict": s}, _strip_module],
    ids=["model", "state_dict", "ddp-prefix"],
)
def test_wrapped_state_dicts_load(
    reference: Any, model: SamModel, tmp_path: Path, wrap: Callable[[dict[str, torch.Tensor]], object]
) -> None:
    loaded = load_meta_sam(_save(tmp_path, wrap(dict(reference.state_dict()))))
    for (name, a), (_, b) in zip(loaded.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_safetensors_file_loads(reference: Any, model: SamModel, tmp_path: Path) -> None:
    path = tmp_path / "sam.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    loaded = load_meta_sam(path)
    assert torch.equal(loaded.mask_decoder.iou_token.weight, model.mask_decoder.iou_token.weight)


def test_incomplete_sam2_checkpoint_is_named(tmp_path: Path) -> None:
    """A SAM 2 file goes to the SAM 2 converter (tests/models/test_convert_sam2.py); a broken one is named."""
    state = {
        "image_encoder.trunk.patch_embed.proj.weight": torch.zeros(96, 3, 7, 7),
        "sam_mask_decoder.iou_token.weight": torch.zeros(1, 256),
        "memory_attention.layers.0.norm1.weight": torch.zeros(256),
    }
    with pytest.raises(CheckpointError, match="lacks the Hiera patch and position embeddings every SAM 2 checkpoint"):
        load_meta_sam(_save(tmp_path, {"model": state}))


def test_transformers_layout_is_named_and_refused(model: SamModel, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="already in the transformers SamModel layout"):
        load_meta_sam(_save(tmp_path, model.state_dict()))


def test_other_checkpoints_are_refused(tmp_path: Path) -> None:
    mobile_sam_like = {"image_encoder.layers.0.blocks.0.attn.qkv.weight": torch.zeros(3, 3)}
    with pytest.raises(CheckpointError, match="not look like an official SAM.*MobileSAM"):
        load_meta_sam(_save(tmp_path, mobile_sam_like))


def test_missing_and_unexpected_keys_are_listed(reference: Any, tmp_path: Path) -> None:
    state = dict(reference.state_dict())
    del state["image_encoder.blocks.2.attn.proj.bias"]
    state["mask_decoder.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as info:
        load_meta_sam(_save(tmp_path, state))
    message = str(info.value)
    assert "1 missing (vision_encoder.layers.2.attn.proj.bias)" in message
    assert "1 unexpected (mask_decoder.extra_head.weight)" in message


def test_tensor_needed_for_the_config_is_named(reference: Any, tmp_path: Path) -> None:
    state = dict(reference.state_dict())
    del state["mask_decoder.iou_token.weight"]
    with pytest.raises(CheckpointError, match="no tensor 'mask_decoder.iou_token.weight'"):
        load_meta_sam(_save(tmp_path, state))


def test_wrong_shape_is_listed(reference: Any, tmp_path: Path) -> None:
    state = dict(reference.state_dict())
    state["mask_decoder.transformer.layers.1.mlp.lin2.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match=r"1 of wrong shape \(mask_decoder.transformer.layers.1.mlp.lin2.bias"):
        load_meta_sam(_save(tmp_path, state))


def test_pickle_with_custom_objects_is_refused(reference: Any, tmp_path: Path) -> None:
    path = _save(tmp_path, {"model": dict(reference.state_dict()), "extra": _NotATensor()})
    with pytest.raises(CheckpointError, match="Refused to unpickle .*_NotATensor object.*weights_only=True"):
        load_meta_sam(path)


def test_non_tensor_entries_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="entry 'epoch' is not a named tensor"):
        load_meta_sam(_save(tmp_path, {"mask_decoder.iou_token.weight": torch.zeros(1, 2), "epoch": 3}))


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_meta_sam(tmp_path / "absent.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot be read as a PyTorch"):
        load_meta_sam(corrupt)


def test_family_detection() -> None:
    sam = ["image_encoder.blocks.0.attn.qkv.weight", "mask_decoder.iou_token.weight"]
    assert detect_checkpoint_family(sam) == "sam"
    assert detect_checkpoint_family([*sam, "mask_decoder.hf_token.weight"]) == "sam-hq"
    assert detect_checkpoint_family(["image_encoder.trunk.blocks.0.attn.qkv.weight"]) == "sam2"
    assert detect_checkpoint_family(["vision_encoder.layers.0.attn.qkv.weight"]) == "transformers"
    assert detect_checkpoint_family(["backbone.conv1.weight"]) == "unknown"


# --- SAM-HQ -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hq_parts(reference: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, SamHQModel]:
    head = sam_reference.build_tiny_reference_hq_head(reference, seed=5)
    path = tmp_path_factory.mktemp("hq") / "sam_hq_vit_tiny.pth"
    torch.save(sam_reference.reference_hq_state_dict(reference, head), path)
    return reference, head, load_meta_sam(path)


def test_sam_hq_weights_land_in_samhqmodel(hq_parts: tuple[Any, Any, SamHQModel], pixels: torch.Tensor) -> None:
    reference, head, model = hq_parts
    assert isinstance(model, SamHQModel) and not model.training
    assert model.config.mask_decoder_config.vit_dim == 64
    decoder = model.mask_decoder
    pairs = {
        "hf_token.weight": decoder.hq_token.weight,
        "hf_mlp.layers.0.weight": decoder.hq_mask_mlp.proj_in.weight,
        "hf_mlp.layers.1.bias": decoder.hq_mask_mlp.layers[0].bias,
        "hf_mlp.layers.2.weight": decoder.hq_mask_mlp.proj_out.weight,
        "compress_vit_feat.0.weight": decoder.compress_vit_conv1.weight,
        "compress_vit_feat.1.bias": decoder.compress_vit_norm.bias,
        "compress_vit_feat.3.weight": decoder.compress_vit_conv2.weight,
        "embedding_encoder.0.bias": decoder.encoder_conv1.bias,
        "embedding_encoder.1.weight": decoder.encoder_norm.weight,
        "embedding_encoder.3.weight": decoder.encoder_conv2.weight,
        "embedding_maskfeature.0.weight": decoder.mask_conv1.weight,
        "embedding_maskfeature.1.weight": decoder.mask_norm.weight,
        "embedding_maskfeature.3.bias": decoder.mask_conv2.bias,
    }
    head_state = head.state_dict()
    for name, tensor in pairs.items():
        assert torch.equal(tensor, head_state[name]), name
    # The ViT is SAM's: same embedding, and the early feature SAM-HQ fuses is the first global block's output.
    embeddings, interm = sam_reference.reference_encode_with_interm(reference, pixels)
    hf_embeddings, hf_interm = model.get_image_embeddings(pixels)
    torch.testing.assert_close(hf_embeddings, embeddings, atol=ATOL, rtol=0)
    assert len(hf_interm) == len(interm) == 1
    torch.testing.assert_close(hf_interm[0], interm[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("hq_token_only", [True, False])
@pytest.mark.parametrize("multimask", [True, False])
def test_sam_hq_masks_match_reference(
    hq_parts: tuple[Any, Any, SamHQModel], pixels: torch.Tensor, multimask: bool, hq_token_only: bool
) -> None:
    from samadapt.models.hq_fix import fix_sam_hq_decoder, needs_hq_decoder_fix

    reference, head, model = hq_parts
    if needs_hq_decoder_fix():  # transformers' decoder upscales the wrong tensor; samadapt corrects it
        fix_sam_hq_decoder(model)
    embeddings, interm = sam_reference.reference_encode_with_interm(reference, pixels)
    prompts = PROMPTS["two prompts of two points"]
    masks, scores = sam_reference.reference_decode_hq(
        reference, head, embeddings, interm, multimask_output=multimask, hq_token_only=hq_token_only, **prompts
    )
    with torch.no_grad():
        out = model(
            image_embeddings=embeddings,
            intermediate_embeddings=interm,
            input_points=prompts["point_coords"][None],
            input_labels=prompts["point_labels"][None],
            multimask_output=multimask,
            hq_token_only=hq_token_only,
        )
    # With multimask output transformers sorts the SAM masks by score; the reference keeps the best one.
    torch.testing.assert_close(out.iou_scores[0][:, :1], scores, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.pred_masks[0][:, :1], masks, atol=ATOL, rtol=0)


@pytest.mark.parametrize("multimask", [True, False])
def test_sam_hq_fast_decoder_matches_reference(hq_parts: tuple[Any, Any, SamHQModel], pixels: torch.Tensor,
                                               multimask: bool) -> None:
    """samadapt's batched SAM-HQ pass, from the first global block's ViT features, decodes as the official code."""
    from samadapt.models.accel import sam_decoder

    reference, head, model = hq_parts
    embeddings, interm = sam_reference.reference_encode_with_interm(reference, pixels)
    prompts = PROMPTS["two prompts of two points"]
    masks, scores = sam_reference.reference_decode_hq(
        reference, head, embeddings, interm, multimask_output=multimask, hq_token_only=False, **prompts
    )
    with torch.no_grad():
        tokens, _ = model.prompt_encoder(prompts["point_coords"][None], prompts["point_labels"][None], None, None)
        sparse = tokens[0]
        lr, sc = sam_decoder.decode_sam(model, embeddings, sparse, torch.ones(sparse.shape[:2], dtype=torch.bool),
                                        multimask, "fp32", vit_features=interm[0])
    # With multimask output the SAM masks come sorted by score; the reference keeps the best one.
    torch.testing.assert_close(sc[:, :1], scores, atol=ATOL, rtol=0)
    torch.testing.assert_close(lr[:, :1], masks, atol=ATOL, rtol=0)


def test_reference_import_leaves_no_torchvision_stand_in() -> None:
    sam_reference.import_segment_anything()
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide(256).apply_image(np.zeros((100, 50, 3), dtype=np.uint8))
    assert resized.shape == (256, 128, 3)
    assert not any(name == "torchvision" or name.startswith("torchvision.") for name in sys.modules) or (
        getattr(sys.modules.get("torchvision"), "__file__", None) is not None
    )
