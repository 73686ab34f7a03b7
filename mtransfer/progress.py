"""The one progress display every long command uses: rich bars on a terminal, plain timestamped lines in a
log (nohup, cluster queues, CI), nothing with ``--quiet``."""

from __future__ import annotations

import datetime
import math
import threading
import time

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, Task, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)
from rich.text import Text

LINE_INTERVAL_S = 30.0
"""Seconds between two progress lines in a log: a stalled run shows within half a minute, and an hour's run
writes about 120 lines, which a person still reads. A task that starts or finishes is always written."""


def progress_bar(console: Console, label_width: int = 8, *, quiet: bool = False,
                 interval_s: float = LINE_INTERVAL_S) -> Progress:
    """Label, bar, done/total, time elapsed and the estimate of time remaining, on ``console``; plain lines
    (``LogProgress``) when ``console`` is not a terminal; no output at all when ``quiet``."""
    if quiet:
        return Progress(console=console, disable=True)
    if not console.is_terminal:
        return LogProgress(console, interval_s)
    return Progress(
        TextColumn(f"{{task.description:<{label_width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    minutes, second = divmod(int(round(seconds)), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}"


def _complete(task: Task) -> bool:
    """Done counting; rich's own ``finished`` stays False for a task added already complete (a resumed stage)."""
    return task.total is not None and task.completed >= task.total


class LogProgress(Progress):
    """Progress for a log file or a pipe, where bars would be drawn once at the end: one line per change
    worth telling, ``2026-01-31 12:00:05 guide 3/8 eta 0:04:10 | passes 360/800 eta 0:03:55``, at most
    every ``interval_s`` seconds (the line names every unfinished task: stage, frame, pass) and whenever a
    task starts or finishes."""

    def __init__(self, console: Console, interval_s: float = LINE_INTERVAL_S) -> None:
        super().__init__(console=console, disable=True)  # rich keeps the counts and speeds; we print
        self.interval_s = interval_s
        self._said_at = -math.inf
        self._finished: set[TaskID] = set()
        self._started: dict[TaskID, tuple[float, float]] = {}  # (time, completed) when the task was added
        self._say_lock = threading.Lock()

    def add_task(self, description: str, *args, **kwargs) -> TaskID:  # noqa: ANN002, ANN003  (rich's signature)
        task_id = super().add_task(description, *args, **kwargs)
        self._started[task_id] = (time.monotonic(), self._tasks[task_id].completed)
        if _complete(self._tasks[task_id]):
            self._finished.add(task_id)  # resumed: nothing to count, said once as already done
        self._tell(task_id, always=True)
        return task_id

    def update(self, task_id: TaskID, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().update(task_id, *args, **kwargs)
        self._tell(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._tell(task_id)

    def _tell(self, task_id: TaskID, always: bool = False) -> None:
        with self._say_lock:
            finished_now = _complete(self._tasks[task_id]) and task_id not in self._finished
            if finished_now:
                self._finished.add(task_id)
            now = time.monotonic()
            if not (always or finished_now or now - self._said_at >= self.interval_s):
                return
            self._said_at = now
            parts = []
            for task in self.tasks:
                count = f"{int(task.completed)}/{int(task.total)}" if task.total else f"{int(task.completed)}"
                if task.id == task_id and finished_now:
                    parts.append(f"{task.description.strip()} {count} finished in {_clock(task.elapsed)}")
                elif not _complete(task):
                    parts.append(f"{task.description.strip()} {count} eta {_clock(self._remaining(task, now))}")
            if not parts:  # a task added already complete (a resumed stage): said once, as done
                task = self._tasks[task_id]
                parts.append(f"{task.description.strip()} {int(task.completed)}/{int(task.total or 0)} already done")
            stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
            self.console.print(Text(f"{stamp} " + " | ".join(parts)), highlight=False, soft_wrap=True)

    def _remaining(self, task: Task, now: float) -> float | None:
        """Seconds left at the mean pace since the task was added (rich's own estimate forgets steps older
        than 30 s, so a frame that takes minutes would never get one); None before the first step."""
        since, completed = self._started[task.id]
        if task.total is None or task.completed <= completed:
            return None
        return (now - since) / (task.completed - completed) * (task.total - task.completed)
