"""One long job at a time (the device is shared): a worker thread, its progress, and cancelling it.

The page starts a job and polls it; the job's work calls ``tick()`` once per step, which counts, and
raises ``Interrupted`` once the page asked to cancel, so the work stops at the next step.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from mtransfer.errors import Interrupted, MtransferError


class Busy(MtransferError):
    """Another job holds the device."""


@dataclass
class Job:
    """A running or finished job: ``phase`` with ``done``/``total`` steps, then ``result`` or ``error``."""

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

    def begin(self, phase: str, total: int) -> None:
        self.phase, self.done, self.total, self.phase_started = phase, 0, total, time.perf_counter()
        self.check_cancel()

    def tick(self) -> None:
        self.done += 1
        self.check_cancel()

    def check_cancel(self) -> None:
        if self.cancel_requested.is_set():
            raise Interrupted(f"{self.name} cancelled in the page; files already written are kept")

    def status(self) -> str:
        """``guide 3/8 · 4.1 s · about 6.0 s left`` (the estimate from this phase's pace so far)."""
        elapsed = time.perf_counter() - self.started
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

    def cancel(self) -> str:
        job = self.current
        if job is None or job.finished.is_set():
            return "nothing is running"
        job.cancel_requested.set()
        return f"cancelling '{job.name}' at its next step"
