"""Where a clip's frame edits run: in this process (``local``) or on a pool of Ray actors (``ray``).

Once the target flows are aligned, the frames of a clip are edits of one source that share its prepared
state (the DDIM inversion); a frame plan (``mtransfer.app.plan``) may start some from others' results. An
executor takes

- a *worker factory*: a picklable callable that loads the models once and returns a *worker*, a
  callable ``worker(data, shared, progress, parents) -> result`` that edits one job's frames, ``parents``
  being the results of the jobs it waits for;
- the *shared* state every frame needs (computed once by the driver);
- the *jobs* ``(index, data, after)``, ``after`` naming the jobs whose results this one starts from, each
  listed before the jobs that wait for it;

and yields a :class:`Finished` per job as jobs finish (in any order). A job is handed out only once every
job it waits for has been yielded and the driver has taken it back (written it), so every job that is
ready runs at once. Executors never write files: the driver alone writes each frame (atomically) and the
manifest, so workers need no shared storage and a worker that dies cannot leave a half-written frame behind.

The Ray executor ships the shared state through the object store once (``ray.put``) and each actor
fetches it once; per-job data travels as task arguments (through the object store too when large), and a
parent's result goes from the object store straight to the jobs that wait for it.
A worker that dies (killed process, out of memory, node lost) loses at most the frame it was on: that
frame goes back to the queue for another worker, at most ``max_retries`` times, then the run stops with
a one-line error naming the frame. Ray restarts the dead actor, which reloads its models. Errors raised
by the edit itself (bad input, a missing model) are not retried: they are the user's to fix.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol

from mtransfer.app.settings import ExecutionSettings
from mtransfer.errors import DeviceError, MtransferError, UsageError

CPU_WORKERS = 2  # actors on a cluster without GPUs (each edits with the cores Ray gives it)
RAY_INSTALL_HINT = "--executor ray needs Ray, which is not installed: pip install 'mtransfer[ray]'"

Progress = Callable[[], None]


class FrameWorker(Protocol):
    """Edits one job: ``data`` is the job's own input, ``shared`` what every job shares, ``parents`` the
    results of the jobs it waits for (``Job.after``, in that order)."""

    def __call__(self, data: Any, shared: Any, progress: Progress | None, parents: tuple[Any, ...]) -> Any: ...


WorkerFactory = Callable[[], FrameWorker]
"""Loads the models once and returns a worker; must be picklable for Ray (e.g. a dataclass of settings)."""

BusyCallback = Callable[[int, int], None]
"""Called with ``(busy workers, workers)`` whenever either changes."""


@dataclass(frozen=True)
class Job:
    """One unit of work: ``index`` names it (unique), ``after`` the jobs whose results it needs."""

    index: int
    data: Any
    after: tuple[int, ...] = ()


@dataclass(frozen=True)
class Finished:
    """One frame's result and who made it: ``worker`` names it (``local``, ``ray-3``), ``host`` its machine."""

    index: int
    result: Any
    worker: str
    host: str
    pid: int
    seconds: float  # the worker's time on the frame (the first frame of a worker includes loading its models)
    waited: float  # the driver's time from handing the frame out to holding its result
    attempts: int = 1

    def record(self) -> dict[str, Any]:
        """What the manifest keeps about where and how long the frame was made; ``dispatch_s`` is the time
        lost between the driver and the worker (scheduling, shipping inputs and the result)."""
        return {"worker": self.worker, "host": self.host, "pid": self.pid, "worker_seconds": round(self.seconds, 3),
                "dispatch_s": round(max(self.waited - self.seconds, 0.0), 3), "attempts": self.attempts}


def make_executor(settings: ExecutionSettings, *, use_gpus: bool = True) -> LocalExecutor | RayExecutor:
    """The executor ``settings`` ask for; Ray's absence is reported here, before any work."""
    if settings.executor == "local":
        return LocalExecutor()
    return RayExecutor(settings, use_gpus=use_gpus)


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_INSTALL_HINT) from None
    return ray


class LocalExecutor:
    """Every job in this process, in the order given, with one worker (models loaded once, on the first
    job); a result is kept only while a job still waits for it."""

    def run(
        self, factory: WorkerFactory, shared: Any, jobs: Iterable[Job], *,
        progress: Progress | None = None, on_busy: BusyCallback | None = None,
    ) -> Iterator[Finished]:
        worker = None
        host, pid = socket.gethostname(), os.getpid()
        jobs = list(jobs)
        waiting_for = _children_count(jobs)
        results: dict[int, Any] = {}
        for job in jobs:
            missing = [parent for parent in job.after if parent not in results]
            if missing:
                raise ValueError(f"job {job.index} waits for job {missing[0]}, which does not come before it")
            if on_busy:
                on_busy(1, 1)
            started = time.perf_counter()
            if worker is None:
                worker = factory()
            result = worker(job.data, shared, progress, tuple(results[parent] for parent in job.after))
            for parent in job.after:
                waiting_for[parent] -= 1
                if not waiting_for[parent]:
                    del results[parent]
            if on_busy:
                on_busy(0, 1)
            seconds = time.perf_counter() - started
            if waiting_for.get(job.index):
                results[job.index] = result
            yield Finished(job.index, result, "local", host, pid, seconds, seconds)


class _RayActor:
    """The body of one Ray actor: builds its worker on the first frame and keeps the shared state it fetched."""

    def __init__(self, factory: WorkerFactory) -> None:
        self.factory = factory
        self.worker: FrameWorker | None = None
        self.shared: dict[str, Any] = {}

    def edit(self, data: Any, shared_ref: list[Any], *parents: tuple[Any, str, int, float]) -> tuple[Any, str, int, float]:
        """Edit one job; ``shared_ref`` is ``[ObjectRef]`` (wrapped so Ray does not fetch it per call);
        ``parents`` are the waited-for jobs' returns, which Ray resolves from their object references."""
        import ray

        started = time.perf_counter()
        if self.worker is None:
            self.worker = self.factory()
        key = shared_ref[0].hex()
        if key not in self.shared:
            self.shared = {key: ray.get(shared_ref[0])}  # one run's state at a time
        result = self.worker(data, self.shared[key], None, tuple(parent[0] for parent in parents))
        return result, socket.gethostname(), os.getpid(), time.perf_counter() - started


@dataclass
class _Slot:
    """One actor of the pool and the frame it is on."""

    number: int
    actor: Any
    job: Job | None = None
    restarting: bool = False  # its actor died and Ray is restarting it: no work until it answers again


class RayExecutor:
    """Frames spread over a pool of Ray actors, each holding its own models (one per GPU by default).

    Joins the cluster at ``settings.address``, or starts a local Ray instance over this machine when no
    Ray is running in this process; a Ray this executor started is shut down when the run ends (also on
    Ctrl-C), one it found running is left as it was.
    """

    def __init__(self, settings: ExecutionSettings, *, use_gpus: bool = True) -> None:
        self.settings = settings
        self.use_gpus = use_gpus
        self.ray = import_ray()
        self.slots: list[_Slot] = []
        self.started_ray = False  # True when this executor started Ray (and must shut it down)

    def connect(self) -> None:
        """Join or start Ray now, so that an unreachable cluster is a one-line error before any work (the
        guide stage calls this before it prepares the source); ``run`` connects itself otherwise."""
        ray = self.ray
        if ray.is_initialized():
            return
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                   "logging_level": logging.ERROR}
        try:
            ray.init(address=self.settings.address or None, **options)
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
            raise DeviceError(
                f"execution.address {self.settings.address!r}: cannot reach a Ray cluster ({_first_line(exc)})"
            ) from None
        self.started_ray = True

    def _start_actors(self, factory: WorkerFactory) -> None:
        ray = self.ray
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0.0) if self.use_gpus else 0.0
        per_worker = self.settings.gpus_per_worker if gpus else 0.0
        count = self.settings.workers
        if not count:
            count = int(gpus // per_worker) if gpus else min(CPU_WORKERS, max(1, int(resources.get("CPU", 1))))
        if count < 1:
            raise DeviceError(
                f"execution.gpus_per_worker = {per_worker}: more than the cluster's {gpus:g} GPUs; lower it"
            )
        remote = ray.remote(_RayActor).options(num_cpus=1, num_gpus=per_worker, max_restarts=-1,
                                               max_task_retries=0)
        self.slots = [_Slot(number, remote.remote(factory)) for number in range(count)]

    def run(
        self, factory: WorkerFactory, shared: Any, jobs: Iterable[Job], *,
        progress: Progress | None = None, on_busy: BusyCallback | None = None,
    ) -> Iterator[Finished]:
        """Yield each job as some actor finishes it; a job waiting for others is handed out once they are
        all yielded (and written). ``progress`` (per pass) is not reported from actors."""
        ray = self.ray
        jobs = list(jobs)
        if not jobs:
            return
        self.connect()
        queue = deque(job for job in jobs if not job.after)
        blocked = {job.index: set(job.after) for job in jobs if job.after}
        children: dict[int, list[Job]] = {}
        for job in jobs:
            for parent in job.after:
                children.setdefault(parent, []).append(job)
        waiting_for = _children_count(jobs)
        results: dict[int, Any] = {}  # object references of finished jobs that others still wait for
        try:
            self._start_actors(factory)
            shared_ref = [ray.put(shared)]
            attempts: dict[int, int] = {}
            failed_on: dict[int, set[int]] = {}
            running: dict[Any, _Slot] = {}
            handed_out: dict[int, float] = {}
            while queue or running:
                for slot in self.slots:
                    free = slot.job is None and not slot.restarting
                    job = _next_job(queue, slot.number, failed_on, len(self.slots)) if free else None
                    if job is not None:
                        slot.job = job
                        attempts[job.index] = attempts.get(job.index, 0) + 1
                        parents = [results[parent] for parent in job.after]
                        running[slot.actor.edit.remote(job.data, shared_ref, *parents)] = slot
                        handed_out[job.index] = time.perf_counter()
                if on_busy:
                    on_busy(len(running), len(self.slots))
                [ref], _ = ray.wait(list(running), num_returns=1)
                slot = running.pop(ref)
                if slot.restarting:  # the answer of a restarted actor (or its death again: ask once more)
                    try:
                        ray.get(ref)
                        slot.restarting = False
                    except _worker_faults(ray):
                        running[slot.actor.__ray_ready__.remote()] = slot
                    continue
                job, slot.job = slot.job, None
                try:
                    result, host, pid, seconds = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the edit itself raised: not a worker fault
                    raise exc.cause if isinstance(exc.cause, MtransferError) else exc from None
                except _worker_faults(ray) as exc:
                    if getattr(exc, "actor_init_failed", False):
                        raise DeviceError(f"Ray worker {slot.number} could not start: {_first_line(exc)}") from None
                    if attempts[job.index] > self.settings.max_retries:
                        raise DeviceError(
                            f"frame {job.index}: its Ray worker died {attempts[job.index]} times (last: "
                            f"{type(exc).__name__}); the finished frames are kept, run the command again to resume"
                        ) from None
                    failed_on.setdefault(job.index, set()).add(slot.number)
                    queue.appendleft(job)
                    # a job handed to the actor while Ray restarts it would fail too: wait for it to answer
                    slot.restarting = True
                    running[slot.actor.__ray_ready__.remote()] = slot
                    continue
                waited = time.perf_counter() - handed_out[job.index]
                yield Finished(job.index, result, f"ray-{slot.number}", host, pid, seconds, waited, attempts[job.index])
                # the driver has written this job: release what waits for it, forget what nothing waits for
                if waiting_for.get(job.index):
                    results[job.index] = ref
                for child in children.get(job.index, ()):
                    blocked[child.index].discard(job.index)
                    if not blocked[child.index]:
                        queue.append(child)
                for parent in job.after:
                    waiting_for[parent] -= 1
                    if not waiting_for[parent]:
                        del results[parent]
            if any(blocked.values()):
                stuck = next(index for index, parents in blocked.items() if parents)
                raise ValueError(f"job {stuck} waits for jobs that never ran: {sorted(blocked[stuck])}")
        finally:
            for slot in self.slots:
                ray.kill(slot.actor, no_restart=True)
            self.slots = []
            if self.started_ray:
                ray.shutdown()
                self.started_ray = False


def _children_count(jobs: list[Job]) -> dict[int, int]:
    """How many jobs wait for each job's result (so it is dropped once the last of them has finished)."""
    count: dict[int, int] = {}
    for job in jobs:
        for parent in job.after:
            count[parent] = count.get(parent, 0) + 1
    return count


def _worker_faults(ray: Any) -> tuple[type[BaseException], ...]:
    """Ray's errors for a worker lost under a frame (died, killed for memory, node gone, result lost)."""
    errors = ray.exceptions
    return (errors.RayActorError, errors.WorkerCrashedError, errors.OutOfMemoryError, errors.NodeDiedError,
            errors.ObjectLostError)


def _next_job(queue: deque[Job], worker: int, failed_on: dict[int, set[int]], workers: int) -> Job | None:
    """The first queued job this worker has not failed on yet (or that every worker has failed on)."""
    for position, job in enumerate(queue):
        tried = failed_on.get(job.index, set())
        if worker not in tried or len(tried) >= workers:
            del queue[position]
            return job
    return None


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
