"""Tokenizers for the tiny test models of the families that read text (SAM 3, GroundingDINO, OWLv2).

They are built here, offline, with the same classes and file names the published repositories use,
so the tiny models load through the same code as the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

#: Files a saved tokenizer may leave in a model folder (beside config.json and the weights).
TOKENIZER_FILES = frozenset({
    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "preprocessor_config.json", "processor_config.json",
})


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE for bytes 0-255, in GPT-2 / CLIP order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    # bytes that are not printable map to code points from 256 on, in byte order
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(256 - len(keep))]


def clip_vocab() -> dict[str, int]:
    """A byte-level BPE vocabulary with no merges: each byte symbol, its ``</w>`` form, then the specials.

    The end token comes last: CLIP's text model pools the position of the highest token id, which
    must be ``<|endoftext|>``.
    """
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def write_clip_tokenizer(folder: Path, *, max_length: int, pad_token: str) -> None:
    """Save a tiny CLIP tokenizer into ``folder`` under the published file names (vocab.json, merges.txt, ...)."""
    from transformers import CLIPTokenizer

    vocab = clip_vocab()
    CLIPTokenizer(vocab=vocab, merges=[], pad_token=pad_token, model_max_length=max_length).save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad_token,
                "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
