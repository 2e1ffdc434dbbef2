"""The embedding cache: hits skip the encoder, damage is recomputed, size stays bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from samadapt.predict.cache import EmbeddingCache, embedding_key
from samadapt.predict.segmenter import Segmenter


def _emb(seed: int, n: int = 4096) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(1, n, generator=g), "high_res_0": torch.randn(1, 8, generator=g)}


def test_key_covers_model_preprocessing_and_pixels() -> None:
    px = np.zeros((4, 5, 3), np.uint8)
    base = embedding_key("sam:abc", "pp1", px)
    assert embedding_key("sam:abc", "pp1", px.copy()) == base
    assert embedding_key("sam:abd", "pp1", px) != base
    assert embedding_key("sam:abc", "pp2", px) != base
    px2 = px.copy()
    px2[0, 0, 0] = 1
    assert embedding_key("sam:abc", "pp1", px2) != base
    assert embedding_key("sam:abc", "pp1", np.zeros((5, 4, 3), np.uint8)) != base


def test_round_trip_from_disk(tmp_path: Path) -> None:
    EmbeddingCache(tmp_path).put("k" * 64, _emb(0))
    fresh = EmbeddingCache(tmp_path)  # new process: nothing in memory
    got = fresh.get("k" * 64)
    assert got is not None and all(torch.equal(got[k], _emb(0)[k]) for k in got)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_entry_is_dropped_not_returned(tmp_path: Path, damage: str) -> None:
    cache = EmbeddingCache(tmp_path, memory_items=0)
    key = "a" * 64
    cache.put(key, _emb(1))
    path = cache.path(key)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data[-100] ^= 0xFF  # inside the tensor bytes: the header still parses
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(b"not a safetensors file")
    assert cache.get(key) is None
    assert not path.exists()
    calls = []
    got = cache.get_or_compute(key, lambda: calls.append(1) or _emb(1))
    assert calls == [1] and torch.equal(got["image"], _emb(1)["image"])
    assert cache.get(key) is not None


def test_lru_eviction_keeps_the_store_under_its_bound(tmp_path: Path) -> None:
    probe = EmbeddingCache(tmp_path / "probe")
    probe.put("p" * 64, _emb(0))
    entry = probe.size_bytes()
    cache = EmbeddingCache(tmp_path / "c", max_bytes=int(entry * 2.5), memory_items=0)
    cache.put("1" * 64, _emb(1))
    cache.put("2" * 64, _emb(2))
    import os
    import time

    # entry 1 used more recently than entry 2, and entry 2 before entry 3 is written (files written within one
    # tick of the kernel's coarse clock get the same time: entries 2 and 3 could otherwise tie)
    now = time.time()
    os.utime(cache.path("2" * 64), (now - 10, now - 10))
    later = now + 10
    os.utime(cache.path("1" * 64), (later, later))
    cache.put("3" * 64, _emb(3))
    os.utime(cache.path("3" * 64), (later + 10, later + 10))
    assert cache.size_bytes() <= cache.max_bytes
    assert cache.get("2" * 64) is None  # the least recently used went first
    assert cache.get("1" * 64) is not None and cache.get("3" * 64) is not None


def test_memory_lru_bounded(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, memory_items=2)
    for i in range(4):
        cache.put(f"{i}" * 64, _emb(i))
    assert list(cache._memory) == ["2" * 64, "3" * 64]


def test_no_temp_files_left(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.put("b" * 64, _emb(0))
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["b" * 64 + ".safetensors"]


def test_second_call_does_not_run_the_encoder(tiny_models: dict[str, Path], textured_image: np.ndarray,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seg = Segmenter(tiny_models["sam"], cache=EmbeddingCache(tmp_path))
    first = seg.embed(textured_image)
    assert not first.from_cache and seg.encoder_calls == 1
    # a second Segmenter (a new session) finds it on disk; the encoder must not be called
    seg2 = Segmenter(tiny_models["sam"], cache=EmbeddingCache(tmp_path, memory_items=0))
    monkeypatch.setattr(seg2.loaded.model, "get_image_embeddings", lambda *a, **k: pytest.fail("encoder called"))
    second = seg2.embed(textured_image)
    assert second.from_cache and seg2.encoder_calls == 0
    assert torch.equal(first.embedding["image"], second.embedding["image"])


def test_other_model_weights_miss(tiny_models: dict[str, Path], textured_image: np.ndarray, tmp_path: Path) -> None:
    from samadapt.models.tiny import save_tiny_model

    other = save_tiny_model(tmp_path / "other", "sam", seed=1)
    cache = EmbeddingCache(tmp_path / "cache")
    Segmenter(tiny_models["sam"], cache=cache).embed(textured_image)
    seg = Segmenter(other, cache=cache)
    assert not seg.embed(textured_image).from_cache


def test_an_entry_copied_under_another_key_is_refused_and_recomputed(tmp_path: Path) -> None:
    import shutil

    cache = EmbeddingCache(root=tmp_path, persist=True, memory_items=0)
    a, b = {"image": torch.ones(1, 2, 3)}, {"image": torch.zeros(1, 2, 3)}
    key_a, key_b = "a" * 64, "b" * 64
    cache.put(key_a, a)
    cache.put(key_b, b)
    shutil.copy(cache.path(key_a), cache.path(key_b))  # image A's embedding under image B's name
    fresh = EmbeddingCache(root=tmp_path, persist=True, memory_items=0)
    assert fresh.get(key_b) is None and not cache.path(key_b).exists()
    assert torch.equal(fresh.get(key_a)["image"], a["image"])


def test_an_unwritable_cache_degrades_to_computing_with_one_warning(tmp_path: Path) -> None:
    cache = EmbeddingCache(root=tmp_path / "store", persist=True, memory_items=0)
    key = "c" * 64
    cache.path(key).mkdir(parents=True)  # an entry replaced by a folder: no file can be written there
    calls = []
    with pytest.warns(UserWarning, match="cannot be written") as record:
        for _ in range(3):
            out = cache.get_or_compute(key, lambda: calls.append(1) or {"image": torch.ones(2)})
            assert torch.equal(out["image"], torch.ones(2))
    assert len(record) == 1 and len(calls) == 3


def test_the_bound_comes_from_the_environment_and_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers.cli import run_cli
    from samadapt.errors import InputError
    from samadapt.predict.cache import DEFAULT_MAX_BYTES

    monkeypatch.delenv("SAMADAPT_CACHE_MAX_BYTES", raising=False)
    assert EmbeddingCache(tmp_path).max_bytes == DEFAULT_MAX_BYTES
    monkeypatch.setenv("SAMADAPT_CACHE_MAX_BYTES", "20G")
    assert EmbeddingCache(tmp_path).max_bytes == 20 * 1024**3
    monkeypatch.setenv("SAMADAPT_CACHE_MAX_BYTES", "lots")
    with pytest.raises(InputError, match="not a size"):
        EmbeddingCache(tmp_path)
    monkeypatch.delenv("SAMADAPT_CACHE_MAX_BYTES")
    code, text = run_cli(["--cache-max-bytes", "-1", "models", "list"], monkeypatch, capsys)
    assert code == 2 and "not a size" in text
    code, text = run_cli(["--cache-max-bytes", "512M", "models", "list"], monkeypatch, capsys)
    assert code == 0 and EmbeddingCache(tmp_path).max_bytes == 512 * 1024**2
