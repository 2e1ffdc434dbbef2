"""The training loop, adapters and learning curves, with the domain-decoder on generated shapes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.cli import run_cli
from helpers.training import shapes_samples
from samadapt.errors import CheckpointError, InputError, OutputExistsError
from samadapt.methods import build_method
from samadapt.models.loading import load_model
from samadapt.models.tiny import save_tiny_model
from samadapt.train.adapter import load_adapter, save_adapter
from samadapt.train.learner import label_budget
from samadapt.train.loop import TrainConfig, evaluate_method, lr_lambda, train
from samadapt.train.metrics import evaluate


class _Stop(Exception):
    pass


def _method(tiny_models: dict[str, Path], seed: int = 0):  # noqa: ANN202
    torch.manual_seed(seed)
    return build_method("domain-decoder", load_model(tiny_models["sam"]), width=32)


def test_domain_decoder_learns_and_beats_trivial_baselines(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    train_s, val_s = shapes_samples(16, seed=0), shapes_samples(6, seed=1)
    method = _method(tiny_models)
    result = train(method, train_s, val_s, tmp_path, TrainConfig(epochs=8, lr=3e-3), progress=False)
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < 0.8 * losses[0]
    metrics, _ = evaluate_method(method, val_s)
    targets = [s.target for s in val_s]
    all_bg = evaluate([np.zeros_like(t) for t in targets], targets, 2).miou
    all_fg = evaluate([np.ones_like(t) for t in targets], targets, 2).miou
    assert metrics.miou > max(all_bg, all_fg) + 0.2, (metrics.miou, all_bg, all_fg)
    log = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(8)) and "val_miou" in log[0]
    assert (tmp_path / "training.png").is_file()
    assert result.best_epoch == int(np.argmax([r["val_miou"] for r in log]))


def test_resume_after_a_kill_ends_like_an_uninterrupted_run(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    train_s, val_s = shapes_samples(8, seed=0), shapes_samples(3, seed=1)
    cfg = TrainConfig(epochs=4, lr=3e-3, batch_size=3, seed=5)
    full = _method(tiny_models)
    train(full, train_s, val_s, tmp_path / "full", cfg, progress=False)

    def kill_after_epoch_2(row: dict) -> None:
        if row["epoch"] == 1:
            raise _Stop

    killed = _method(tiny_models)
    with pytest.raises(_Stop):
        train(killed, train_s, val_s, tmp_path / "run", cfg, progress=False, on_epoch=kill_after_epoch_2)
    with open(tmp_path / "run" / "training_log.jsonl", "a") as f:  # killed after a log line, before its checkpoint
        f.write(json.dumps({"epoch": 2, "train_loss": 0.5}) + "\n")
    half_written = tmp_path / "run" / "checkpoints" / ".last.4242.tmp.pt"  # or while writing a checkpoint
    half_written.write_bytes(b"PK")
    resumed = _method(tiny_models, seed=99)  # a fresh process: different initial weights, restored from disk
    result = train(resumed, train_s, val_s, tmp_path / "run", cfg, resume=True, progress=False)
    assert [r["epoch"] for r in result.history] == [0, 1, 2, 3]
    log = [json.loads(line) for line in (tmp_path / "run" / "training_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2, 3]
    assert not half_written.exists()
    a, b = full.trainable_state_dict(), resumed.trainable_state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(InputError, match="nothing to resume"):
        train(_method(tiny_models), train_s, val_s, tmp_path / "empty", cfg, resume=True, progress=False)


def test_adapter_round_trip_and_base_check(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    method = _method(tiny_models)
    train(method, shapes_samples(4), [], tmp_path / "run", TrainConfig(epochs=1), progress=False)
    path = save_adapter(method, tmp_path / "ad", classes={0: "background", 1: "disc"})
    assert sorted(p.name for p in path.iterdir()) == ["adapter.safetensors", "config.json"]
    adapter = load_adapter(path)
    sample = shapes_samples(1, seed=7)[0]
    pred = adapter.predict(sample.pixels)
    method.eval()
    with torch.no_grad():
        inputs = method.make_inputs(sample, train=False, rng=np.random.default_rng(0))
        probs = method.probabilities(method({k: v[None] for k, v in inputs.items()}))[0]
        direct = method.to_original(probs, method.geometry_of(128, 128)).numpy()
    np.testing.assert_array_equal(pred.probabilities, direct)
    other = save_tiny_model(tmp_path / "other", "sam", seed=3)
    with pytest.raises(CheckpointError, match="trained on .* not on"):
        load_adapter(path, base=str(other))
    with pytest.raises(OutputExistsError, match="exists; pass --overwrite"):
        save_adapter(method, path)


def test_warmup_cosine_schedule() -> None:
    f = lr_lambda(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5, abs=0.02) and f(99) < 0.01


def test_label_budgets_are_nested_and_seeded() -> None:
    stems = [f"s{i}" for i in range(20)]
    five, ten = label_budget(stems, 5, 1), label_budget(stems, 10, 1)
    assert set(five) <= set(ten) and len(set(ten)) == 10
    assert label_budget(stems, 5, 1) == five and label_budget(stems, 5, 2) != five
    with pytest.raises(InputError, match="only 20"):
        label_budget(stems, 21, 0)


def _dataset(root: Path, n: int = 8) -> Path:
    from PIL import Image

    from samadapt.data.splits import write_splits
    from samadapt.mapping.outputs import write_mask_png

    (root / "images").mkdir(parents=True)
    samples = shapes_samples(n, seed=3)
    for s in samples:
        Image.fromarray(s.pixels).save(root / "images" / f"{s.stem}.png")
        write_mask_png(root / "masks" / f"{s.stem}.png", s.target, overwrite=True)
    stems = [s.stem for s in samples]
    write_splits(root, {"train": stems[:4], "val": stems[4:6], "test": stems[6:]})
    return root


def test_learning_curve_and_cli(tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    data = _dataset(tmp_path / "data")

    def cli(*args: str) -> tuple[int, str]:
        return run_cli(list(args), monkeypatch, capsys)

    code, text = cli("learning-curve", str(data), "--model", str(tiny_models["sam"]), "--sizes", "2,4", "--seeds", "2",
                     "--epochs", "2", "--option", "width=16", "--out", str(tmp_path / "lc"))
    assert code == 0, text
    rows = list(csv.DictReader(open(tmp_path / "lc" / "learning_curve.csv")))
    assert [(r["labels"], r["seed"]) for r in rows] == [("2", "0"), ("2", "1"), ("4", "0"), ("4", "1")]
    assert all(0.0 <= float(r["miou"]) <= 1.0 for r in rows)
    assert (tmp_path / "lc" / "learning_curve.png").is_file()
    code, text = cli("train", str(data), "--model", str(tiny_models["sam"]), "--epochs", "2", "--labels", "3",
                     "--option", "width=16", "--out", str(tmp_path / "ad"))
    assert code == 0, text
    assert json.loads((tmp_path / "ad" / "config.json").read_text())["train"]["labels"] == 3
    code, text = cli("evaluate", str(tmp_path / "ad"), str(data), "--json")
    assert code == 0 and json.loads(text[text.index("{"):])["images"] == 2
    code, text = cli("train", str(data), "--model", str(tiny_models["sam"]), "--out", str(tmp_path / "ad"))
    assert code == 2 and "pass --overwrite" in text
    code, text = cli("train", str(data), "--model", str(tiny_models["sam"]), "--method", "encoder-adapter",
                     "--epochs", "2", "--labels", "2", "--out", str(tmp_path / "ea"))
    assert code == 0, text
    code, text = cli("evaluate", str(tmp_path / "ea"), str(data))
    assert code == 0 and "U-Net alone" in text and "SAM alone" in text and "adapted SAM" in text
    code, text = cli("train", str(data), "--model", str(tiny_models["sam"]), "--rank", "4",
                     "--out", str(tmp_path / "y"))
    assert code == 2 and "--rank applies to the lora method" in text
    code, text = cli("train", str(data), "--model", str(tiny_models["sam"]), "--method", "magic", "--out",
                     str(tmp_path / "x"))
    assert code == 2 and "unknown method 'magic'" in text


class _Payload:
    """Unpickling this runs code (it creates a file): what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_resume_refuses_a_pickle_that_would_run_code(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import pickle

    from samadapt.train.loop import CHECKPOINT

    train_s, val_s = shapes_samples(4, seed=0), shapes_samples(2, seed=1)
    cfg = TrainConfig(epochs=1, batch_size=2)
    train(_method(tiny_models), train_s, val_s, tmp_path / "run", cfg, progress=False)
    ckpt = next((tmp_path / "run").rglob(CHECKPOINT))
    marker = tmp_path / "code-ran"
    with open(ckpt, "wb") as f:
        pickle.dump({"method_config": _Payload(marker)}, f)
    with pytest.raises(InputError, match="no code is run"):
        train(_method(tiny_models), train_s, val_s, tmp_path / "run", cfg, resume=True, progress=False)
    assert not marker.exists()


def test_no_code_loads_pickles_from_a_users_folder() -> None:
    """Every torch.load in the library reads weights only; pickle.load appears nowhere."""
    import re

    src = Path(__file__).resolve().parents[1] / "src" / "samadapt"
    for path in src.rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert not re.search(r"\bpickle\.loads?\(", text), path


def test_train_never_replaces_a_folder_holding_the_users_files(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _dataset(tmp_path / "data", n=6)
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.txt").write_text("three years of work")
    args = ["train", str(data), "--model", str(tiny_models["sam"]), "--epochs", "1", "--option", "width=16",
            "--out", str(out)]
    for extra in ([], ["--overwrite"]):
        code, text = run_cli(args + extra, monkeypatch, capsys)
        assert code == 2 and "thesis.txt" in text and "--overwrite replaces only a previous adapter" in text
        assert (out / "thesis.txt").read_text() == "three years of work"
    (out / "thesis.txt").unlink()
    code, text = run_cli(args, monkeypatch, capsys)
    assert code == 0, text
    code, text = run_cli(args, monkeypatch, capsys)
    assert code == 2 and "pass --overwrite" in text
    code, text = run_cli(args + ["--overwrite"], monkeypatch, capsys)
    assert code == 0, text
    (out / "notes.md").write_text("mine")  # an adapter folder the user has added to is not replaced either
    code, text = run_cli(args + ["--overwrite"], monkeypatch, capsys)
    assert code == 2 and (out / "notes.md").read_text() == "mine"
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # created with the user's umask, not private


def test_finished_runs_leave_no_checkpoints_unless_kept(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _dataset(tmp_path / "data", n=8)
    base = ["--model", str(tiny_models["sam"]), "--epochs", "1", "--option", "width=16"]
    code, text = run_cli(["train", str(data), *base, "--out", str(tmp_path / "a")], monkeypatch, capsys)
    assert code == 0, text
    assert not (tmp_path / ".a.run").exists() and (tmp_path / "a" / "training_log.jsonl").is_file()
    code, text = run_cli(["train", str(data), *base, "--keep-checkpoints", "--out", str(tmp_path / "b")],
                         monkeypatch, capsys)
    assert code == 0, text
    assert list((tmp_path / ".b.run").rglob("last.pt"))
    code, text = run_cli(["learning-curve", str(data), *base, "--sizes", "2", "--seeds", "1", "--out",
                          str(tmp_path / "lc")], monkeypatch, capsys)
    assert code == 0, text
    assert not list((tmp_path / "lc").rglob("*.pt")) and list((tmp_path / "lc" / "runs").rglob("training_log.jsonl"))


def test_an_adapter_finds_its_base_model_from_another_working_folder(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    data = _dataset(tmp_path / "data", n=8)
    work = tmp_path / "work"
    shutil.copytree(tiny_models["sam"], work / "tiny")
    monkeypatch.chdir(work)
    code, text = run_cli(["train", str(data), "--model", "tiny", "--epochs", "1", "--option", "width=16",
                          "--out", str(tmp_path / "ad")], monkeypatch, capsys)
    assert code == 0, text
    monkeypatch.chdir(tmp_path)
    code, text = run_cli(["evaluate", str(tmp_path / "ad"), str(data)], monkeypatch, capsys)
    assert code == 0, text


def test_fp16_on_a_cpu_is_refused_with_what_to_use_instead(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _dataset(tmp_path / "data", n=6)
    code, text = run_cli(["train", str(data), "--model", str(tiny_models["sam"]), "--epochs", "1", "--option",
                          "width=16", "--mixed-precision", "fp16", "--device", "cpu", "--out", str(tmp_path / "ad")],
                         monkeypatch, capsys)
    assert code == 2, text
    assert ("--mixed-precision fp16 needs a CUDA device and this run is on the CPU; use --mixed-precision bf16 "
            "(which a CPU runs) or no") in text
    assert "Traceback" not in text
    assert not (tmp_path / "ad").exists() and not (tmp_path / ".ad.run").exists()
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        TrainConfig(mixed_precision="fp16", device="cpu")
    TrainConfig(mixed_precision="bf16", device="cpu")


def test_a_tile_of_no_pixels_is_refused() -> None:
    from samadapt.mapping.tiled import MapOptions

    with pytest.raises(InputError, match="--tile must be"):
        MapOptions(tile=0)
