"""Folders that fail the way users' disks do: read-only, and full.

Both are small tmpfs mounts when this process may mount (root in a container, as in CI); a
read-only folder falls back to ``chmod 555`` for other users, and a full disk is skipped, with
the reason, where nothing can be mounted.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(target: Path, options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                          capture_output=True, check=False)
    return done.returncode == 0


def _umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty folder nobody may write to (a read-only file system where one can be mounted)."""
    target = tmp_path / "read-only"
    if _mount(target, "ro,size=64k"):
        yield target
        _umount(target)
        return
    if os.geteuid() == 0:
        pytest.skip("cannot mount a read-only tmpfs here, and root writes through chmod 555")
    target.chmod(0o555)
    yield target
    target.chmod(0o755)


@pytest.fixture
def full_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on a tiny file system with about 16 KiB free."""
    target = tmp_path / "full"
    if not _mount(target, "size=16k"):
        pytest.skip("cannot mount a tiny tmpfs here (needs root): the disk-full cases need one")
    yield target
    _umount(target)
