"""The demo reruns into its own folder, also over an older run whose folders carry no manifest."""

from __future__ import annotations

from pathlib import Path

from samadapt.demo import DEMO_FOLDERS, _clear_previous_run


def test_a_rerun_clears_an_earlier_demo_but_nothing_else(tmp_path: Path) -> None:
    demo = tmp_path / "demo-output"
    (demo / "prompt_modes").mkdir(parents=True)
    (demo / "prompt_modes" / "compare.csv").write_text("old")  # an older run's folder: no manifest
    (demo / "tiny-sam").mkdir()
    (demo / "mars_sample.tif").write_bytes(b"II*\0")
    _clear_previous_run(demo)
    assert not (demo / "prompt_modes").exists()
    assert (demo / "tiny-sam").is_dir() and (demo / "mars_sample.tif").is_file()

    mine = tmp_path / "mine"
    (mine / "prompt_modes").mkdir(parents=True)
    (mine / "prompt_modes" / "notes.txt").write_text("a user's file")
    _clear_previous_run(mine)  # not a demo folder: left alone
    assert (mine / "prompt_modes" / "notes.txt").read_text() == "a user's file"
    assert "prompt_modes" in DEMO_FOLDERS
