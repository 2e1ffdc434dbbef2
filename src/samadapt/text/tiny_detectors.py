"""Tiny random-initialised GroundingDINO and OWLv2 detectors, saved in the published layout.

They load through the same code as the published checkpoints (config, weights, tokenizer and
preprocessor files under the same names), run in well under a second on a CPU, and need no
download, so tests and offline smoke runs can exercise text search end to end. Their boxes
mean nothing; the ``samadapt.json`` marker beside the weights says so.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from samadapt.errors import InputError
from samadapt.models.registry import DetectorFamily
from samadapt.models.tiny import MARKER
from samadapt.models.tiny_tokenizers import clip_vocab, write_clip_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["DETECTOR_FAMILIES", "build_tiny_detector", "is_tiny_detector_folder", "save_tiny_detector"]

DETECTOR_FAMILIES: tuple[DetectorFamily, ...] = ("grounding-dino", "owlv2")

#: Words the tiny tokenizers know whole, so test phrases become one token each (GroundingDINO).
WORDS = ("a", "the", "of", "and", "square", "pit", "pits", "crater", "craters", "dune", "dunes", "building",
         "buildings", "road", "field", "tree", "house", "car", "river", "lake", "rock", "boulder", "shadow")

#: Input sizes of the tiny models: small, so that a detection takes milliseconds.
TINY_GROUNDING_DINO_SIZE = {"shortest_edge": 128, "longest_edge": 213}
TINY_OWLV2_SIZE = 128

# GroundingDINO's text attention masks hard-code BERT's ids of [CLS], [SEP], "." and "?"
# (transformers' modeling_grounding_dino.SPECIAL_TOKENS), so the tiny vocabulary keeps them.
_BERT_FIXED = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}
_BERT_SIZE = 1030


def bert_vocab() -> list[str]:
    """A WordPiece vocabulary of 1030 entries laid out as BERT's around the ids GroundingDINO hard-codes.

    Ids 0, 100-103, 1012 and 1029 are BERT's ([PAD], [UNK], [CLS], [SEP], [MASK], ".", "?");
    then ASCII printable characters, "##" continuations of letters and digits, and :data:`WORDS`;
    the rest are ``[unusedN]`` fillers.
    """
    pieces = [c for c in string.printable[:94] if c not in ".?"]
    pieces += ["##" + c for c in string.ascii_lowercase + string.digits] + list(WORDS)
    vocab = [""] * _BERT_SIZE
    for i, tok in _BERT_FIXED.items():
        vocab[i] = tok
    free = (i for i in range(104, _BERT_SIZE) if i not in _BERT_FIXED)
    for tok, i in zip(pieces, free, strict=False):
        vocab[i] = tok
    return [tok or f"[unused{i}]" for i, tok in enumerate(vocab)]


def tiny_tokenizer(family: DetectorFamily) -> PreTrainedTokenizerBase:
    """The tiny tokenizer of a detector family: BERT WordPiece (GroundingDINO) or CLIP byte-level BPE (OWLv2)."""
    from transformers import BertTokenizer, CLIPTokenizer

    if family == "grounding-dino":
        return BertTokenizer(vocab={tok: i for i, tok in enumerate(bert_vocab())}, do_lower_case=True)
    if family == "owlv2":
        # the published OWLv2 tokenizer pads with "!" (id 0) to 16 tokens
        return CLIPTokenizer(vocab=clip_vocab(), merges=[], pad_token="!", model_max_length=16)
    raise InputError(f"unknown detector family {family!r}; use one of {', '.join(DETECTOR_FAMILIES)}")


def tiny_detector_config(family: DetectorFamily):  # noqa: ANN201 - returns a transformers config
    """The transformers config of a tiny detector (hidden sizes 32, one or two layers)."""
    from transformers import GroundingDinoConfig, Owlv2Config

    if family == "grounding-dino":
        backbone = dict(model_type="swin", image_size=TINY_GROUNDING_DINO_SIZE["shortest_edge"], patch_size=4,
                        embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4,
                        out_features=["stage2", "stage3", "stage4"], out_indices=[2, 3, 4])
        text = dict(model_type="bert", vocab_size=_BERT_SIZE, hidden_size=32, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
        return GroundingDinoConfig(
            backbone_config=backbone, text_config=text, d_model=32, num_queries=30, encoder_layers=1,
            decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_n_points=2, decoder_n_points=2, num_feature_levels=4,
            max_text_len=256, architectures=["GroundingDinoForObjectDetection"],
        )
    if family == "owlv2":
        text = dict(vocab_size=len(clip_vocab()), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, max_position_embeddings=16, bos_token_id=len(clip_vocab()) - 2,
                    eos_token_id=len(clip_vocab()) - 1, pad_token_id=0)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      image_size=TINY_OWLV2_SIZE, patch_size=16)
        return Owlv2Config(text_config=text, vision_config=vision, projection_dim=32,
                           architectures=["Owlv2ForObjectDetection"])
    raise InputError(f"unknown detector family {family!r}; use one of {', '.join(DETECTOR_FAMILIES)}")


def tiny_preprocessor_config(family: DetectorFamily) -> dict[str, Any]:
    """The ``preprocessor_config.json`` of a tiny detector: the published one's, at the tiny input size."""
    common = {"do_normalize": True, "do_rescale": True, "do_resize": True, "do_pad": True, "resample": 2,
              "rescale_factor": 1 / 255}
    if family == "grounding-dino":
        return {**common, "image_processor_type": "GroundingDinoImageProcessor", "format": "coco_detection",
                "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "pad_size": None,
                "size": dict(TINY_GROUNDING_DINO_SIZE), "processor_class": "GroundingDinoProcessor"}
    if family == "owlv2":
        return {**common, "image_processor_type": "Owlv2ImageProcessor",
                "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                "size": {"height": TINY_OWLV2_SIZE, "width": TINY_OWLV2_SIZE}, "processor_class": "Owlv2Processor"}
    raise InputError(f"unknown detector family {family!r}; use one of {', '.join(DETECTOR_FAMILIES)}")


def build_tiny_detector(family: DetectorFamily, seed: int = 0) -> PreTrainedModel:
    """A tiny detector of the family (``GroundingDinoForObjectDetection`` or ``Owlv2ForObjectDetection``).

    Args:
        family: "grounding-dino" or "owlv2".
        seed: seed of the random weights; the same seed gives the same weights.

    Returns:
        The model in eval mode, fp32, on the CPU.

    Raises:
        InputError: an unknown family.
    """
    from transformers import GroundingDinoForObjectDetection, Owlv2ForObjectDetection

    config = tiny_detector_config(family)
    torch.manual_seed(seed)
    cls = GroundingDinoForObjectDetection if family == "grounding-dino" else Owlv2ForObjectDetection
    return cls(config).eval()


def is_tiny_detector_folder(folder: Path) -> bool:
    """True when a folder holds a tiny detector samadapt wrote (so ``overwrite`` may replace it)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("random_init") is True and marker.get("family") in DETECTOR_FAMILIES


def _write_tokenizer(tmp: Path, family: DetectorFamily) -> None:
    if family == "owlv2":
        write_clip_tokenizer(tmp, max_length=16, pad_token="!")  # the published OWLv2 tokenizer's
        return
    tiny_tokenizer(family).save_pretrained(tmp)
    # The published repository also carries the tokenizer's source files; write them under the same names.
    (tmp / "vocab.txt").write_text("\n".join(bert_vocab()) + "\n", encoding="utf-8")
    specials = {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]",
                "unk_token": "[UNK]"}
    (tmp / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))


def save_tiny_detector(out_dir: Path, family: DetectorFamily, *, seed: int = 0, overwrite: bool = False) -> Path:
    """Write a tiny random detector in the published layout to ``out_dir``.

    The folder holds ``config.json``, ``model.safetensors``, the tokenizer files, a
    ``preprocessor_config.json`` with a small input size, and the ``samadapt.json`` marker
    ``{"random_init": true, "family": ..., "seed": ...}``. It is assembled under a temporary
    name and renamed, so it is never half-written.

    Args:
        out_dir: the folder to write.
        family: "grounding-dino" or "owlv2".
        seed: seed of the random weights.
        overwrite: replace ``out_dir`` if it holds a tiny detector written before.

    Returns:
        ``out_dir``.

    Raises:
        InputError: an unknown family.
        OutputExistsError: ``out_dir`` exists and ``overwrite`` is False (or it holds something else).
    """
    from transformers.utils import logging as hf_logging

    from samadapt._io import atomic_dir

    if family not in DETECTOR_FAMILIES:
        raise InputError(f"unknown detector family {family!r}; use one of {', '.join(DETECTOR_FAMILIES)}")
    hf_logging.disable_progress_bar()
    with atomic_dir(Path(out_dir), overwrite=overwrite, kind="tiny detector", owned=is_tiny_detector_folder) as tmp:
        build_tiny_detector(family, seed).save_pretrained(tmp)
        _write_tokenizer(tmp, family)
        (tmp / "preprocessor_config.json").write_text(json.dumps(tiny_preprocessor_config(family), indent=2))
        (tmp / MARKER).write_text(json.dumps({"random_init": True, "family": family, "seed": seed}))
    return Path(out_dir)
