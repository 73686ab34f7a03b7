"""Jobs that belong to the server, not to a browser tab: one runs at a time (the device is shared) in a
worker thread, and the queue keeps a history of them for any page that opens later.

A page starts a job and may follow it, but closing or reloading the page leaves it running; the Jobs
tab of any page shows the running job's progress in words, a Cancel, and the finished jobs' results.
The job's work calls ``tick()`` once per step, which counts, and stops once a cancel was asked for, so
the work stops at the next step. Work that reports through a rich progress bar (the video pipeline) is
given a ``JobProgress`` instead, whose every advance is such a step: it stops as Ctrl-C stops the CLI
(``KeyboardInterrupt``), so the runner records what is kept exactly as it does for the CLI. ``show()``
hands the page a picture of the work so far (an edit's one-step estimate). ``shutdown`` stops the
running job and waits for it, for the server's Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import Progress, TaskID

from mtransfer.errors import DeviceError, Interrupted

HISTORY = 30
"""Finished jobs the queue remembers (the newest), for pages opened later."""

STAGES = {
    "decode": "reading the clip's frames", "flow": "measuring the clip's motion", "render": "drawing the flows",
    "align": "laying the motion onto the image", "guide": "editing the frames", "evaluate": "judging the edits",
    "encode": "writing the videos",
}
"""The pipeline's stages (the first word of a progress task) in words."""

UNITS = {"encode": "file"}
"""What a stage counts, where it is not frames."""

SUB_TASKS = {"passes": "pass", "source": "preparing the image, step"}
"""The pipeline's indented sub-tasks: the word before their count."""

PHASES = {"loading models": "loading the models", "guide": "guiding", "writing": "writing the results"}
"""An edit's phases in words; any other phase prepares the source (its noise's name)."""


def say(text: str) -> None:
    """One timestamped line on the server's terminal: what the web app's jobs and problems leave there."""
    print(f"{time.strftime('%H:%M:%S')} web app: {text}", file=sys.stderr, flush=True)


class Busy(DeviceError):
    """Another job holds the device (a device problem: it is not available now)."""


@dataclass(frozen=True)
class Outputs:
    """What a finished job shows in any page: its summary line and its files (None where it made none)."""

    summary: str
    folder: Path
    picture: Path | None = None
    video: Path | None = None
    report: Path | None = None


@dataclass
class Job:
    """A running or finished job: ``phase`` with ``done``/``total`` steps, then ``result`` or ``error``
    (and ``outputs``, set by the work, for the page); ``picture`` is the latest ``(step, image)`` the work
    showed; ``detail`` replaces the phase's words; ``title`` names it in words, ``folder`` is where it writes;
    ``warning`` is said beside its progress and its result (a target the model cannot reach)."""

    name: str
    title: str = ""
    folder: Path | None = None
    number: int = 0
    phase: str = "starting"
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.perf_counter)
    phase_started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    result: Any = None
    error: BaseException | None = None
    outputs: Outputs | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    picture: tuple[int, Any] | None = None
    detail: Callable[[], str] | None = None
    warning: str | None = None

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

    @property
    def running(self) -> bool:
        return not self.finished.is_set()

    def check_cancel(self) -> None:
        if self.cancel_requested.is_set():
            raise Interrupted(f"{self.name} cancelled; files already written are kept")

    @property
    def seconds(self) -> float:
        return (self.ended if self.ended is not None else time.perf_counter()) - self.started

    def state(self) -> str:
        """``running``, ``finished``, ``cancelled`` or ``failed``."""
        if self.running:
            return "cancelling" if self.cancel_requested.is_set() else "running"
        return "cancelled" if self.cancelled else "failed" if self.error is not None else "finished"

    def status(self) -> str:
        """The progress in words: ``guiding: pass 80 of 100 · 4.1 s · about 6 s left in this phase``."""
        if self.detail is not None:
            return f"{self.detail()} · {self.seconds:.0f} s"
        phase = PHASES.get(self.phase, f"preparing the image ({self.phase})" if self.total else self.phase)
        text = phase
        if self.total:
            unit = "pass" if self.phase == "guide" else "step"
            text += f": {unit} {self.done} of {self.total}"
        text += f" · {self.seconds:.0f} s"
        if self.total and self.done:
            pace = (time.perf_counter() - self.phase_started) / self.done
            text += f" · about {pace * (self.total - self.done):.0f} s left in this phase"
        return text


class JobQueue:
    """Runs at most one job at a time in a worker thread; a second one is refused while the first runs.
    Remembers the last ``HISTORY`` jobs; after ``shutdown`` it starts none."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current: Job | None = None
        self.history: list[Job] = []
        self.closed = False

    def submit(self, name: str, work: Callable[[Job], Any], title: str = "", folder: Path | None = None) -> Job:
        with self._lock:
            if self.closed:
                raise Busy("the server is stopping; no new job starts")
            if self.current is not None and self.current.running:
                raise Busy(f"'{self.current.title or self.current.name}' is still running; wait for it or cancel "
                           "it (Jobs tab)")
            number = self.history[-1].number + 1 if self.history else 1
            job = self.current = Job(name, title or name, folder, number)
            self.history = [*self.history, job][-HISTORY:]

        def run() -> None:
            say(f"job #{job.number} {job.title} started" + (f" in {folder}" if folder else ""))
            try:
                job.result = work(job)
            except KeyboardInterrupt:  # the work stopped as the CLI stops on Ctrl-C, without saying more
                job.error = Interrupted(f"{job.title} stopped; files already written are kept")
            except BaseException as exc:  # the page shows it; the thread must not die silently
                job.error = exc
            finally:
                job.ended = time.perf_counter()
                job.finished.set()
            words = job.outputs.summary if job.outputs else str(job.error) if job.error else "done"
            say(f"job #{job.number} {job.state()} after {job.seconds:.0f} s: {words}")

        threading.Thread(target=run, name=f"mtransfer-ui-{name}", daemon=True).start()
        return job

    def jobs(self) -> list[Job]:
        """Every remembered job, the newest first."""
        return self.history[::-1]

    def cancel(self, name: str | None = None) -> str:
        """Ask the running job (only if called ``name``, when given: each tab cancels its own) to stop at
        its next step."""
        job = self.current
        if job is None or not job.running or name not in (None, job.name):
            return f"no {name or 'job'} is running"
        job.cancel_requested.set()
        return f"cancelling '{job.title}' at its next step"

    def shutdown(self, timeout: float) -> Job | None:
        """Start no more jobs, stop the running one at its next step and wait up to ``timeout`` seconds
        for it; returns that job (None when none ran)."""
        with self._lock:
            self.closed = True
            job = self.current
        if job is None or not job.running:
            return None
        job.cancel_requested.set()
        job.finished.wait(timeout)
        return job


class JobProgress(Progress):
    """A rich progress bar kept off the terminal whose every advance is a step of ``job`` (a cancel stops
    the work there, as Ctrl-C does in the CLI) and whose unfinished tasks are the job's status in words:
    ``editing the frames: frame 6 of 8, pass 80 of 100 (about 20 s left)``."""

    def __init__(self, job: Job) -> None:
        super().__init__(console=Console(file=io.StringIO(), width=120), auto_refresh=False)
        self.job = job
        job.detail = self.summary

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        task = self._tasks[task_id]
        if not task.description.startswith(" "):  # a stage, not one of its indented sub-tasks: the bar
            self.job.phase, self.job.done, self.job.total = task.description, int(task.completed), int(task.total or 0)
        if self.job.cancel_requested.is_set():
            raise KeyboardInterrupt  # the runner's interrupt note then records what is kept, as for the CLI

    def summary(self) -> str:
        tasks = [task for task in self.tasks if task.total]
        stages = [task for task in tasks if not task.description.startswith(" ")]
        if not stages:
            return "starting"
        stage = next((task for task in stages if not task.finished), stages[-1])
        name = stage.description.split()[0]
        unit = UNITS.get(name, "frame")
        parts = [f"{STAGES.get(name, name)}: {unit} {int(stage.completed)} of {int(stage.total)}"]
        subs = [task for task in tasks[tasks.index(stage) + 1:]
                if task.description.startswith(" ") and not task.finished]
        parts += [f"{SUB_TASKS.get(task.description.split()[0], task.description.strip())} "
                  f"{int(task.completed)} of {int(task.total)}" for task in subs]
        text = ", ".join(parts)
        if stage.finished:
            return text
        left = next((task.time_remaining for task in [*subs, stage] if task.time_remaining is not None), None)
        return text + (f" (about {left:.0f} s left)" if left is not None else "")
