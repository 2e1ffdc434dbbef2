"""Running the ``samadapt`` command in-process, as a user would from a shell."""

from __future__ import annotations

import sys

import pytest

from samadapt.cli import main


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``samadapt *args`` in-process.

    Returns:
        The exit code (a non-integer exit status counts as 1) and everything printed to stdout and
        stderr, with runs of whitespace folded to one space so messages can be matched whatever
        their line wrapping.
    """
    monkeypatch.setattr(sys, "argv", ["samadapt", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    code = exc.value.code if isinstance(exc.value.code, int) else (0 if exc.value.code is None else 1)
    return code, " ".join((captured.out + captured.err).split())
