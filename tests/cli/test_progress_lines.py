"""SAMADAPT_PROGRESS=lines: progress as ``samadapt-progress {json}`` lines on stderr, for programs driving the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.progress import BarColumn, Progress, TextColumn

from samadapt.cli import main
from samadapt.progress import LineProgress, progress_bar

PREFIX = "samadapt-progress "


def progress_lines(err: str) -> list[dict[str, Any]]:
    """The JSON records of the progress lines in this stderr text; every such line must parse."""
    return [json.loads(line[len(PREFIX):]) for line in err.splitlines() if line.startswith(PREFIX)]


def test_lines_follow_add_task_update_and_advance(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SAMADAPT_PROGRESS", "lines")
    with progress_bar(TextColumn("{task.description}"), BarColumn(), transient=True) as bar:
        assert isinstance(bar, LineProgress) and bar.disable
        task = bar.add_task("embedding", total=200)
        for _ in range(200):
            bar.advance(task)  # 200 steps, one line per whole percent
        bar.update(task, completed=200)  # no change: no line
        other = bar.add_task("tiles", total=None)
        bar.update(other, total=4, completed=1, description="a.tif")
        bar.update(other, advance=3)
    out, err = capsys.readouterr()
    assert out == ""
    assert all(line.startswith(PREFIX) for line in err.splitlines())  # nothing else: no bar drawn
    records = progress_lines(err)
    first = [r for r in records if r["task"] == "embedding"]
    assert first[0] == {"task": "embedding", "completed": 0, "total": 200}
    assert [r["completed"] for r in first] == list(range(0, 201, 2))  # 0 %, 1 %, ..., 100 %
    assert first[-1] == {"task": "embedding", "completed": 200, "total": 200}
    assert records[len(first):] == [
        {"task": "tiles", "completed": 0, "total": None},
        {"task": "a.tif", "completed": 1, "total": 4},
        {"task": "a.tif", "completed": 4, "total": 4},
    ]


def test_unknown_total_is_throttled_and_flushed_on_stop(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SAMADAPT_PROGRESS", "lines")
    with progress_bar() as bar:
        task = bar.add_task("annotating", total=None)
        for n in range(1, 51):
            bar.update(task, completed=n)  # far faster than one line per half second
    records = progress_lines(capsys.readouterr().err)
    assert records[0] == {"task": "annotating", "completed": 0, "total": None}
    assert len(records) < 10  # throttled, not one line per update
    assert records[-1] == {"task": "annotating", "completed": 50, "total": None}  # the last count, on stop


@pytest.mark.parametrize("value", [None, "", "bar"])
def test_without_lines_the_rich_bar_is_kept(
    value: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if value is None:
        monkeypatch.delenv("SAMADAPT_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("SAMADAPT_PROGRESS", value)
    with progress_bar(transient=True) as bar:
        assert type(bar) is Progress
        task = bar.add_task("embedding", total=3)
        bar.advance(task, 3)
    assert PREFIX not in capsys.readouterr().err


def test_embed_reports_progress_lines_on_stderr(
    tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    images = []
    for i in range(3):
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(images[-1])
    monkeypatch.setenv("SAMADAPT_PROGRESS", "lines")
    monkeypatch.setattr(sys, "argv", ["samadapt", "embed", *map(str, images), "--model", str(tiny_models["sam"])])
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    assert exc.value.code in (0, None), out + err
    assert "3 encoded" in out and PREFIX not in out  # results on stdout, progress on stderr only
    records = progress_lines(err)
    assert records, err
    assert all(r["task"] == "embedding" and r["total"] == 3 for r in records)
    assert [r["completed"] for r in records] == [0, 1, 2, 3]
    assert records[-1]["completed"] == records[-1]["total"]
