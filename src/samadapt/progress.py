"""Progress bars, or progress lines for programs that run samadapt as a subprocess.

Every progress bar samadapt shows comes from :func:`progress_bar`. With ``SAMADAPT_PROGRESS=lines`` in the
environment no bar is drawn; instead each task writes lines like::

    samadapt-progress {"task": "embedding", "completed": 3, "total": 10}

to standard error (JSON after the prefix and one space, flushed at once): when the task is added and whenever its
whole percent or its total changes. A change of description alone, or of ``completed`` while the total is unknown
(``null``), writes at most one line every half second. The last state of each task is written when the bar stops.
Any other value (unset, empty) keeps the rich bars.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from typing import Any

from rich.progress import Progress, ProgressColumn, TaskID

#: The environment variable that switches the bars to lines, and its value.
ENV = "SAMADAPT_PROGRESS"
LINES = "lines"
#: What starts every progress line.
PREFIX = "samadapt-progress"
#: Seconds between two lines of a task whose total is unknown.
THROTTLE = 0.5


def progress_bar(*columns: str | ProgressColumn, **kwargs: Any) -> Progress:
    """A rich ``Progress`` with these columns and options; a :class:`LineProgress` under ``SAMADAPT_PROGRESS=lines``."""
    if os.environ.get(ENV, "").strip().lower() == LINES:
        return LineProgress(*columns, **kwargs)
    return Progress(*columns, **kwargs)


def _number(x: float | None) -> float | int | None:
    return int(x) if x is not None and float(x).is_integer() else x


class LineProgress(Progress):
    """A ``Progress`` that draws nothing and writes ``samadapt-progress {json}`` lines to standard error."""

    def __init__(self, *columns: str | ProgressColumn, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*columns, **kwargs)
        self._sent: dict[TaskID, tuple[tuple[str, float | None, float], float]] = {}
        self._line_lock = threading.RLock()

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0, completed: int = 0,
                 visible: bool = True, **fields: Any) -> TaskID:
        task_id = super().add_task(description, start=start, total=total, completed=completed, visible=visible,
                                   **fields)
        self._report(task_id)
        return task_id

    def update(self, task_id: TaskID, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, visible: bool | None = None,
               refresh: bool = False, **fields: Any) -> None:
        super().update(task_id, total=total, completed=completed, advance=advance, description=description,
                       visible=visible, refresh=refresh, **fields)
        self._report(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._report(task_id)

    def stop(self) -> None:
        """Write the last state of every task not written yet (a throttled count), then stop."""
        for task_id in list(self._tasks):
            self._report(task_id, final=True)
        super().stop()

    def _report(self, task_id: TaskID, final: bool = False) -> None:
        with self._line_lock:
            task = self._tasks.get(task_id)
            if task is None:
                return
            total, completed = task.total, task.completed
            known = bool(total)  # None or 0: a count, not a share
            mark = (min(100, max(0, math.floor(100 * completed / total))) if total  # whole percent
                    else completed)
            key = (task.description, total, mark)
            now = time.monotonic()
            last = self._sent.get(task_id)
            if last is not None:
                if last[0] == key:
                    return
                # A new total or whole percent is written at once; a new description, or a new count under an
                # unknown total, at most every THROTTLE seconds (the training bar's loss changes every step).
                at_once = last[0][1] != total or (known and last[0][2] != mark)
                if not at_once and not final and now - last[1] < THROTTLE:
                    return
            self._sent[task_id] = (key, now)
            record = {"task": task.description, "completed": _number(completed), "total": _number(total)}
            sys.stderr.write(f"{PREFIX} {json.dumps(record)}\n")
            sys.stderr.flush()
