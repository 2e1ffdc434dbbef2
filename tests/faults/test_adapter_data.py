"""Bad inputs met by adapters, annotate and the dataset commands: one sentence, exit code 2, no
traceback, and nothing of the user's deleted (issue 15)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from PIL import Image
from safetensors.torch import save_file
from shapely.geometry import box

from helpers.cli import run_cli
from samadapt.data import check_dataset, write_classes, write_sample
from samadapt.errors import CheckpointError, ModelNotFoundError
from samadapt.imagery.read import from_array
from samadapt.methods import build_method
from samadapt.models.loading import load_model
from samadapt.train.adapter import load_adapter, save_adapter

run = run_cli


def _fails(code: int, text: str, *sentences: str) -> None:
    """Exit code 2, each sentence in the output, and no traceback."""
    assert code == 2, text
    for sentence in sentences:
        assert sentence in text, text
    assert "Traceback" not in text


# --- adapters ---------------------------------------------------------------------------------------


@pytest.fixture
def adapter(tmp_path: Path, tiny_models: dict[str, Path]) -> Path:
    """A domain-decoder adapter (width 16) on the tiny SAM."""
    return save_adapter(build_method("domain-decoder", load_model(tiny_models["sam"]), width=16), tmp_path / "ad")


def _edit_config(folder: Path, edit: Callable[[dict], object]) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# each damage, and the start of the sentence that names it ({a} is the adapter folder)
DAMAGE: dict[str, tuple[Callable[[Path], object], str]] = {
    "truncated config.json": (lambda a: _cut(a / "config.json"),
                              "{a}/config.json is not valid JSON (line"),
    "truncated weights": (lambda a: _cut(a / "adapter.safetensors"),
                          "{a}/adapter.safetensors is not a complete safetensors file"),
    "shapes unlike the config": (lambda a: _edit_config(a, lambda c: c["options"].update(width=32)),
                                 "{a}/adapter.safetensors does not match the config.json beside it: "),
    "no weights file": (lambda a: (a / "adapter.safetensors").unlink(),
                        "adapter folder {a} has config.json but no adapter.safetensors, so it is incomplete"),
    "config is a list": (lambda a: (a / "config.json").write_text("[1, 2]"),
                         "{a}/config.json holds a JSON list, not the object of settings an adapter has"),
    "config without base_model": (lambda a: _edit_config(a, lambda c: c.pop("base_model")),
                                  "{a}/config.json lacks or garbles base_model"),
    "weights of nothing": (lambda a: save_file({}, str(a / "adapter.safetensors")),
                           "{a}/adapter.safetensors lacks 26 of the weights the domain-decoder method"),
}
FIX = "copy the whole folder again from where it was trained, or train it again"


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Two 128 x 128 GeoTIFF samples, each with a class-1 square and a strip of 255 (ignore)."""
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for i in range(2):
        pixels = rng.integers(40, 90, (128, 128, 3), dtype=np.uint8)
        mask = np.zeros((128, 128), np.uint8)
        mask[30 + 10 * i : 80, 40:90] = 1
        pixels[mask == 1] = 220
        mask[:, :4] = 255
        image = from_array(pixels, crs="EPSG:32616", transform=rasterio.transform.from_origin(7e5, 3.7e6, 1, 1))
        write_sample(root, f"t{i}", image, mask)
    write_classes(root, {0: "background", 1: "pit"})
    return root


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("command", ["evaluate", "predict", "predict --rough"])
def test_a_damaged_adapter_is_one_sentence(
    damage: str, command: str, adapter: Path, dataset: Path, utm_raster: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    spoil, sentence = DAMAGE[damage]
    spoil(adapter)
    if command == "evaluate":
        args = ["evaluate", str(adapter), str(dataset)]
    else:
        args = ["predict", str(adapter), str(utm_raster), "--out", str(tmp_path / "maps")]
        args += ["--rough", "1,2"] if command.endswith("--rough") else []
    code, text = run(args, monkeypatch, capsys)
    _fails(code, text, sentence.format(a=adapter), FIX)
    assert not (tmp_path / "maps").exists()


def test_damaged_adapters_raise_checkpoint_errors(adapter: Path) -> None:
    """The library raises what the CLI prints: CheckpointError for damage, ModelNotFoundError for absence."""
    for damage in ("truncated config.json", "truncated weights", "shapes unlike the config"):
        spoilt = adapter.with_name(damage.replace(" ", "-"))
        spoilt.mkdir()
        for f in adapter.iterdir():
            (spoilt / f.name).write_bytes(f.read_bytes())
        DAMAGE[damage][0](spoilt)
        with pytest.raises(CheckpointError, match="damaged|do not match|does not match"):
            load_adapter(spoilt)
    with pytest.raises(ModelNotFoundError, match=r"adapter folder \S+nowhere does not exist"):
        load_adapter(adapter.with_name("nowhere"))
    with pytest.raises(ModelNotFoundError, match="is a file, not an adapter folder"):
        load_adapter(adapter / "config.json")
    load_adapter(adapter)  # the undamaged original still loads


# --- annotate: masks data check rejects ----------------------------------------------------------------


def test_annotate_refuses_class_ids_classes_json_does_not_name(
    dataset: Path, tiny_models: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    mask = dataset / "masks" / "t1.tif"
    with rasterio.open(mask, "r+") as ds:
        labels = ds.read(1)
        labels[100:110, 100:110] = 7  # classes.json names 0 and 1
        ds.write(labels, 1)
    sentence = f"mask {mask} holds class id(s) 7, unknown to classes.json; name them in classes.json or fix the mask"
    for extra in ([], ["--compare"]):
        code, text = run(["annotate", str(dataset), "--model", str(tiny_models["sam"]), "--out", str(tmp_path / "out"),
                          *extra], monkeypatch, capsys)
        _fails(code, text, sentence)
        assert not (tmp_path / "out").exists()
    # the same mask, the same finding in `samadapt data check`
    assert [p.message for p in check_dataset(dataset).errors] == [sentence.replace(str(mask), mask.name)]


def test_annotate_refuses_a_mask_of_another_size_than_its_image(
    tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "ds"
    write_sample(root, "scene", from_array(np.full((256, 256, 3), 90, np.uint8)), None, image_format="png")
    mask = root / "masks" / "scene.png"
    mask.parent.mkdir()
    small = np.zeros((100, 100), np.uint8)
    small[20:40, 20:40] = 1
    Image.fromarray(small).save(mask)
    code, text = run(["annotate", str(root), "--model", str(tiny_models["sam"]), "--out", str(tmp_path / "out")],
                     monkeypatch, capsys)
    _fails(code, text, f"mask {mask} is 100 x 100 (rows x cols) but its image is 256 x 256; masks must cover their "
                       "image pixel for pixel")
    assert [p.kind for p in check_dataset(root).errors] == ["size-mismatch"]


# --- output folders: only samadapt's own are replaced ------------------------------------------------------


def _thesis(folder: Path) -> Path:
    folder.mkdir()
    (folder / "thesis.txt").write_text("x\n")
    return folder / "thesis.txt"


@pytest.mark.parametrize("compare", [False, True], ids=["annotate", "annotate --compare"])
def test_annotate_never_replaces_a_users_folder(
    compare: bool, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    thesis = _thesis(tmp_path / "out")
    kind = "prompt-mode comparison" if compare else "pseudo-labelled dataset"
    for overwrite in ([], ["--overwrite"]):
        # no model exists under this name: the folder is refused before any model is looked for
        args = ["annotate", str(dataset), "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "out")]
        code, text = run(args + (["--compare"] if compare else []) + overwrite, monkeypatch, capsys)
        _fails(code, text, f"{tmp_path / 'out'} holds files samadapt did not write as a {kind} (thesis.txt)",
               f"--overwrite replaces only a previous {kind}")
        assert thesis.read_text() == "x\n"


def test_annotate_overwrite_replaces_its_own_output_only(
    dataset: Path, tiny_models: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    args = ["annotate", str(dataset), "--model", str(tiny_models["sam"]), "--out", str(out)]
    code, text = run(args, monkeypatch, capsys)  # masks with ignore (255) pixels are accepted
    assert code == 0, text
    (out / "masks" / "t0.tif").unlink()  # what samadapt wrote may go missing: still its own
    _fails(*run(args, monkeypatch, capsys), f"{out} exists; pass --overwrite to replace the pseudo-labelled dataset")
    code, text = run(args + ["--overwrite"], monkeypatch, capsys)
    assert code == 0, text
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["t0.tif", "t1.tif"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    (out / "masks" / "t1.tif").write_bytes(b"corrected by hand")
    (out / "notes.txt").write_text("mine")
    _fails(*run(args + ["--overwrite"], monkeypatch, capsys),
           f"{out} holds a pseudo-labelled dataset samadapt wrote, but files were added to it or changed since "
           "(masks/t1.tif, notes.txt)")
    assert (out / "masks" / "t1.tif").read_bytes() == b"corrected by hand" and (out / "notes.txt").is_file()


def test_data_build_never_replaces_a_users_folder(
    utm_raster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    with rasterio.open(utm_raster) as ds:
        t = ds.transform
    vectors = tmp_path / "pits.gpkg"
    gpd.GeoDataFrame(geometry=[box(*(t @ (60, 200)), *(t @ (180, 100)))], crs="EPSG:32616").to_file(vectors)
    args = ["data", "build", str(utm_raster), str(vectors), "--tile-size", "256", "--out"]
    thesis = _thesis(tmp_path / "mine")
    for overwrite in ([], ["--overwrite"]):
        _fails(*run(args + [str(tmp_path / "mine"), *overwrite], monkeypatch, capsys),
               f"{tmp_path / 'mine'} holds files samadapt did not write as a dataset (thesis.txt)",
               "--overwrite replaces only a previous dataset")
        assert thesis.read_text() == "x\n"
    out = tmp_path / "built"
    code, text = run(args + [str(out)], monkeypatch, capsys)
    assert code == 0, text
    _fails(*run(args + [str(out)], monkeypatch, capsys), f"{out} exists; pass --overwrite to replace the dataset")
    (out / "classes.json").write_text('{"0": "background", "1": "stale"}')
    _fails(*run(args + [str(out), "--overwrite"], monkeypatch, capsys),
           "but files were added to it or changed since (classes.json)")
    (out / "classes.json").unlink()
    code, text = run(args + [str(out), "--overwrite"], monkeypatch, capsys)
    assert code == 0, text
    assert json.loads((out / "classes.json").read_text()) == {"0": "background", "1": "object"}


# --- dataset folders that are missing or files ---------------------------------------------------------------


@pytest.mark.parametrize("what", ["missing", "file"])
@pytest.mark.parametrize("command", ["data check", "annotate", "train"])
def test_a_dataset_path_that_is_no_folder_is_named_as_such(
    what: str, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "pits"
    if what == "file":
        path.write_text("not a folder")
    args = {"data check": ["data", "check", str(path)],
            "annotate": ["annotate", str(path), "--out", str(tmp_path / "out")],
            "train": ["train", str(path), "--out", str(tmp_path / "ad")]}[command]
    code, text = run(args, monkeypatch, capsys)
    expected = (f"dataset folder {path} does not exist" if what == "missing"
                else f"{path} is a file, not a dataset folder")
    _fails(code, text, expected, "a dataset folder holds images/")
    assert "see SegDataset.open" not in text
