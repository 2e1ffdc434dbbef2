"""Encoder runtimes: each faster path keeps the embeddings and the masks of the fp32 reference.

Fidelity bounds, per path (relative Frobenius error of every embedding tensor against
transformers' plain fp32 call, same weights, same input):

* fused blocks (fp32):   <= 1e-5 (measured: ViT bit-identical to transformers' SDPA path, Hiera ~3e-7)
* bf16, with or without the fused blocks: <= 2e-2 (measured 0.7-1.0e-2)
* ONNX Runtime (fp32):   <= 1e-5 (measured ~7e-7)
* torch.compile (fp32):  <= 1e-5 (measured ~2e-7)

and masks decoded from the fast path's embedding match the fp32 masks with IoU >= 0.99 for
every point and box prompt. The tiny models get weights drawn with a 1/sqrt(fan-in) scale:
with transformers' initialisation the decoder's logits are ~1e-3 and ignore the prompt.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.cli import run_cli
from samadapt.errors import InputError
from samadapt.models.accel import cpu, fast_attention, speed
from samadapt.models.accel.speed import (
    CpuInfo,
    RuntimeOptions,
    apply_runtime,
    resolve,
    threads_for,
)
from samadapt.models.loading import load_model
from samadapt.models.sam import DecoderPrompts, decode, encode
from samadapt.models.tiny import MARKER, build_tiny_model
from samadapt.predict.cache import EmbeddingCache
from samadapt.predict.segmenter import Segmenter

BOUNDS = {"fp32,fused": 1e-5, "bf16": 2e-2, "bf16,fused": 2e-2, "bf16,no-fused": 2e-2, "onnx": 1e-5}
POINTS = np.array([[[64.0, 64.0]], [[180.0, 90.0]], [[128.0, 200.0]], [[30.0, 220.0]]])
BOXES = np.array([[20.0, 20.0, 120.0, 140.0], [100.0, 60.0, 240.0, 200.0], [10.0, 150.0, 100.0, 250.0]])
AVX512_BF16 = CpuInfo("AVX512", frozenset({"avx512f", "avx512_bf16"}), 8)
AVX2 = CpuInfo("AVX2", frozenset({"avx2", "fma"}), 8)


def scale_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Draw every matrix and kernel from N(0, 1/fan_in): activations keep their scale through the layers."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
    return model


def save_model(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)
    (folder / MARKER).write_text(json.dumps({"random_init": True}))
    return folder


@pytest.fixture(scope="module")
def scaled_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scaled")
    return {f: save_model(scale_weights(build_tiny_model(f)), root / f) for f in ("sam", "sam-hq", "sam2")}


@pytest.fixture
def image() -> torch.Tensor:
    """A smooth (1, 3, 256, 256) model input: structure at several scales, like a photograph."""
    gen = torch.Generator().manual_seed(1)
    return torch.nn.functional.interpolate(torch.randn(1, 3, 32, 32, generator=gen), size=256, mode="bilinear") * 1.5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def masks_of(loaded, emb) -> torch.Tensor:
    """(7, h, w) boolean masks: four point prompts then three box prompts."""
    pts = DecoderPrompts(points=POINTS, labels=np.ones((len(POINTS), 1), dtype=np.int64))
    low_p, _ = decode(loaded, emb, pts, multimask=False)
    low_b, _ = decode(loaded, emb, DecoderPrompts(boxes=BOXES), multimask=False)
    return torch.cat([low_p[:, 0], low_b[:, 0]]) > 0


def check_fidelity(path: Path, spec: str, bound: float, image: torch.Tensor) -> None:
    ref_model = load_model(path)
    ref = encode(ref_model, image)[0]
    fast_model = load_model(path)
    apply_runtime(fast_model, spec)
    fast = encode(fast_model, image)[0]
    assert sorted(fast) == sorted(ref)
    for key in ref:
        assert fast[key].dtype == torch.float32
        assert rel_err(fast[key], ref[key]) <= bound, (key, rel_err(fast[key], ref[key]))
    want, got = masks_of(ref_model, ref), masks_of(ref_model, fast)
    fg = want.float().mean(dim=(1, 2))
    assert bool(((fg > 0.02) & (fg < 0.98)).all()), f"trivial reference masks: {fg}"
    assert len({tuple(m.flatten().tolist()[::97]) for m in want}) > 1, "masks do not depend on the prompt"
    iou = (want & got).flatten(1).sum(1) / (want | got).flatten(1).sum(1)
    assert bool((iou >= 0.99).all()), iou


@pytest.mark.parametrize("family", ["sam", "sam-hq", "sam2"])
@pytest.mark.parametrize("spec", ["fp32,fused", "bf16,fused", "bf16,no-fused"])
def test_fast_paths_keep_embeddings_and_masks(scaled_models, image, family: str, spec: str) -> None:
    check_fidelity(scaled_models[family], spec, BOUNDS[spec], image)


FOLDED = fast_attention.folded_attention  # the real ones, for the counting stand-ins below
SCORED = fast_attention.scored_attention
BOTH = (torch.float32, torch.bfloat16)


@pytest.mark.parametrize("kind", ["rows", "folded", "scores"])
@pytest.mark.parametrize("spec", ["fp32,fused", "bf16,fused"])
def test_fused_global_attention_keeps_embeddings(scaled_models, image, monkeypatch, spec: str, kind: str) -> None:
    # Tiny models' layers are small enough for the whole-bias branch; force the global-layer ones.
    monkeypatch.setattr(fast_attention, "WHOLE_BIAS_TOKENS", 8)
    # 3 rows of 16 per chunk in fp32, 6 in bf16
    monkeypatch.setattr(fast_attention, "CHUNK_BYTES", 4 * 2 * 3 * 16 * 256)
    monkeypatch.setattr(fast_attention, "SCORE_ROWS", 3)  # 16 rows: chunks of 3 and a last one of 1
    monkeypatch.setattr(fast_attention, "FOLD_DTYPES", BOTH if kind == "folded" else ())
    monkeypatch.setattr(fast_attention, "SCORES_DTYPES", BOTH if kind == "scores" else ())
    calls = []
    monkeypatch.setattr(fast_attention, "folded_attention", lambda *a: calls.append("folded") or FOLDED(*a))
    monkeypatch.setattr(fast_attention, "scored_attention", lambda *a: calls.append("scores") or SCORED(*a))
    check_fidelity(scaled_models["sam"], spec, BOUNDS[spec], image)
    assert set(calls) == ({kind} if kind != "rows" else set())


def test_global_attention_follows_the_cpu() -> None:
    """bf16 global layers: folded flash attention with AMX, scores by rows without (AVX-512 BF16 only)."""
    amx = fast_attention._amx()
    assert fast_attention.global_attention_kind(torch.bfloat16) == ("folded" if amx else "scores")
    assert fast_attention.global_attention_kind(torch.float32) == "rows"


@pytest.mark.parametrize("kind", ["folded", "scores"])
@pytest.mark.parametrize("grid", [(16, 16), (12, 20)])
def test_global_attention_kinds_match_eager_attention(monkeypatch, grid: tuple[int, int], kind: str) -> None:
    """The bias folded into Q and K, and the scores by query rows (5 rows a chunk: a ragged last one), give
    eager attention's numbers (fp32, large position terms)."""
    from transformers.models.sam.modeling_sam import SamVisionAttention

    monkeypatch.setattr(fast_attention, "WHOLE_BIAS_TOKENS", 8)
    monkeypatch.setattr(fast_attention, "FOLD_DTYPES", (torch.float32,) if kind == "folded" else ())
    monkeypatch.setattr(fast_attention, "SCORES_DTYPES", (torch.float32,) if kind == "scores" else ())
    monkeypatch.setattr(fast_attention, "SCORE_ROWS", 5)
    assert fast_attention.global_attention_kind(torch.float32) == kind
    model = build_tiny_model("sam")
    module = model.vision_encoder.layers[1].attn
    with torch.no_grad():
        module.rel_pos_h.normal_(0, 0.5)
        module.rel_pos_w.normal_(0, 0.5)
    x = torch.randn(2, *grid, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = SamVisionAttention.forward(module, x)[0]
        fast_attention.install_fused_attention(model)
        fast = module(x)[0]
    assert rel_err(fast, eager) <= 1e-5


def _in_both_mode_orders(call) -> list[torch.Tensor]:
    """``call()``'s results under inference_mode then no_grad, and under no_grad then inference_mode,
    each pair in a new thread (so the per-thread buffers are made afresh); a failed call is missing."""
    import threading

    results: list[torch.Tensor] = []

    def run(first, then) -> None:
        for mode in (first, then):
            with mode():
                results.append(call())

    for order in ((torch.inference_mode, torch.no_grad), (torch.no_grad, torch.inference_mode)):
        worker = threading.Thread(target=run, args=order)
        worker.start()
        worker.join()
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["rows", "folded"])
def test_attention_buffers_work_in_and_out_of_inference_mode(dtype: torch.dtype, monkeypatch) -> None:
    """The per-thread buffers of the global-layer attention (the row-chunked bias in fp32, the
    folded Q/K/V in bf16), made under torch.inference_mode, serve a later no_grad call and the
    other way round, with equal results."""
    monkeypatch.setattr(fast_attention, "WHOLE_BIAS_TOKENS", 8)  # the global-layer branches
    monkeypatch.setattr(fast_attention, "SCORES_DTYPES", ())  # bf16: the folded branch, which keeps buffers
    module = build_tiny_model("sam").vision_encoder.layers[1].attn
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 24 * 24, 16, generator=gen).to(dtype) for _ in range(3))
    results = _in_both_mode_orders(lambda: fast_attention.relpos_attention(module, q, k, v, 24, 24))
    assert len(results) == 4, "a call failed"
    assert all(torch.equal(r, results[0]) for r in results[1:])


@pytest.mark.parametrize("family", ["sam", "sam-hq"])
def test_decoder_workspaces_work_in_and_out_of_inference_mode(scaled_models, image, family: str) -> None:
    loaded = load_model(scaled_models[family])
    emb = encode(loaded, image)[0]
    prompts = DecoderPrompts(boxes=BOXES)
    results = _in_both_mode_orders(lambda: decode(loaded, emb, prompts)[0])
    assert len(results) == 4, "a call failed"
    assert all(torch.equal(r, results[0]) for r in results[1:])


def test_fused_attention_matches_eager_attention() -> None:
    from transformers.models.sam.modeling_sam import SamVisionAttention

    model = build_tiny_model("sam")
    module = model.vision_encoder.layers[1].attn  # the global-attention layer
    with torch.no_grad():
        module.rel_pos_h.normal_(0, 0.5)
        module.rel_pos_w.normal_(0, 0.5)
    x = torch.randn(2, 16, 16, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = SamVisionAttention.forward(module, x)[0]
        assert fast_attention.install_fused_attention(model) == 2
        fused = module(x)[0]
    assert rel_err(fused, eager) <= 1e-5


def test_onnx_keeps_embeddings_and_masks(scaled_models, image) -> None:
    pytest.importorskip("onnxruntime")
    check_fidelity(scaled_models["sam"], "onnx", BOUNDS["onnx"], image)


@pytest.mark.slow
def test_compile_keeps_embeddings(tiny_models, image) -> None:
    ref = encode(load_model(tiny_models["sam"]), image)[0]["image"]
    loaded = load_model(tiny_models["sam"])
    apply_runtime(loaded, "fp32,compile")
    assert rel_err(encode(loaded, image)[0]["image"], ref) <= 1e-5


@pytest.mark.slow
def test_sam_vit_base_architecture_bf16_keeps_masks(tmp_path: Path) -> None:
    """The real ViT-B encoder at 1024 px (random weights): bf16 + fused attention against fp32."""
    from transformers import AutoModel, SamConfig

    torch.manual_seed(0)
    path = save_model(scale_weights(AutoModel.from_config(SamConfig()).eval()), tmp_path / "vit-b")
    image = torch.nn.functional.interpolate(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
                                            size=1024, mode="bilinear") * 1.5
    global POINTS, BOXES
    saved = POINTS, BOXES
    POINTS, BOXES = saved[0] * 4, saved[1] * 4
    try:
        check_fidelity(path, "bf16,fused", BOUNDS["bf16"], image)
    finally:
        POINTS, BOXES = saved


def test_onnx_export_is_cached_and_reused(tiny_models, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    from samadapt.models.accel.onnx_encoder import MODEL_FILE, onnx_dir

    loaded = load_model(tiny_models["sam2"])
    apply_runtime(loaded, "onnx")
    folder = onnx_dir(loaded)
    assert (folder / MODEL_FILE).is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left behind

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    again = load_model(tiny_models["sam2"])
    apply_runtime(again, "onnx")
    x = torch.randn(2, 3, 256, 256)
    first = encode(again, x)[1]["image"]
    assert torch.allclose(first, encode(load_model(tiny_models["sam2"]), x)[1]["image"], atol=1e-5)


def test_cache_keys_separate_bf16_from_fp32(tiny_models, tmp_path: Path, textured_image: np.ndarray) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    plain = Segmenter(tiny_models["sam"], cache=cache)
    fused = Segmenter(tiny_models["sam"], cache=cache, runtime="fp32,fused")
    bf16 = Segmenter(tiny_models["sam"], cache=cache, runtime="bf16")
    keys = {name: s._prepared(textured_image)[0] for name, s in (("plain", plain), ("fused", fused), ("bf16", bf16))}
    assert keys["plain"] == keys["fused"]  # same numbers, same entry
    assert keys["bf16"] != keys["plain"]
    assert not plain.embed(textured_image).from_cache
    assert fused.embed(textured_image).from_cache
    assert not bf16.embed(textured_image).from_cache  # never served the fp32 embedding
    assert bf16.loaded.model_id.endswith(":bf16")


def test_runtime_survives_pickling(tiny_models) -> None:
    loaded = load_model(tiny_models["sam"])
    apply_runtime(loaded, "bf16")
    x = torch.randn(1, 3, 256, 256)
    want = encode(loaded, x)[0]["image"]
    copy = pickle.loads(pickle.dumps(loaded))  # as a Dask worker receives it
    assert copy.runtime.call is None
    assert torch.allclose(encode(copy, x)[0]["image"], want)
    assert copy.runtime.precision == "bf16"


def test_parse_runtime_options() -> None:
    opts = RuntimeOptions.parse("bf16, no-fused,threads=3")
    assert (opts.precision, opts.fused_attention, opts.threads, opts.backend) == ("bf16", False, 3, "torch")
    assert RuntimeOptions.parse("auto") == RuntimeOptions()
    with pytest.raises(InputError, match="unknown runtime option 'fp16'"):
        RuntimeOptions.parse("fp16")
    with pytest.raises(InputError, match="positive whole number"):
        RuntimeOptions.parse("threads=0")


def test_auto_choice_follows_the_cpu_and_model() -> None:
    rt = resolve(RuntimeOptions(), "sam", 1024, cpu=AVX512_BF16)
    assert rt.tag == "torch-bf16+fused" and rt.cache_tag == "bf16"
    assert any("native bf16" in r for r in rt.reasons)
    assert resolve(RuntimeOptions(), "sam", 1024, cpu=AVX2).precision == "fp32"
    assert resolve(RuntimeOptions(), "sam", 256, cpu=AVX512_BF16).precision == "fp32"  # tiny test models
    assert resolve(RuntimeOptions(), "sam2", 1024, cpu=AVX512_BF16).tag == "torch-bf16+fused"
    assert resolve(RuntimeOptions.parse("no-fused"), "sam2", 1024, cpu=AVX512_BF16).tag == "torch-bf16"
    assert resolve(RuntimeOptions(precision="fp32"), "sam", 1024, cpu=AVX512_BF16).cache_tag == ""


def test_cpu_class_and_bf16_follow_the_caps_a_user_sets() -> None:
    """ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA hold a CPU below its flags: auto must then not pick bf16,
    which oneDNN would emulate (measured: slower than fp32 on an AVX2-capped Zen 4)."""
    zen4 = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
    sapphire = zen4 | {"amx_bf16", "amx_tile"}
    assert CpuInfo("AVX512", sapphire, 2).cpu_class == "AMX"
    assert CpuInfo("AVX512", zen4, 2).cpu_class == "AVX-512 BF16"
    assert CpuInfo("AVX512", frozenset({"avx2", "avx512f"}), 2).cpu_class == "AVX-512"
    assert CpuInfo("AVX2", frozenset({"avx2", "fma"}), 2).cpu_class == "AVX2"
    capped = [CpuInfo("AVX2", zen4, 2), CpuInfo("AVX512", zen4, 2, "AVX2"), CpuInfo("AVX512", zen4, 2, "AVX512_CORE")]
    for info in capped:
        assert not info.native_bf16
        rt = resolve(RuntimeOptions(), "sam", 1024, cpu=info)
        assert rt.tag == "torch-fp32+fused" and any("emulated" in r for r in rt.reasons)
    assert [c.cpu_class for c in capped] == ["AVX2", "AVX2", "AVX-512"]
    assert CpuInfo("AVX512", sapphire, 2, "AVX512_CORE_BF16").cpu_class == "AVX-512 BF16"  # AMX capped away
    assert CpuInfo("AVX512", zen4, 2, "ALL").native_bf16


def test_cpu_info_reads_the_onednn_cap(monkeypatch) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    speed.cpu_info.cache_clear()
    try:
        assert speed.cpu_info().onednn_isa == "AVX2" and not speed.cpu_info().native_bf16
    finally:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
        speed.cpu_info.cache_clear()


def test_global_attention_reason_names_the_path() -> None:
    zen4 = CpuInfo("AVX512", frozenset({"avx512_bf16"}), 2)
    amx = CpuInfo("AVX512", frozenset({"avx512_bf16", "amx_bf16"}), 2)
    assert any("scores by image rows" in r for r in resolve(RuntimeOptions(), "sam", 1024, cpu=zen4).reasons)
    assert any("folded in (AMX)" in r for r in resolve(RuntimeOptions(), "sam", 1024, cpu=amx).reasons)


def test_threads_for_workers(monkeypatch) -> None:
    monkeypatch.setattr(speed, "cpu_info", lambda: AVX2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [threads_for(1), threads_for(3), threads_for(16)] == [8, 2, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_for(4) == 3
    with pytest.raises(InputError, match="workers"):
        threads_for(0)


def test_physical_cores_ignores_hyperthreads() -> None:
    block = "processor\t: {}\nphysical id\t: 0\ncore id\t\t: {}\n\n"
    text = "".join(block.format(i, i % 2) for i in range(4))  # 4 logical CPUs on 2 cores
    assert 1 <= cpu._physical_cores(text) <= 2


def test_info_shows_the_chosen_runtime(monkeypatch, capsys) -> None:
    monkeypatch.setattr(speed, "cpu_info", lambda: AVX512_BF16)
    code, text = run_cli(["info"], monkeypatch, capsys)
    assert code == 0
    assert "CPU capability" in text and "AVX-512 BF16 class: AVX512 (avx512_bf16), 8 cores" in text
    assert "encoder runtime" in text and "torch-bf16+fused for sam-vit-base" in text
    assert "native bf16" in text
    assert "prompt decoder" in text and "samadapt's batched pass in bf16" in text
    code, text = run_cli(["info", "--precision", "fp32", "-m", "sam2.1-hiera-tiny"], monkeypatch, capsys)
    assert code == 0 and "torch-fp32+fused for sam2.1-hiera-tiny" in text
    assert "batched pass in fp32" in text


@pytest.mark.parametrize("args, message", [
    (["info", "--runtime", "fast"], "unknown runtime option 'fast'"),
    (["info", "--precision", "fp16"], "--precision must be auto, fp32 or bf16"),
])
def test_bad_runtime_option_exits_2(monkeypatch, capsys, args: list[str], message: str) -> None:
    code, text = run_cli(args, monkeypatch, capsys)
    assert code == 2 and message in text


def test_segment_cli_takes_a_runtime(tiny_models, tmp_path: Path, monkeypatch, capsys) -> None:
    from PIL import Image

    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "out.png"
    args = ["segment", str(img), "-o", str(out), "-m", str(tiny_models["sam"]), "--box", "5,5,40,40"]
    code, text = run_cli([*args, "--runtime", "bf16,nope"], monkeypatch, capsys)
    assert code == 2 and "unknown runtime option 'nope'" in text and not out.exists()
    code, text = run_cli([*args, "--precision", "bf16"], monkeypatch, capsys)
    assert code == 0 and out.is_file()


def test_an_adapter_loads_its_base_with_the_runtime_asked(tiny_models, tmp_path: Path) -> None:
    from samadapt.methods import build_method
    from samadapt.train.adapter import load_adapter, save_adapter

    folder = save_adapter(build_method("domain-decoder", load_model(tiny_models["sam"]), width=8), tmp_path / "ad")
    assert load_adapter(folder).method.base.runtime.precision == "fp32"  # auto: a 256 px model stays fp32
    assert load_adapter(folder, runtime="bf16").method.base.runtime.precision == "bf16"
    shared = load_model(tiny_models["sam"])
    assert load_adapter(folder, base=shared, runtime="bf16").method.base is shared
    assert shared.runtime.precision == "bf16"
