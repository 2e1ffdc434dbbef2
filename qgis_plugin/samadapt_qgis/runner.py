"""Find the samadapt executable and run its commands as subprocesses.

The plugin never imports samadapt: QGIS's Python has no torch. Every command runs as
``samadapt <command> ...`` with ``SAMADAPT_PROGRESS=lines``, so its progress bars arrive as
``samadapt-progress {json}`` lines on standard error; a :class:`Listener` receives them, the
other lines of the command, and is asked every 0.1 s whether to cancel. Cancelling terminates
the process (and, after a grace period, kills it); nothing is left running.

This module needs no QGIS either, so its logic can be read and reused on its own.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Callable

#: The prefix of a machine-readable progress line (``SAMADAPT_PROGRESS=lines``).
PROGRESS_PREFIX = "samadapt-progress "
#: Seconds a terminated command gets to exit before it is killed.
GRACE_S = 5.0


class SamadaptNotFound(RuntimeError):
    """The samadapt executable is neither configured nor on PATH, or the configured one is missing."""


class CommandFailed(RuntimeError):
    """A samadapt command exited with an error; the message is its own error sentence."""


class Cancelled(RuntimeError):
    """The user cancelled a running command; the process was stopped."""


def find_executable(configured: str = "") -> str:
    """The samadapt executable: ``configured`` when given, else ``samadapt`` on PATH.

    Raises:
        SamadaptNotFound: with one sentence saying what to install or set.
    """
    configured = (configured or "").strip()
    if configured:
        path = Path(configured).expanduser()
        if path.is_file() and os.access(str(path), os.X_OK):
            return str(path)
        raise SamadaptNotFound(
            f"the samadapt executable set in the plugin settings, {configured}, does not exist or cannot be run; "
            "point the setting at the samadapt program of the Python environment samadapt is installed in "
            "(for example .venv/bin/samadapt), or clear it to use samadapt from PATH")
    found = shutil.which("samadapt")
    if found:
        return found
    raise SamadaptNotFound(
        "samadapt was not found on PATH; install it (pip install samadapt) and either put its environment's bin "
        "folder on PATH or set the samadapt executable in the plugin's dock (Settings)")


def command_env(extra: dict | None = None) -> dict:
    """The environment of a samadapt subprocess: progress as lines, no colours, wide lines."""
    env = dict(os.environ)
    env.update({"SAMADAPT_PROGRESS": "lines", "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "400",
                "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def popen(args: list[str], env: dict | None = None, merge_output: bool = False) -> subprocess.Popen:
    """Start ``args`` in its own process group (so stopping it stops its children), text pipes."""
    kwargs: dict = {}
    if sys.platform == "win32":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    else:
        kwargs["start_new_session"] = True
    return subprocess.Popen(  # noqa: S603 - the executable is the user's samadapt
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
        text=True, encoding="utf-8", errors="replace", bufsize=1, env=env or command_env(), **kwargs)


def _signal(proc: subprocess.Popen, kill: bool) -> None:
    """SIGTERM (or SIGKILL) to ``proc``'s process group; terminate() / kill() on Windows."""
    try:
        if sys.platform == "win32":
            (proc.kill if kill else proc.terminate)()
        else:
            os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """Terminate ``proc`` and its process group; kill it if it is still running after ``grace_s``."""
    if proc.poll() is not None:
        return
    _signal(proc, kill=False)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        _signal(proc, kill=True)
        proc.wait(timeout=grace_s)


def parse_progress(line: str) -> dict | None:
    """The progress record of a ``samadapt-progress {...}`` line, or None for any other line."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    try:
        record = json.loads(line[len(PROGRESS_PREFIX):])
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def error_sentence(lines: Iterable[str]) -> str:
    """The error a command printed (``error: ...``), else its last lines."""
    kept = [line.strip() for line in lines if line.strip() and parse_progress(line) is None]
    for line in reversed(kept):
        lowered = line.lower()
        if lowered.startswith("error:"):
            return line[len("error:"):].strip()
    return " ".join(kept[-3:]) if kept else "no message"


class Listener:
    """What a running command reports to; the base class ignores everything and never cancels."""

    def progress(self, fraction: float, task: str) -> None:
        """``fraction`` (0-1) of the current task is done; -1 when its total is unknown."""

    def line(self, text: str) -> None:
        """A line of the command's output (not a progress line)."""

    def cancelled(self) -> bool:
        """True when the command should stop."""
        return False


def run(executable: str, args: list[str], listener: Listener | None = None,
        env: dict | None = None) -> list[str]:
    """Run ``samadapt <args>`` to its end and return its standard output lines.

    Raises:
        CommandFailed: the command exited non-zero; the message is its error sentence.
        Cancelled: ``listener.cancelled()`` became true; the process was stopped first.
    """
    listener = listener or Listener()
    proc = popen([executable, *args], env=command_env(env))
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()

    def pump(stream: object, name: str) -> None:
        for raw in iter(stream.readline, ""):  # type: ignore[attr-defined]
            lines.put((name, raw.rstrip("\n")))
        lines.put((name, None))

    readers = [threading.Thread(target=pump, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, "err"), daemon=True)]
    for reader in readers:
        reader.start()
    out: list[str] = []
    err: list[str] = []
    open_streams = 2
    try:
        while open_streams:
            if listener.cancelled():
                stop_process(proc)
                raise Cancelled(f"samadapt {args[0] if args else ''} was cancelled; its process was stopped")
            try:
                name, text = lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if text is None:
                open_streams -= 1
                continue
            record = parse_progress(text)
            if record is not None:
                total, done = record.get("total"), record.get("completed") or 0
                fraction = float(done) / float(total) if total else -1.0
                listener.progress(min(max(fraction, -1.0), 1.0), str(record.get("task", "")))
                continue
            (out if name == "out" else err).append(text)
            listener.line(text)
        code = proc.wait()
    finally:
        if proc.poll() is None:
            stop_process(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    if code != 0:
        raise CommandFailed(f"samadapt {args[0] if args else ''} failed: {error_sentence(err + out)}")
    return out


class Steps(Listener):
    """Spread several commands over one progress bar: step ``i`` of ``n`` covers its share.

    Args:
        inner: the listener to forward to.
        weights: the relative length of each step, e.g. (1, 9) for a short build and a long training.
    """

    def __init__(self, inner: Listener, weights: Iterable[float]) -> None:
        self.inner = inner
        w = [float(x) for x in weights]
        total = sum(w) or 1.0
        self.starts = [sum(w[:i]) / total for i in range(len(w))]
        self.shares = [x / total for x in w]
        self.index = 0

    def step(self, index: int) -> Steps:
        """Make step ``index`` (0-based) the current one and report its start."""
        self.index = index
        self.inner.progress(self.starts[index], "")
        return self

    def progress(self, fraction: float, task: str) -> None:
        if fraction < 0:
            return
        self.inner.progress(self.starts[self.index] + fraction * self.shares[self.index], task)

    def line(self, text: str) -> None:
        self.inner.line(text)

    def cancelled(self) -> bool:
        return self.inner.cancelled()


def wait_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes; True when it became true."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()
