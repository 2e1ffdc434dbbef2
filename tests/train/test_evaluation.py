"""Honest protocols: the split an adapter trained on travels with it, evaluation never scores its
training images unasked, pseudo-labels can be scored on ground truth, spreads are sample spreads."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import run_cli
from helpers.training import shapes_samples
from samadapt.train.curves import summarise


def _dataset(root: Path, n: int = 10, splits: dict[str, list[str]] | None = None) -> Path:
    from PIL import Image

    from samadapt.data.splits import write_splits
    from samadapt.mapping.outputs import write_mask_png

    (root / "images").mkdir(parents=True)
    for s in shapes_samples(n, seed=5):
        Image.fromarray(s.pixels).save(root / "images" / f"{s.stem}.png")
        write_mask_png(root / "masks" / f"{s.stem}.png", s.target, overwrite=True)
    if splits is not None:
        write_splits(root, splits)
    return root


def _json(text: str) -> dict:
    """The one JSON document in the output: it must parse from its first brace to the end."""
    return json.loads(text[text.index("{"):])


def test_seeded_split_travels_with_the_adapter_and_evaluate_scores_it(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from samadapt.data.dataset import SegDataset
    from samadapt.train.learner import splits_of

    data = _dataset(tmp_path / "data")  # no splits.json: the split depends on --seed
    ds = SegDataset.open(data)
    # a seed whose training images include some of seed 0's test split, which evaluate used to score
    seed = next(k for k in range(1, 50) if set(splits_of(ds, k)["train"]) & set(splits_of(ds, 0)["test"]))
    code, text = run_cli(["train", str(data), "--model", str(tiny_models["sam"]), "--epochs", "1", "--seed", str(seed),
                          "--option", "width=16", "--out", str(tmp_path / "ad")], monkeypatch, capsys)
    assert code == 0, text
    recorded = json.loads((tmp_path / "ad" / "config.json").read_text())["data"]
    assert set(recorded["train"]) == set(splits_of(ds, seed)["train"])
    assert not set(recorded["train"]) & set(recorded["test"])
    code, text = run_cli(["evaluate", str(tmp_path / "ad"), str(data), "--json"], monkeypatch, capsys)
    assert code == 0, text
    doc = _json(text)
    assert doc["image_ids"] == recorded["test"] and doc["oracle"] is False
    assert not set(doc["image_ids"]) & set(recorded["train"])


def test_training_images_are_refused_unless_asked(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _dataset(tmp_path / "data")
    code, text = run_cli(["train", str(data), "--model", str(tiny_models["sam"]), "--epochs", "1",
                          "--option", "width=16", "--out", str(tmp_path / "ad")], monkeypatch, capsys)
    assert code == 0, text
    code, text = run_cli(["evaluate", str(tmp_path / "ad"), str(data), "--split", "all"], monkeypatch, capsys)
    assert code == 2 and "trained this adapter" in text and "--allow-train-images" in text
    code, text = run_cli(["evaluate", str(tmp_path / "ad"), str(data), "--split", "all", "--allow-train-images",
                          "--json"], monkeypatch, capsys)
    assert code == 0, text
    doc = _json(text)
    trained = json.loads((tmp_path / "ad" / "config.json").read_text())["data"]["train"]
    assert sorted(doc["train_images_scored"]) == sorted(trained) and doc["images"] == 10


def test_pseudo_labels_train_and_ground_truth_scores(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Mars pits paper's protocol: annotate (SAM pseudo-labels), train on them, score on the truth."""
    stems = [f"s{i:03d}" for i in range(10)]
    truth = _dataset(tmp_path / "truth", splits={"train": stems[:6], "val": stems[6:8], "test": stems[8:]})
    model = str(tiny_models["sam"])
    code, text = run_cli(["annotate", str(truth), "--mode", "box", "--split", "train", "--model", model,
                          "--out", str(tmp_path / "pseudo")], monkeypatch, capsys)
    assert code == 0, text
    lc = tmp_path / "lc"
    code, text = run_cli(["learning-curve", str(tmp_path / "pseudo"), "--model", model, "--sizes", "2,4",
                          "--seeds", "2", "--epochs", "1", "--option", "width=16", "--eval-dataset", str(truth),
                          "--out", str(lc)],
                         monkeypatch, capsys)
    assert code == 0, text
    rows = list(csv.DictReader(open(lc / "learning_curve.csv")))
    assert len(rows) == 4 and all(0.0 <= float(r["miou"]) <= 1.0 for r in rows)
    report = (lc / "report.md").read_text()
    assert str(truth.resolve()) in report and "sha256" in report and "ddof = 1" in report
    runs = json.loads((lc / "run_splits.json").read_text())
    assert all(r["test"] == stems[8:] for r in runs)  # the truth's test split, never a pseudo-labelled image
    # without --eval-dataset the pseudo-label dataset has no test split: said in one sentence
    code, text = run_cli(["learning-curve", str(tmp_path / "pseudo"), "--model", model, "--sizes", "2", "--seeds", "1",
                          "--epochs", "1", "--option", "width=16", "--out", str(tmp_path / "lc2")], monkeypatch, capsys)
    assert code == 2 and "--eval-dataset" in text


def test_eval_dataset_leaves_out_images_used_for_training(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from samadapt.train.learner import Learner

    truth = _dataset(tmp_path / "truth")  # no splits.json: all of it would be scored
    learner = Learner(truth, method="domain-decoder", model=str(tiny_models["sam"]), eval_data=truth, width=16)
    assert learner.test_stems
    assert not set(learner.test_stems) & (set(learner.train_stems) | set(learner.val_stems))


def test_select_last_keeps_the_last_epoch(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from samadapt.train.learner import Learner

    data = _dataset(tmp_path / "data")
    learner = Learner(data, method="domain-decoder", model=str(tiny_models["sam"]), width=16)
    result = learner.fit(3, progress=False, out_dir=tmp_path / "run", select="last")
    assert result.best_epoch == 2
    from samadapt.errors import InputError

    with pytest.raises(InputError, match="patience"):
        learner.fit(2, progress=False, out_dir=tmp_path / "run2", select="last", patience=1)


def test_spread_is_the_sample_standard_deviation_and_missing_seeds_are_named() -> None:
    rows = [{"method": "m", "labels": 5, "seed": s, "miou": v} for s, v in enumerate([0.5, 0.7, float("nan"), 0.6])]
    (point,) = summarise(rows, "miou")["m"]
    assert point.n == 3 and point.missing == (2,)
    assert point.mean == pytest.approx(0.6)
    assert point.sd == pytest.approx(statistics.stdev([0.5, 0.7, 0.6]))  # ddof=1, not the population's 0.0816
    assert point.sd != pytest.approx(float(np.std([0.5, 0.7, 0.6])))
    (alone,) = summarise(rows[:1], "miou")["m"]
    assert alone.n == 1 and np.isnan(alone.sd)  # one seed has no spread


def _two_class_dataset(root: Path, n: int = 8) -> Path:
    from PIL import Image

    from samadapt.mapping.outputs import write_mask_png

    (root / "images").mkdir(parents=True)
    for s in shapes_samples(n, seed=7, classes=2):
        Image.fromarray(s.pixels).save(root / "images" / f"{s.stem}.png")
        write_mask_png(root / "masks" / f"{s.stem}.png", s.target, overwrite=True)
    (root / "classes.json").write_text(json.dumps({"0": "background", "1": "disc", "2": "square"}))
    return root


def test_help_options_lists_a_methods_settings_and_bad_options_stop_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run_cli(["train", "--method", "mask-decoder", "--help-options"], monkeypatch, capsys)
    assert code == 0 and "erode" in text and "box_noise" in text and "perturbation" in text
    data = _dataset(tmp_path / "data", n=4)
    # the model name does not exist: refusing the option must come first, without loading anything
    for option, message in (("foo=1", "has no option 'foo'"), ("width=abc", "width")):
        code, text = run_cli(["train", str(data), "--model", "no-such-model", "--option", option,
                              "--out", str(tmp_path / "o")], monkeypatch, capsys)
        assert code == 2 and message in text and "no-such-model" not in text
    assert not (tmp_path / "o").exists()
    code, text = run_cli(["train", "--method", "unet"], monkeypatch, capsys)
    assert code == 2 and "--out" in text


def test_one_class_against_the_rest_and_one_adapter_per_class(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _two_class_dataset(tmp_path / "data")
    model = str(tiny_models["sam"])
    code, text = run_cli(["train", str(data), "--model", model, "--epochs", "1", "--class", "square",
                          "--option", "width=16", "--out", str(tmp_path / "sq")], monkeypatch, capsys)
    assert code == 0, text
    config = json.loads((tmp_path / "sq" / "config.json").read_text())
    assert config["classes"] == {"0": "background", "1": "square"} and config["data"]["class_id"] == 2
    assert config["num_classes"] == 2
    code, text = run_cli(["evaluate", str(tmp_path / "sq"), str(data), "--json"], monkeypatch, capsys)
    assert code == 0, text
    doc = _json(text)
    assert "iou_1" in doc and "iou_2" not in doc  # scored as square against the rest
    code, text = run_cli(["train", str(data), "--model", model, "--class", "triangle", "--out", str(tmp_path / "t")],
                         monkeypatch, capsys)
    assert code == 2 and "1 (disc), 2 (square)" in text


def test_unet_says_it_does_not_use_sam_weights(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _dataset(tmp_path / "data", n=6)
    code, text = run_cli(["train", str(data), "--model", str(tiny_models["sam"]), "--method", "unet", "--epochs", "1",
                          "--option", "width=4", "--option", "depth=2", "--out", str(tmp_path / "u")],
                         monkeypatch, capsys)
    assert code == 0, text
    assert "random-initialised" not in text
    assert "does not use SAM's weights" in text and "256 px" in text and "128 x 128 px" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "bogus"], "unknown split 'bogus'"),
        (["--oracle-prompts"], "takes no prompts"),
    ],
)
def test_evaluate_bad_input_is_one_sentence_and_exit_2(
    args: list[str], message: str, tiny_models: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    data = _dataset(tmp_path / "data", n=6)
    code, text = run_cli(["train", str(data), "--model", str(tiny_models["sam"]), "--epochs", "1",
                          "--option", "width=16", "--out", str(tmp_path / "ad")], monkeypatch, capsys)
    assert code == 0, text
    code, text = run_cli(["evaluate", str(tmp_path / "ad"), str(data), *args], monkeypatch, capsys)
    assert code == 2 and message in text and "Traceback" not in text


def test_train_select_must_be_best_or_last(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _dataset(tmp_path / "data", n=6)
    code, text = run_cli(["train", str(data), "--model", str(tiny_models["sam"]), "--select", "worst",
                          "--option", "width=16", "--out", str(tmp_path / "ad")], monkeypatch, capsys)
    assert code == 2 and "select must be best or last" in text
    assert not (tmp_path / "ad").exists()


def test_mask_decoder_is_scored_without_truth_unless_oracle_prompts_are_asked(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _dataset(tmp_path / "data", n=6)
    code, text = run_cli(["train", str(data), "--model", str(tiny_models["sam"]), "--method", "mask-decoder",
                          "--epochs", "1", "--option", "eval_grid=4", "--out", str(tmp_path / "md")],
                         monkeypatch, capsys)
    assert code == 0, text
    code, text = run_cli(["evaluate", str(tmp_path / "md"), str(data), "--json"], monkeypatch, capsys)
    assert code == 0, text
    honest = _json(text)
    code, text = run_cli(["evaluate", str(tmp_path / "md"), str(data), "--json", "--oracle-prompts"],
                         monkeypatch, capsys)
    assert code == 0, text
    oracle = _json(text)
    assert honest["oracle"] is False and oracle["oracle"] is True
    assert honest["image_ids"] == oracle["image_ids"]
    code, text = run_cli(["evaluate", str(tmp_path / "md"), str(data), "--oracle-prompts"], monkeypatch, capsys)
    assert code == 0 and "oracle prompts from the scored masks" in text


def test_mask_decoder_on_multi_class_data_trains_one_adapter_per_class(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _two_class_dataset(tmp_path / "data", n=6)
    code, text = run_cli(["train", str(data), "--model", str(tiny_models["sam"]), "--method", "mask-decoder",
                          "--epochs", "1", "--option", "eval_grid=2", "--out", str(tmp_path / "md")],
                         monkeypatch, capsys)
    assert code == 0, text
    for class_id, name in ((1, "disc"), (2, "square")):
        config = json.loads((tmp_path / "md" / name / "config.json").read_text())
        assert config["data"]["class_id"] == class_id and config["classes"]["1"] == name
