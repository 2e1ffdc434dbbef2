"""``--seed`` reproduces ``samadapt train`` and ``samadapt learning-curve`` byte for byte on a CPU,
also when a run is killed (SIGKILL) twice and finished with ``--resume``.

Every output file is compared as bytes, except the time each epoch took (``seconds`` in the
training logs and checkpoints), which no seed can fix. Runs compared share a thread count: CPU
kernels split their sums by thread, so another count gives other last bits.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers.cli import run_cli
from helpers.training import one_torch_thread
from samadapt.sample import make_mars_dataset

# Small settings that still draw from every random source a method has: LoRA dropout and
# augmentation, noisy boxes and sampled points, a random subset of the objects.
SEEDED_RUNS = {
    "domain-decoder": ["width=16"],
    "unet": ["width=4", "depth=2"],
    "lora": ["rank=2", "dropout=0.3", "augment=true"],
    "mask-decoder": ["box_noise=4", "max_objects=1"],
    "mask-decoder-points": ["prompt=points", "n_pos=3", "n_neg=2", "erode=1"],
    "encoder-adapter": ["width=4", "depth=2", "unet_scale=0.25", "max_objects=1"],
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven 128 px Mars-like GeoTIFFs with pits: 3 train, 2 validation, 2 test images."""
    return make_mars_dataset(tmp_path_factory.mktemp("mars") / "data", n_images=7, size=128)


def _options(case: str) -> list[str]:
    return ["--method", case.removesuffix("-points"),
            *(arg for value in SEEDED_RUNS[case] for arg in ("--option", value))]


def _without_seconds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _log(path: Path) -> bytes:
    """A training log's rows without their timings, as bytes."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return json.dumps(_without_seconds(rows)).encode()


def _checkpoint(path: Path) -> bytes:
    """A training checkpoint's content without its timings, every tensor as its raw bytes."""
    def plain(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return [str(value.dtype), list(value.shape), value.contiguous().numpy().tobytes().hex()]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    state = torch.load(path, map_location="cpu", weights_only=True)
    state["history"] = _without_seconds(state["history"])
    return json.dumps(plain(state), sort_keys=True).encode()


def output_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path: as bytes, logs and checkpoints without timings."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = str(path.relative_to(folder))
        out[name] = (_log(path) if path.name == "training_log.jsonl"
                     else _checkpoint(path) if path.suffix == ".pt" else path.read_bytes())
    return out


def _scramble_global_rngs(seed: int) -> None:
    """Whatever the process drew before a run must not matter."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@pytest.mark.parametrize("case", list(SEEDED_RUNS))
def test_seed_reproduces_a_run_byte_for_byte(
    case: str, dataset: Path, tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = []
    for run in ("a", "b"):
        _scramble_global_rngs(1000 + len(runs))
        code, text = run_cli(["train", str(dataset), "--model", str(tiny_models["sam"]), *_options(case),
                              "--epochs", "2", "--batch-size", "2", "--seed", "3", "--out", str(tmp_path / run)],
                             monkeypatch, capsys)
        assert code == 0, text
        runs.append(output_files(tmp_path / run))
    assert {"adapter.safetensors", "config.json", "training_log.jsonl"} <= runs[0].keys()
    assert runs[0] == runs[1]


def _cli(args: list[str], log: Path) -> None:
    """``samadapt ARGS`` with its output in ``log`` (what the killed processes run)."""
    from samadapt.cli import main

    with open(log, "w") as out:
        sys.stdout = sys.stderr = out
        sys.argv = ["samadapt", *args]
        main()


def _kill_at_next_checkpoint(args: list[str], checkpoint: Path, log: Path) -> int:
    """Run ``samadapt ARGS`` in a new process and SIGKILL it as soon as it has written a checkpoint.

    The kill lands wherever the process is by then (the next epoch, the checkpoint's rename, ...):
    a resumed run must end the same wherever that is. The process is forked, so it starts without
    importing torch again; all it leaves behind is on disk, as after any kill. Returns the epoch
    of the checkpoint left.
    """
    def file_id() -> int | None:  # each checkpoint is a new file renamed into place
        try:
            return checkpoint.stat().st_ino
        except FileNotFoundError:
            return None

    before = file_id()
    proc = multiprocessing.get_context("fork").Process(target=_cli, args=(args, log))
    proc.start()
    try:
        deadline = time.monotonic() + 120
        while file_id() in (before, None):
            if proc.exitcode is not None:
                pytest.fail(f"the run ended (exit {proc.exitcode}) before a new checkpoint: {log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no new checkpoint within 120 s: {log.read_text()}")
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.join()
    assert proc.exitcode == -signal.SIGKILL, log.read_text()
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"])


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork (Linux)")
@pytest.mark.parametrize("case", ["lora", "encoder-adapter"])
def test_two_kills_and_resumes_end_with_the_bytes_of_an_uninterrupted_run(
    case: str, dataset: Path, tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["train", str(dataset), "--model", str(tiny_models["sam"]), *_options(case), "--epochs", "4",
            "--batch-size", "2", "--seed", "3", "--keep-checkpoints"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    checkpoint = tmp_path / ".killed.run" / "checkpoints" / "last.pt"
    first = _kill_at_next_checkpoint([*args, "--out", str(killed)], checkpoint, tmp_path / "first.log")
    second = _kill_at_next_checkpoint([*args, "--out", str(killed), "--resume"], checkpoint, tmp_path / "second.log")
    assert first < second and not killed.exists()
    _scramble_global_rngs(7)
    code, text = run_cli([*args, "--out", str(killed), "--resume"], monkeypatch, capsys)
    assert code == 0, text
    _scramble_global_rngs(8)
    code, text = run_cli([*args, "--out", str(whole)], monkeypatch, capsys)
    assert code == 0, text
    assert output_files(killed) == output_files(whole)
    assert output_files(tmp_path / ".killed.run") == output_files(tmp_path / ".whole.run")
    assert [r["epoch"] for r in json.loads(_log(killed / "training_log.jsonl"))] == list(range(4))


def test_learning_curve_is_reproduced_byte_for_byte(
    dataset: Path, tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = []
    for run in ("a", "b"):
        _scramble_global_rngs(1000 + len(runs))
        code, text = run_cli(["learning-curve", str(dataset), "--model", str(tiny_models["sam"]), "--sizes", "1,3",
                              "--seeds", "2", "--epochs", "2", "--option", "width=16", "--keep-checkpoints",
                              "--out", str(tmp_path / run)], monkeypatch, capsys)
        assert code == 0, text
        runs.append(output_files(tmp_path / run))
    assert {"learning_curve.csv", "learning_curve.png", "report.md", "run_splits.json",
            "runs/domain-decoder_n3_s1/checkpoints/last.pt"} <= runs[0].keys()
    assert runs[0] == runs[1]
