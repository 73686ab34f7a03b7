"""The executors on a toy worker: same results locally and on Ray, shared state shipped once, a killed
worker's frame retried elsewhere, bounded retries, user errors not retried, and the missing-Ray message.

One local Ray instance serves the whole module (2 CPUs asked for; no test depends on the count).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtransfer.app.executors import Job, LocalExecutor, RayExecutor, make_executor
from mtransfer.app.settings import ExecutionSettings
from mtransfer.errors import DeviceError, MtransferError

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the toy workers live in this test module


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@dataclass(frozen=True)
class ToyFactory:
    """A worker that 'loads a model' (counted in ``log``) and scales the shared list by the frame's data
    (plain lists, so that the actors start without importing torch).

    ``kill_frame``: on the first attempt at that frame the worker kills its own process in the middle of it
    (after the work, before returning), as the OOM killer or a lost node would. ``fail_frame`` raises a
    user error there instead. ``log`` is a folder where each load and each frame start leaves a file.
    """

    log: str
    kill_frame: int = -1
    fail_frame: int = -1
    always_kill: bool = False
    delay: float = 0.0

    def __call__(self):
        Path(self.log, f"load-{os.getpid()}").touch()
        return self.edit

    def edit(self, data, shared, progress, parents):
        Path(self.log, f"frame-{data}-{os.getpid()}-{time.monotonic_ns()}").touch()
        time.sleep(self.delay)
        result = [value * data + position for position, value in enumerate(shared)]
        for parent in parents:  # a job that waits for others builds on their results
            result = [mine + theirs for mine, theirs in zip(result, parent)]
        Path(self.log, f"end-{data}-{time.monotonic_ns()}").touch()
        if data == self.fail_frame:
            raise MtransferError(f"frame {data}: bad target flow")
        first_attempt = len(list(Path(self.log).glob(f"frame-{data}-*"))) == 1
        if data == self.kill_frame and (first_attempt or self.always_kill):
            os.kill(os.getpid(), signal.SIGKILL)
        return result


def _jobs(count):
    return [Job(index, index) for index in range(count)]


def _ray(**settings):
    return RayExecutor(ExecutionSettings(executor="ray", **settings), use_gpus=False)


def test_ray_gives_the_local_results_frame_by_frame(tmp_path):
    shared = [0.0, 0.25, 0.5, 1.0]
    local = {done.index: done.result for done in LocalExecutor().run(ToyFactory(str(tmp_path)), shared, _jobs(6))}
    busy = []
    finished = list(_ray(workers=2).run(ToyFactory(str(tmp_path)), shared, _jobs(6),
                                        on_busy=lambda b, w: busy.append((b, w))))
    assert sorted(done.index for done in finished) == list(range(6))
    for done in finished:
        assert done.result == local[done.index]
        assert done.worker in ("ray-0", "ray-1") and done.attempts == 1 and done.pid != os.getpid()
    assert max(b for b, _ in busy) == 2 and {w for _, w in busy} == {2}
    loads = sorted(p.name for p in tmp_path.glob("load-*"))
    assert len(loads) == 1 + 2  # the local worker once, each actor once, not once per frame


def test_a_killed_worker_loses_only_its_frame_which_another_worker_redoes(tmp_path):
    finished = list(_ray(workers=2).run(ToyFactory(str(tmp_path), kill_frame=2), [1.0] * 4, _jobs(5)))
    by_index = {done.index: done for done in finished}
    assert sorted(by_index) == list(range(5))
    assert by_index[2].attempts == 2
    first, second = sorted(tmp_path.glob("frame-2-*"), key=lambda p: int(p.name.split("-")[-1]))
    assert first.name.split("-")[2] != second.name.split("-")[2]  # another process made it
    assert all(done.attempts == 1 for index, done in by_index.items() if index != 2)


def test_a_frame_that_keeps_killing_its_worker_stops_the_run_with_its_number(tmp_path):
    executor = _ray(workers=2, max_retries=1)
    finished = []
    with pytest.raises(DeviceError, match=r"^frame 1: its Ray worker died 2 times"):
        for done in executor.run(ToyFactory(str(tmp_path), kill_frame=1, always_kill=True), [1.0] * 4, _jobs(2)):
            finished.append(done.index)
    assert len(list(tmp_path.glob("frame-1-*"))) == 2  # tried once, retried once, then stopped


def test_a_user_error_inside_a_worker_is_raised_as_is_and_not_retried(tmp_path):
    with pytest.raises(MtransferError, match=r"^frame 3: bad target flow$"):
        list(_ray(workers=2).run(ToyFactory(str(tmp_path), fail_frame=3), [1.0] * 4, _jobs(4)))
    assert len(list(tmp_path.glob("frame-3-*"))) == 1


def test_stopping_early_releases_the_actors(tmp_path):
    executor = _ray(workers=2)
    run = executor.run(ToyFactory(str(tmp_path), delay=0.2), [1.0] * 4, _jobs(6))
    next(run)
    assert len(executor.slots) == 2
    total = ray.cluster_resources().get("CPU", 0)
    assert ray.available_resources().get("CPU", 0) < total  # the actors hold some while they run
    run.close()  # what Ctrl-C in the driver's loop does: the generator's cleanup runs
    assert executor.slots == []
    deadline = time.monotonic() + 30  # Ray frees a killed actor's resources asynchronously
    while ray.available_resources().get("CPU", 0) < total and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == total  # every actor's CPU is free again


GRAPH = [Job(1, 1), Job(5, 5), Job(2, 2, after=(1,)), Job(3, 3, after=(2,)), Job(6, 6, after=(5,))]
"""Two keys (1, 5) and warm chains hanging from them: 1 → 2 → 3 and 5 → 6."""


def _times(log: Path, kind: str) -> dict[int, int]:
    """When each job's ``kind`` (``frame``: start, ``end``) was logged, by job (first attempt)."""
    times: dict[int, int] = {}
    for path in log.glob(f"{kind}-*"):
        parts = path.name.split("-")
        times.setdefault(int(parts[1]), int(parts[-1]))
    return times


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_job_starts_only_after_the_jobs_it_waits_for_are_written_and_builds_on_their_results(tmp_path, executor):
    """The rule: a job is handed out after each job in its ``after`` was yielded and taken back by the
    driver (written), and it receives their results; keys (no ``after``) start at once on Ray."""
    shared = [1.0, 2.0]
    written: dict[int, int] = {}
    results = {}
    runner = LocalExecutor() if executor == "local" else _ray(workers=2)
    busy: list[tuple[int, int]] = []
    for done in runner.run(ToyFactory(str(tmp_path)), shared, GRAPH, on_busy=lambda b, w: busy.append((b, w))):
        results[done.index] = done.result
        written[done.index] = time.monotonic_ns()  # the driver has written the job's frames by now
    own = {index: [value * index + position for position, value in enumerate(shared)] for index in (1, 2, 3, 5, 6)}
    expected = {1: own[1], 5: own[5]}
    for job in GRAPH[2:]:
        expected[job.index] = [a + b for a, b in zip(own[job.index], expected[job.after[0]])]
    assert results == expected
    started = _times(tmp_path, "frame")
    for job in GRAPH:
        for parent in job.after:
            assert started[job.index] > written[parent], f"job {job.index} started before job {parent} was written"
    if executor == "ray":  # both keys are handed out before anything comes back
        assert busy[0] == (2, 2), "the two keys were not handed out at once"


def test_a_job_waiting_for_a_job_that_never_comes_is_refused(tmp_path):
    with pytest.raises(ValueError, match="job 2 waits for job 9"):
        list(LocalExecutor().run(ToyFactory(str(tmp_path)), [1.0], [Job(2, 2, after=(9,))]))
    with pytest.raises(ValueError, match=r"job 2 waits for jobs that never ran: \[9\]"):
        list(_ray(workers=1).run(ToyFactory(str(tmp_path)), [1.0], [Job(1, 1), Job(2, 2, after=(9,))]))


def test_execution_settings_are_checked():
    with pytest.raises(MtransferError, match=r"^execution.executor: must be one of local, ray, got 'dask'"):
        ExecutionSettings(executor="dask")
    with pytest.raises(MtransferError, match=r"^execution.gpus_per_worker"):
        ExecutionSettings(gpus_per_worker=0)
    assert isinstance(make_executor(ExecutionSettings()), LocalExecutor)


def test_without_ray_the_ray_executor_says_how_to_install_it(tmp_path):
    blocker = tmp_path / "ray.py"  # a module that fails to import, shadowing the installed package
    blocker.write_text("raise ImportError('No module named ray')\n")
    code = (
        "from mtransfer.app.executors import make_executor\n"
        "from mtransfer.app.settings import ExecutionSettings\n"
        "from mtransfer.errors import UsageError\n"
        "try:\n    make_executor(ExecutionSettings(executor='ray'))\n"
        "except UsageError as exc:\n    print(exc, exc.exit_code)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    message, _, code = out.stdout.strip().rpartition(" ")
    assert code == "2" and "Ray" in message and "pip install 'mtransfer[ray]'" in message  # says how to get it
