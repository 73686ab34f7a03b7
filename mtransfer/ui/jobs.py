"""One long job at a time (the device is shared): a worker thread, its progress, and cancelling it.

The page starts a job and polls it; the job's work calls ``tick()`` once per step, which counts, and
raises ``Interrupted`` once the page asked to cancel, so the work stops at the next step. Work that
reports through a rich progress bar (the video pipeline) is given a ``JobProgress`` instead, whose
every advance is such a step. ``show()`` hands the page a picture of the work so far (an edit's
one-step estimate).
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from rich.console import Console
from rich.progress import Progress, TaskID

from mtransfer.errors import DeviceError, Interrupted


class Busy(DeviceError):
    """Another job holds the device (a device problem: it is not available now)."""


@dataclass
class Job:
    """A running or finished job: ``phase`` with ``done``/``total`` steps, then ``result`` or ``error``;
    ``picture`` is the latest ``(step, image)`` the work showed; ``detail`` replaces the phase's text."""

    name: str
    phase: str = "starting"
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.perf_counter)
    phase_started: float = field(default_factory=time.perf_counter)
    result: Any = None
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    picture: tuple[int, Any] | None = None
    detail: Callable[[], str] | None = None

    def begin(self, phase: str, total: int) -> None:
        self.phase, self.done, self.total, self.phase_started = phase, 0, total, time.perf_counter()
        self.check_cancel()

    def tick(self) -> None:
        self.done += 1
        self.check_cancel()

    def show(self, step: int, image: Any) -> None:
        self.picture = (step, image)

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Interrupted)

    def check_cancel(self) -> None:
        if self.cancel_requested.is_set():
            raise Interrupted(f"{self.name} cancelled in the page; files already written are kept")

    def status(self) -> str:
        """``guide 3/8 · 4.1 s · about 6.0 s left`` (the estimate from this phase's pace so far)."""
        elapsed = time.perf_counter() - self.started
        if self.detail is not None:
            return f"{self.name}: {self.detail()} · {elapsed:.1f} s"
        text = f"{self.name}: {self.phase}"
        if self.total:
            text += f" {self.done}/{self.total}"
        text += f" · {elapsed:.1f} s"
        if self.total and self.done:
            pace = (time.perf_counter() - self.phase_started) / self.done
            text += f" · about {pace * (self.total - self.done):.1f} s left in this phase"
        return text


class JobQueue:
    """Runs at most one job at a time in a worker thread; a second one is refused while the first runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current: Job | None = None

    def submit(self, name: str, work: Callable[[Job], Any]) -> Job:
        with self._lock:
            if self.current is not None and not self.current.finished.is_set():
                raise Busy(f"'{self.current.name}' is still running; wait for it or cancel it")
            job = self.current = Job(name)

        def run() -> None:
            try:
                job.result = work(job)
            except BaseException as exc:  # the page shows it; the thread must not die silently
                job.error = exc
            finally:
                job.finished.set()

        threading.Thread(target=run, name=f"mtransfer-ui-{name}", daemon=True).start()
        return job

    def cancel(self, name: str | None = None) -> str:
        """Ask the running job (only if called ``name``, when given: each tab cancels its own) to stop at
        its next step."""
        job = self.current
        if job is None or job.finished.is_set() or name not in (None, job.name):
            return f"no {name or 'job'} is running"
        job.cancel_requested.set()
        return f"cancelling '{job.name}' at its next step"


class JobProgress(Progress):
    """A rich progress bar kept off the terminal whose every advance is a step of ``job`` (so cancelling
    stops the work there) and whose unfinished tasks are the job's status: ``guide 1/4 · passes 5/12``."""

    def __init__(self, job: Job) -> None:
        super().__init__(console=Console(file=io.StringIO(), width=120), auto_refresh=False)
        self.job = job
        job.detail = self.summary

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        task = self._tasks[task_id]
        if not task.description.startswith(" "):  # a stage, not one of its indented sub-tasks: the bar
            self.job.phase, self.job.done, self.job.total = task.description, int(task.completed), int(task.total or 0)
        self.job.check_cancel()

    def summary(self) -> str:
        tasks = [task for task in self.tasks if task.total]
        shown = [task for task in tasks if not task.finished] or tasks[-1:]
        parts = []
        for task in shown:
            text = f"{task.description.strip()} {int(task.completed)}/{int(task.total)}"
            if not task.finished and task.time_remaining is not None:
                text += f" (about {task.time_remaining:.0f} s left)"
            parts.append(text)
        return " · ".join(parts) or "starting"
