"""The fault suite of the command line: bad input, read-only and full folders, for every command.

Each case is run as a user would meet it and must end the same way: exit code 2, one sentence
that names what was wrong, no traceback, and nothing left behind (no temporary file, no
half-written output, no file of the user's touched). ``test_every_command_has_fault_cases``
counts the cases per command, so a new command cannot ship without its own.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin

from helpers.cli import run_cli
from helpers.httpfiles import FileServer, serve_files
from helpers.rasters import write_geotiff
from samadapt.sample import make_mars_dataset

#: Bad-input cases each command must have at least (besides its read-only and full-disk cases).
MIN_CASES = 2
METRE_GRID = from_origin(500000.0, 4000000.0, 1.0, 1.0)  # 1 m pixels


def _ended_pid() -> int:
    """The id of a process that has run and been reaped (nothing runs under it now)."""
    import subprocess
    import sys

    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


@dataclass(frozen=True)
class World:
    """What the cases work on: inputs that are fine, made once for the module."""

    root: Path
    model: Path
    image: Path
    dataset: Path
    adapter: Path


@dataclass(frozen=True)
class Case:
    """One fault: a command, how to call it badly, and words its one sentence must hold."""

    command: str
    name: str
    args: Callable[[World, Path], list[str]]
    expect: str
    folder: str = "tmp"  # where outputs go: "tmp" (a fresh folder), "read-only" or "full"
    code: int = 2
    home: bool = False  # the folder is SAMADAPT_HOME (the embedding cache), not an output

    @property
    def id(self) -> str:
        return f"{self.command}: {self.name}"


def _noise(height: int, width: int) -> np.ndarray:
    """(3, H, W) uint8 noise, the same at every call."""
    return (np.random.default_rng(0).random((3, height, width)) * 255).astype("uint8")


def _file(text: str, name: str) -> Callable[[World, Path], Path]:
    def make(w: World, out: Path) -> Path:
        path = out.parent / name
        path.write_text(text)
        return path
    return make


def _truncated(w: World, out: Path) -> Path:
    """A copy of the world's image cut to half its bytes, as an interrupted download leaves it."""
    data = w.image.read_bytes()
    path = out.parent / "cut.tif"
    path.write_bytes(data[: len(data) // 2])
    return path


_boxes_csv = _file("x0,y0,x1,y1\n2,2,40,40\n", "boxes.csv")


def _objects_gpkg(w: World, out: Path) -> Path:
    """Two square objects in UTM, as ``predict`` writes polygons, beside the output folder."""
    import geopandas as gpd
    import shapely

    path = out.parent / "objects.gpkg"
    gpd.GeoDataFrame({"class": [1, 1]}, geometry=[shapely.box(500010, 3999900, 500030, 3999920),
                                                  shapely.box(500050, 3999950, 500055, 3999955)],
                     crs="EPSG:32633").to_file(path)
    return path


def _tiny_detector(w: World, out: Path) -> Path:
    """A tiny random GroundingDINO folder beside the output folder (made before the case runs)."""
    from samadapt.text.tiny_detectors import save_tiny_detector

    return save_tiny_detector(out.parent / "detector", "grounding-dino")


def _polygons(folder: Path) -> Path:
    """A GeoPackage of two squares in UTM metres (made once per folder)."""
    path = folder / "squares.gpkg"
    if not path.exists():
        import geopandas as gpd
        from shapely.geometry import box

        geoms = [box(500000, 4000000, 500010, 4000010), box(500100, 4000000, 500120, 4000020)]
        gpd.GeoDataFrame(geometry=geoms, crs="EPSG:32633").to_file(path, engine="pyogrio")
    return path


def _coco_file(w: World, out: Path, *, file_name: str | None = None, category_id: int = 1) -> Path:
    """A COCO file beside the output folder: one of the world's images with one box of ``category_id``."""
    import json

    image = sorted((w.dataset / "images").iterdir())[0]
    doc = {"images": [{"id": 1, "file_name": file_name or image.name, "height": 128, "width": 128}],
           "categories": [{"id": 1, "name": "pit"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": category_id, "bbox": [4, 4, 20, 20], "iscrowd": 0}]}
    path = out.parent / "coco.json"
    path.write_text(json.dumps(doc))
    return path


def _user_folder(out: Path) -> Path:
    """A folder holding a user's file: no command may delete it."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "thesis.txt").write_text("three years of work")
    return out


_SERVERS: list[FileServer] = []


@pytest.fixture(scope="module", autouse=True)
def _http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A local HTTP server of an empty folder, for the cases of a URL that answers 404; closed after the module."""
    with serve_files(tmp_path_factory.mktemp("served")) as srv:
        _SERVERS.append(srv)
        yield
        _SERVERS.clear()


def _missing_url(w: World) -> str:
    """A URL the local HTTP server answers with 404."""
    return _SERVERS[0].url("no-such-scene.tif")


CASES: list[Case] = [
    # segment
    Case("segment", "404 url", lambda w, o: [_missing_url(w), "-m", str(w.model), "--box", "1,1,9,9",
                                             "-o", str(o / "a.png")], "HTTP 404"),
    Case("segment", "asset without stac", lambda w, o: [str(w.image), "--asset", "visual", "-m", str(w.model),
                                                        "--box", "1,1,9,9", "-o", str(o / "a.png")],
         "not a STAC item"),
    Case("predict", "404 url", lambda w, o: [str(w.model), _missing_url(w), "--prompts", str(_boxes_csv(w, o)),
                                             "-o", str(o / "m")], "HTTP 404"),
    Case("predict", "asset without stac", lambda w, o: [str(w.adapter), str(w.image), "--asset", "visual",
                                                        "-o", str(o / "m")], "no input is a STAC item"),
    Case("segment", "missing image", lambda w, o: ["nope.tif", "-m", str(w.model), "--box", "1,1,9,9",
                                                   "-o", str(o / "a.tif")], "nope.tif"),
    Case("segment", "box with three numbers", lambda w, o: [str(w.image), "-m", str(w.model), "--box", "1,2,3",
                                                            "-o", str(o / "a.tif")], "box"),
    Case("segment", "same output twice", lambda w, o: [str(w.image), "-m", str(w.model), "--box", "1,1,60,60",
                                                       "-o", str(o / "a.tif"), "-o", str(o / "a.tif")],
         "given twice"),
    Case("segment", "unknown output kind", lambda w, o: [str(w.image), "-m", str(w.model), "--box", "1,1,60,60",
                                                         "-o", str(o / "a.docx")], ".docx"),
    Case("segment", "cuda on a CPU-only torch", lambda w, o: [str(w.image), "-m", str(w.model), "--box", "1,1,9,9",
                                                              "--device", "cuda", "-o", str(o / "a.tif")], "cuda"),
    Case("segment", "read-only output", lambda w, o: [str(w.image), "-m", str(w.model), "--box", "1,1,60,60",
                                                      "-o", str(o / "a.tif")], "cannot be written",
         folder="read-only"),
    Case("segment", "full disk", lambda w, o: [str(w.image), "-m", str(w.model), "--box", "1,1,60,60",
                                               "-o", str(o / "a.tif"), "-o", str(o / "a.gpkg")], "full",
         folder="full"),
    Case("segment", "text with sam and no detector", lambda w, o: [str(w.image), "-m", str(w.model), "--text", "pit",
                                                                   "-o", str(o / "a.gpkg")], "cannot read text"),
    Case("segment", "exemplar for sam", lambda w, o: [str(w.image), "-m", str(w.model), "--exemplar", "1,1,9,9",
                                                      "-o", str(o / "a.gpkg")], "SAM 3's concept prompt"),
    Case("segment", "text into a read-only output",
         lambda w, o: [str(w.image), "-m", str(w.model), "--text", "pit", "--detector", str(_tiny_detector(w, o)),
                       "-o", str(o / "a.gpkg")], "cannot be written", folder="read-only"),
    # embed
    Case("embed", "missing image", lambda w, o: [str(o / "nope.tif"), "-m", str(w.model)], "nope.tif"),
    Case("embed", "band out of range", lambda w, o: [str(w.image), "-m", str(w.model), "--bands", "9"], "band 9"),
    Case("embed", "unknown model", lambda w, o: [str(w.image), "-m", "sam-vit-gigantic"], "sam-vit-gigantic"),
    Case("embed", "read-only cache", lambda w, o: [str(w.image), "-m", str(w.model)], "cannot write",
         folder="read-only", home=True),
    Case("embed", "full cache", lambda w, o: [str(w.image), "-m", str(w.model)], "could not be stored",
         folder="full", home=True),
    # annotate
    Case("annotate", "missing dataset", lambda w, o: [str(o / "nope"), "-m", str(w.model), "--out",
                                                      str(o / "pl")], "nope"),
    Case("annotate", "unknown mode", lambda w, o: [str(w.dataset), "-m", str(w.model), "--mode", "guess",
                                                   "--out", str(o / "pl")], "guess"),
    Case("annotate", "read-only output", lambda w, o: [str(w.dataset), "-m", str(w.model), "--out",
                                                       str(o / "pl")], "read-only", folder="read-only"),
    Case("annotate", "detector without text", lambda w, o: [str(w.dataset), "-m", str(w.model), "--detector",
                                                            "grounding-dino-tiny", "--out", str(o / "pl")],
         "add --text"),
    Case("annotate", "text with sam and no detector", lambda w, o: [str(w.dataset), "-m", str(w.model), "--mode",
                                                                    "text", "--text", "pit", "--out", str(o / "pl")],
         "add --detector"),
    Case("annotate", "text threshold with sam3", lambda w, o: [str(w.dataset), "-m", "sam3", "--mode", "text",
                                                               "--text", "pit", "--text-threshold", "0.3", "--out",
                                                               str(o / "pl")], "--text-threshold"),
    # train
    Case("train", "folder holding a user's file", lambda w, o: [str(w.dataset), "-m", str(w.model), "--epochs", "1",
                                                                "-o", str(_user_folder(o / "ad"))], "thesis.txt"),
    Case("train", "unknown method option", lambda w, o: [str(w.dataset), "-m", str(w.model), "--epochs", "1",
                                                         "--option", "foo=bar", "-o", str(o / "ad")], "foo"),
    Case("train", "unknown method", lambda w, o: [str(w.dataset), "-m", str(w.model), "--method", "magic",
                                                  "-o", str(o / "ad")], "magic"),
    Case("train", "zero epochs", lambda w, o: [str(w.dataset), "-m", str(w.model), "--epochs", "0",
                                               "-o", str(o / "ad")], "epochs"),
    Case("train", "read-only output", lambda w, o: [str(w.dataset), "-m", str(w.model), "--epochs", "1",
                                                    "-o", str(o / "ad")], "read-only", folder="read-only"),
    Case("train", "full disk", lambda w, o: [str(w.dataset), "-m", str(w.model), "--epochs", "1",
                                             "-o", str(o / "ad")], "full", folder="full"),
    # evaluate
    Case("evaluate", "missing adapter", lambda w, o: [str(o / "nope"), str(w.dataset)], "nope"),
    Case("evaluate", "missing dataset", lambda w, o: [str(w.adapter), str(o / "nods")], "nods"),
    Case("evaluate", "unknown split", lambda w, o: [str(w.adapter), str(w.dataset), "--split", "holdout"],
         "holdout"),
    Case("evaluate", "read-only overlays", lambda w, o: [str(w.adapter), str(w.dataset), "--overlays",
                                                         str(o / "ov")], "read-only", folder="read-only"),
    # learning-curve
    Case("learning-curve", "missing dataset", lambda w, o: [str(o / "nope"), "-m", str(w.model), "--out",
                                                            str(o / "lc")], "nope"),
    Case("learning-curve", "sizes not numbers", lambda w, o: [str(w.dataset), "-m", str(w.model), "--sizes", "a,b",
                                                              "--out", str(o / "lc")], "sizes"),
    Case("learning-curve", "folder holding a user's file", lambda w, o: [str(w.dataset), "-m", str(w.model), "--sizes",
                                                                         "1", "--epochs", "1", "--out",
                                                                         str(_user_folder(o / "lc"))], "thesis.txt"),
    Case("learning-curve", "read-only output", lambda w, o: [str(w.dataset), "-m", str(w.model), "--sizes", "1",
                                                             "--epochs", "1", "--out", str(o / "lc")], "read-only",
         folder="read-only"),
    # predict
    Case("predict", "tile 0", lambda w, o: [str(w.adapter), str(w.image), "--tile", "0", "-o", str(o / "m")],
         "tile"),
    Case("predict", "scheduler that does not answer", lambda w, o: [str(w.adapter), str(w.image), "--scheduler",
                                                                    "tcp://127.0.0.1:1", "-o", str(o / "m")],
         "cannot reach the dask scheduler"),
    Case("predict", "unknown vector format", lambda w, o: [str(w.adapter), str(w.image), "--vector", "shp",
                                                           "-o", str(o / "m")], "vector"),
    Case("predict", "truncated raster", lambda w, o: [str(w.adapter), str(_truncated(w, o)), "-o", str(o / "m")],
         "damaged or truncated", code=1),  # one raster failing is reported in the table; the others go on
    Case("predict", "full disk", lambda w, o: [str(w.adapter), str(w.image), "-o", str(o / "m")], "scratch space",
         folder="full"),
    Case("predict", "prompts into a full disk",
         lambda w, o: [str(w.model), str(w.image), "--prompts", str(_boxes_csv(w, o)), "-o", str(o / "m")],
         "scratch space", folder="full"),
    Case("predict", "read-only output", lambda w, o: [str(w.adapter), str(w.image), "-o", str(o / "m")],
         "read-only", folder="read-only"),
    Case("predict", "detector without text", lambda w, o: [str(w.model), str(w.image), "--detector",
                                                           "grounding-dino-tiny", "-o", str(o / "m")], "add --text"),
    Case("predict", "text with sam and no detector", lambda w, o: [str(w.model), str(w.image), "--text", "pit",
                                                                   "-o", str(o / "m")], "add --detector"),
    Case("predict", "text threshold with sam3", lambda w, o: ["sam3", str(w.image), "--text", "pit",
                                                              "--text-threshold", "0.3", "-o", str(o / "m")],
         "--text-threshold"),
    Case("predict", "text with prompts", lambda w, o: [str(w.model), str(w.image), "--text", "pit", "--detector",
                                                       "grounding-dino-tiny", "--prompts", str(_boxes_csv(w, o)),
                                                       "-o", str(o / "m")], "drop --prompts"),
    Case("predict", "text with an adapter", lambda w, o: [str(w.adapter), str(w.image), "--text", "pit",
                                                          "--detector", "grounding-dino-tiny", "-o", str(o / "m")],
         "is an adapter"),
    Case("predict", "text into a read-only output",
         lambda w, o: [str(w.model), str(w.image), "--text", "pit", "--detector", str(_tiny_detector(w, o)),
                       "-o", str(o / "m")], "read-only", folder="read-only"),
    Case("predict", "text with a batch size", lambda w, o: [str(w.model), str(w.image), "--text", "pit", "--detector",
                                                            "grounding-dino-tiny", "--batch-size", "4",
                                                            "-o", str(o / "m")], "--batch-size applies to adapters"),
    Case("predict", "detector folder that does not exist",
         lambda w, o: [str(w.model), str(w.image), "--text", "pit", "--detector", str(o.parent / "no-detector"),
                       "-o", str(o / "m")], "no-detector"),
    Case("predict", "catalogue without polygons", lambda w, o: [str(w.adapter), str(w.image), "--vector", "none",
                                                                "--catalogue", "-o", str(o / "m")], "--catalogue"),
    # objects
    Case("objects", "missing polygons", lambda w, o: [str(o / "nope.gpkg"), "--out", str(o / "cat")], "nope.gpkg"),
    Case("objects", "not a polygon file", lambda w, o: [str(_file("x", "p.gpkg")(w, o)), "--out", str(o / "cat")],
         "not a readable polygon file"),
    Case("objects", "area twice", lambda w, o: [str(_objects_gpkg(w, o)), "--area-km2", "2", "--area",
                                                str(_objects_gpkg(w, o)), "--out", str(o / "cat")], "not both"),
    Case("objects", "negative area", lambda w, o: [str(_objects_gpkg(w, o)), "--area-km2", "-1", "--out",
                                                   str(o / "cat")], "positive"),
    Case("objects", "folder holding a user's file", lambda w, o: [str(_objects_gpkg(w, o)), "--out",
                                                                  str(_user_folder(o / "cat")), "--overwrite"],
         "thesis.txt"),
    Case("objects", "read-only output", lambda w, o: [str(_objects_gpkg(w, o)), "--out", str(o / "cat")], "read-only",
         folder="read-only"),
    Case("objects", "full disk", lambda w, o: [str(_objects_gpkg(w, o)), "--out", str(o / "cat")], "full",
         folder="full"),
    # --class-column of segment / predict --prompts
    Case("segment", "class column the prompt file lacks",
         lambda w, o: [str(w.image), "-m", str(w.model), "--prompts", str(_file("x0,y0,x1,y1\n1,1,30,30\n",
                                                                                 "p.csv")(w, o)),
                       "--class-column", "kind", "-o", str(o / "a.gpkg")], "no column 'kind'"),
    Case("predict", "class column without prompts", lambda w, o: [str(w.model), str(w.image), "--class-column",
                                                                   "kind", "-o", str(o / "m")], "--prompts"),
    # evaluate-map
    Case("evaluate-map", "missing predicted file", lambda w, o: [str(o / "nope.gpkg"), str(_polygons(o))],
         "nope.gpkg"),
    Case("evaluate-map", "class column the files lack", lambda w, o: [str(_polygons(o)), str(_polygons(o)),
                                                                      "--class-column", "kind"], "no column 'kind'"),
    Case("evaluate-map", "iou above 1", lambda w, o: [str(_polygons(o)), str(_polygons(o)), "--iou", "1.5"],
         "--iou"),
    Case("evaluate-map", "read-only output", lambda w, o: [str(_polygons(w.root)), str(_polygons(w.root)),
                                                           "--out", str(o / "report")], "read-only",
         folder="read-only"),
    # serve (options are checked before the server starts)
    Case("serve", "missing config", lambda w, o: ["-m", str(w.model), "--config", str(o / "nope.toml")],
         "nope.toml"),
    Case("serve", "damaged config", lambda w, o: ["-m", str(w.model), "--config",
                                                  str(_file("[server\nport = ", "bad.toml")(w, o))], "bad.toml"),
    Case("serve", "missing source raster", lambda w, o: ["-m", str(w.model), "--source", str(o / "nope.tif")],
         "nope.tif"),
    Case("serve", "detector that does not exist", lambda w, o: ["-m", str(w.model), "--detector",
                                                                str(o / "nope-detector")], "nope-detector"),
    Case("serve", "box threshold above 1", lambda w, o: ["-m", str(w.model), "--box-threshold", "1.5"], "threshold"),
    Case("serve", "text threshold without a detector", lambda w, o: ["-m", str(w.model), "--text-threshold", "0.3"],
         "--detector"),
    Case("serve", "parent pid that is not running", lambda w, o: ["-m", str(w.model), "--parent-pid",
                                                                   str(_ended_pid())], "no such process"),
    Case("serve", "parent pid 0", lambda w, o: ["-m", str(w.model), "--parent-pid", "0"], "--parent-pid 0"),
    # info
    Case("info", "unknown model", lambda w, o: ["-m", "sam-vit-gigantic"], "sam-vit-gigantic"),
    Case("info", "unknown runtime", lambda w, o: ["-m", str(w.model), "--runtime", "fp8"], "fp8"),
    # demo
    Case("demo", "output is a file", lambda w, o: ["--out", str(_file("x", "taken")(w, o)), "-m", str(w.model)],
         "taken"),
    Case("demo", "unknown model", lambda w, o: ["--out", str(o / "d"), "-m", "sam-vit-gigantic"],
         "sam-vit-gigantic"),
    Case("demo", "read-only output", lambda w, o: ["--out", str(o / "d"), "-m", str(w.model)], "read-only",
         folder="read-only"),
    # models
    Case("models list", "an argument it does not take", lambda w, o: ["extra"], "extra", code=2),
    Case("models list", "unknown option", lambda w, o: ["--all"], "--all", code=2),
    Case("models fetch", "unknown name", lambda w, o: ["sam-vit-gigantic"], "sam-vit-gigantic"),
    Case("models fetch", "no name", lambda w, o: [], "name", code=2),
    Case("models check", "unknown name", lambda w, o: ["sam-vit-gigantic"], "sam-vit-gigantic"),
    Case("models check", "folder without a model", lambda w, o: [str(o)], "config.json"),
    Case("models convert", "missing checkpoint", lambda w, o: [str(o / "nope.pth"), str(o / "conv")], "nope.pth"),
    Case("models convert", "not a checkpoint", lambda w, o: [str(_file("not torch", "x.pth")(w, o)),
                                                             str(o / "conv")], "x.pth"),
    Case("models tiny", "folder holding a user's file", lambda w, o: [str(_user_folder(o / "t")), "--overwrite"],
         "thesis.txt"),
    Case("models tiny", "unknown family", lambda w, o: [str(o / "t"), "--family", "sam9"], "sam9"),
    Case("models tiny", "read-only output", lambda w, o: [str(o / "t")], "read-only", folder="read-only"),
    Case("models tiny", "full disk", lambda w, o: [str(o / "t")], "full", folder="full"),
    # data
    Case("data check", "missing dataset", lambda w, o: [str(o / "nope")], "nope"),
    Case("data check", "a file, not a folder", lambda w, o: [str(_file("x", "ds.txt")(w, o))], "ds.txt"),
    Case("data build", "missing raster", lambda w, o: [str(o / "nope.tif"), str(o / "p.gpkg"), "--out",
                                                       str(o / "ds")], "nope.tif"),
    Case("data build", "missing polygons", lambda w, o: [str(w.image), str(o / "nope.gpkg"), "--out",
                                                         str(o / "ds")], "nope.gpkg"),
    Case("data build", "tile size zero", lambda w, o: [str(w.image), str(o / "nope.gpkg"), "--tile-size", "0",
                                                       "--out", str(o / "ds")], "tile"),
    Case("data from-hf", "missing folder", lambda w, o: [str(o / "nope"), "--out", str(o / "ds")], "nope"),
    Case("data from-hf", "not a saved dataset", lambda w, o: [str(w.image), "--out", str(o / "ds")], "save_to_disk"),
    Case("data import-coco", "missing annotations", lambda w, o: [str(o / "nope.json"), str(w.dataset / "images"),
                                                                  "--out", str(o / "ds")], "nope.json"),
    Case("data import-coco", "bad JSON", lambda w, o: [str(_file("{ not json", "a.json")(w, o)),
                                                       str(w.dataset / "images"), "--out", str(o / "ds")],
         "not a readable JSON"),
    Case("data import-coco", "missing image file", lambda w, o: [str(_coco_file(w, o, file_name="gone.png")),
                                                                 str(w.dataset / "images"), "--out", str(o / "ds")],
         "gone.png"),
    Case("data import-coco", "unknown category", lambda w, o: [str(_coco_file(w, o, category_id=42)),
                                                               str(w.dataset / "images"), "--out", str(o / "ds")],
         "category_id 42"),
    Case("data import-coco", "read-only output", lambda w, o: [str(_coco_file(w, o)), str(w.dataset / "images"),
                                                               "--out", str(o / "ds")], "cannot be written",
         folder="read-only"),
    Case("data export-coco", "missing dataset", lambda w, o: [str(o / "nope"), "--out", str(o / "a.json")], "nope"),
    Case("data export-coco", "output is a folder", lambda w, o: [str(w.dataset), "--out", str(o)], "folder"),
    Case("data export-coco", "read-only output", lambda w, o: [str(w.dataset), "--out", str(o / "a.json")],
         "cannot be written", folder="read-only"),
]


def _commands() -> list[str]:
    """Every command the CLI offers, as typed (``models tiny``)."""
    import typer.main

    from samadapt.cli import app

    found: list[str] = []

    def walk(command: object, prefix: str) -> None:
        children = getattr(command, "commands", None)
        if children:
            for name, child in children.items():
                walk(child, f"{prefix} {name}".strip())
        else:
            found.append(prefix)

    walk(typer.main.get_command(app), "")
    return sorted(found)


def test_every_command_has_fault_cases() -> None:
    """The count that keeps the suite whole: a command without its cases fails here."""
    counts = Counter(case.command for case in CASES)
    commands = _commands()
    assert "segment" in commands and "models tiny" in commands and len(commands) >= 15
    unknown = sorted(set(counts) - set(commands))
    assert not unknown, f"cases for commands the CLI does not have: {unknown}"
    thin = {c: counts.get(c, 0) for c in commands if counts.get(c, 0) < MIN_CASES}
    assert not thin, f"commands with fewer than {MIN_CASES} fault cases: {thin}"
    writers = {"segment", "annotate", "train", "evaluate", "learning-curve", "predict", "demo", "models tiny",
               "objects"}
    untested = sorted(c for c in writers if not any(k.command == c and k.folder == "read-only" for k in CASES))
    assert not untested, f"commands that write without a read-only case: {untested}"
    assert len({case.id for case in CASES}) == len(CASES), "two cases share a name"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Iterator[World]:
    root = tmp_path_factory.mktemp("fault-world")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAMADAPT_HOME", str(root / "home"))
        dataset = make_mars_dataset(root / "ds", n_images=4, size=128)
        image = write_geotiff(root / "image.tif", _noise(96, 128), crs="EPSG:32633", transform=METRE_GRID)
        from samadapt.cli import main

        mp.setattr(sys, "argv", ["samadapt", "train", str(dataset), "-m", str(tiny_models["sam"]), "--epochs", "1",
                                 "-o", str(root / "adapter")])
        with pytest.raises(SystemExit) as done:
            main()
        assert done.value.code in (0, None)
        yield World(root, tiny_models["sam"], image, dataset, root / "adapter")


def _listing(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fault(case: Case, world: World, request: pytest.FixtureRequest, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    if case.folder == "read-only":
        out = request.getfixturevalue("read_only_dir")
    elif case.folder == "full":
        out = request.getfixturevalue("full_dir")
    else:
        out = tmp_path / "work"
        out.mkdir()
    args = case.args(world, out)
    if case.home:
        monkeypatch.setenv("SAMADAPT_HOME", str(out))
        (out / "filler").write_bytes(b"\0" * 12 * 1024) if case.folder == "full" else None
    before = _listing(out.parent)
    world_before = _listing(world.root / "ds") | {"adapter/" + k: v for k, v in _listing(world.adapter).items()}
    monkeypatch.chdir(out.parent)
    code, text = run_cli([*case.command.split(), *args], monkeypatch, capsys)
    assert code == case.code, f"exit {code}: {text[-600:]}"
    assert "Traceback" not in text, text[-1500:]
    assert case.expect.lower() in text.lower(), text[-600:]
    if case.code == 2 and "Usage:" not in text:
        assert text.count("error:") == 1, text[-600:]
    after = _listing(out.parent)
    added = sorted(k for k in set(after) - set(before) if not (case.home and "digests" in k))  # a model's digest memo
    assert not added, f"left behind: {added}"
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"changed: {changed}"
    world_after = _listing(world.root / "ds") | {"adapter/" + k: v for k, v in _listing(world.adapter).items()}
    assert world_after == world_before, "an input was changed"


@pytest.mark.parametrize("home", ["read_only_dir", "full_dir"])
def test_segment_works_when_the_cache_cannot_be_written(home: str, world: World, request: pytest.FixtureRequest,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The embedding cache is only a speed-up: a read-only or full home folder costs a warning, not the run."""
    folder = request.getfixturevalue(home)
    if home == "full_dir":
        (folder / "filler").write_bytes(b"\0" * 12 * 1024)  # leave less room than one embedding needs
    monkeypatch.setenv("SAMADAPT_HOME", str(folder))
    out = tmp_path / "mask.tif"
    code, text = run_cli(["segment", str(world.image), "-m", str(world.model), "--box", "1,1,60,60", "-o", str(out)],
                         monkeypatch, capsys)
    assert code == 0, text[-600:]
    assert out.is_file() and "Traceback" not in text
    assert not [p for p in folder.rglob("*") if p.is_file() and (".tmp" in p.name or "embeddings" in p.parts)]


def test_polygons_of_a_raster_without_crs_come_with_one_note(world: World, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str],
                                                              recwarn: pytest.WarningsRecorder) -> None:
    """A raster with no CRS: one note that says where the polygons are, no library warning."""
    raster = write_geotiff(tmp_path / "nocrs.tif", _noise(64, 64), crs=None, transform=METRE_GRID)
    out = tmp_path / "p.gpkg"
    code, text = run_cli(["segment", str(raster), "-m", str(world.model), "--box", "1,1,40,40", "-o", str(out)],
                         monkeypatch, capsys)
    assert code == 0 and out.is_file(), text[-600:]
    assert "has no CRS" in text
    assert not [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)]
