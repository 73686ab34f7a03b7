"""``mtransfer run --executor ray`` on a local Ray instance (2 CPUs) with the ``tiny`` preset: the frames are
the local executor's, byte for byte; a worker killed mid-frame costs only that frame; a run interrupted on
one executor finishes on the other without recomputing a finished frame.

Decode, flow and align run once for the module (``--flow-only``); each test copies that folder. One Ray
instance serves the module.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

import mtransfer.evaluation.evaluate as evaluate
import mtransfer.pipeline.stages.guide as guide
from mtransfer.app.frames import FrameEditor
from mtransfer.app import Editor, load_settings
from mtransfer.app.executors import RAY_INSTALL_HINT
from mtransfer.errors import Interrupted
from mtransfer.evaluation import read_evaluation
from mtransfer.pipeline.manifest import Manifest
from mtransfer.pipeline.runner import RunRequest, run_pipeline
from mtransfer.pipeline.stages import KILL_AFTER_ENV

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the killing worker factory lives here

ROOT = Path(__file__).resolve().parent.parent
VIDEO = ROOT / "sample_videos" / "pan.mp4"
IMAGE = ROOT / "sample_videos" / "cat.png"
QUIET = Console(file=open(os.devnull, "w"), width=100)
FRAMES = 3  # frame 0 is the source itself: two edits per run
RAY = ("execution.executor=\"ray\"", "execution.workers=1")  # one actor process: fewer to start on 2 CPUs


def run(out: Path, *overrides: str, flow_only: bool = False) -> Path:
    request = RunRequest(VIDEO, IMAGE, "tiny", (f"video.max_frames={FRAMES}", *overrides), out, flow_only=flow_only)
    return run_pipeline(request, QUIET)


def counted_edits(monkeypatch) -> list[int]:
    """Count the edits made in this process (``Editor.edit``); Ray workers' edits are not counted."""
    seen: list[int] = []
    original = Editor.edit

    def counting(self, *args, **kwargs):
        seen.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Editor, "edit", counting)
    return seen


def frame_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((folder / "frames").iterdir())}


def guide_records(folder: Path) -> dict[str, dict]:
    return Manifest.open(folder).stage("guide")["frames"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> Path:
    return run(tmp_path_factory.mktemp("aligned") / "run", flow_only=True)


@pytest.fixture()
def fresh(aligned, tmp_path):
    def copy(name: str) -> Path:
        return Path(shutil.copytree(aligned, tmp_path / name))
    return copy


@pytest.fixture(scope="module")
def local_frames(aligned, tmp_path_factory) -> dict[str, bytes]:
    folder = run(Path(shutil.copytree(aligned, tmp_path_factory.mktemp("local") / "run")))
    assert all(record.get("worker", "local") == "local" for record in guide_records(folder).values())
    return frame_bytes(folder)


@dataclass(frozen=True)
class KillingFrameEditor(FrameEditor):
    """The real worker, whose process kills itself the first time it has edited frame 1, before returning."""

    marker: str = ""

    def __call__(self):
        edit = FrameEditor.__call__(self)

        def edit_then_die(frames, state, progress, parents):  # a job is a tuple of frames (video.batch of them)
            output = edit(frames, state, progress, parents)
            if frames[0].index == 1 and not Path(self.marker).exists():
                Path(self.marker).touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return output

        return edit_then_die


def test_ray_frames_are_the_local_frames_byte_for_byte_even_when_a_worker_dies_mid_frame(
    fresh, local_frames, monkeypatch, tmp_path
):
    marker = tmp_path / "worker-died"
    monkeypatch.setattr(guide, "FrameEditor", functools.partial(KillingFrameEditor, marker=str(marker)))
    judged: list[int] = []
    judge = evaluate.judge_motion
    monkeypatch.setattr(evaluate, "judge_motion", lambda *args, **kwargs: judged.append(1) or judge(*args, **kwargs))
    folder = run(fresh("ray"), *RAY, "execution.workers=2")
    assert marker.exists()  # a worker did die in the middle of frame 1
    assert frame_bytes(folder) == local_frames  # every frame, whole, and no temporary file left behind
    records = guide_records(folder)
    assert records["0000"] == {"still": True, "role": "still"}
    assert records["0001"]["attempts"] == 2 and records["0002"]["attempts"] == 1
    for name in ("0001", "0002"):
        assert records[name]["worker"] in ("ray-0", "ray-1")
        assert records[name]["pid"] != os.getpid() and records[name]["host"]
        assert records[name]["worker_seconds"] >= records[name]["seconds"] - 0.01 > 0  # rounded to 3 and 2 places
    # the driver judged every frame once the workers were done, into its manifest and evaluation.json
    assert len(judged) == FRAMES
    recorded = Manifest.open(folder).stage("evaluate")
    assert recorded["status"] == "done"
    assert [row["frame"] for row in read_evaluation(folder)["frames"]] == [int(name) for name in recorded["frames"]]


def test_a_run_killed_on_the_local_executor_finishes_on_ray_without_recomputing(fresh, local_frames, monkeypatch):
    """The local run kills itself (SIGKILL) right after recording frame 1, a fixed point (``KILL_AFTER_ENV``)."""
    folder = fresh("local-then-ray")
    command = [sys.executable, "-m", "mtransfer", "run", str(VIDEO), "--onto", str(IMAGE), "--pipeline", "tiny",
               "--max-frames", str(FRAMES), "--out", str(folder)]
    killed = subprocess.run(command, env={**os.environ, KILL_AFTER_ENV: "1"}, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    kept = guide_records(folder)
    assert sorted(kept) == ["0000", "0001"] and kept["0001"]["worker"] == "local"
    edits = counted_edits(monkeypatch)
    run(folder, *RAY)
    records = guide_records(folder)
    assert edits == []  # the one missing frame was edited by a Ray worker, not here
    assert records["0001"] == kept["0001"]  # not recomputed
    assert records["0002"]["worker"].startswith("ray-")
    assert frame_bytes(folder) == local_frames


def test_a_run_interrupted_on_ray_finishes_locally_without_recomputing(fresh, local_frames, monkeypatch):
    folder = fresh("ray-then-local")
    written: list[int] = []
    original = guide._save_tensor

    def stop_at_second(*args, **kwargs):  # the driver stops (Ctrl-C) while writing its second edit
        if written:
            raise KeyboardInterrupt
        written.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(guide, "_save_tensor", stop_at_second)
    with pytest.raises(Interrupted, match="guide 2 of 3 frames"):
        run(folder, *RAY)
    monkeypatch.undo()
    kept = guide_records(folder)
    [edited] = [name for name in kept if name != "0000"]
    assert kept[edited]["worker"].startswith("ray-")
    edits = counted_edits(monkeypatch)
    run(folder)
    records = guide_records(folder)
    assert len(edits) == 1  # only the frame that was not finished
    assert records[edited] == kept[edited]
    assert [records[name]["worker"] for name in records if name not in ("0000", edited)] == ["local"]
    assert frame_bytes(folder) == local_frames


def test_a_missing_ray_is_one_line_before_any_stage(tmp_path):
    blocker = tmp_path / "ray.py"  # shadows the installed package with one that cannot be imported
    blocker.write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "mtransfer", "run", str(VIDEO), "--onto", str(IMAGE), "--pipeline", "tiny",
               "--out", str(tmp_path / "run"), "--executor", "ray"]
    missing = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: {RAY_INSTALL_HINT}"
    assert not (tmp_path / "run").exists()  # refused before any stage ran


def test_the_executor_shapes_no_stage():
    """Switching executor must never invalidate a run: no stage's settings mention [execution]."""
    local = load_settings("tiny", ['execution.executor="local"'])
    other = load_settings("tiny", ['execution.executor="ray"', 'execution.address="auto"', "execution.workers=8"])
    assert local.execution != other.execution
    assert local.stage_settings() == other.stage_settings()
    assert all("execution" not in sections for sections in local.stage_settings().values())


def test_a_keyed_plan_on_ray_gives_the_local_frames_byte_for_byte_with_fewer_passes(fresh):
    """The issue's check: keys every 2 frames with warm starts at 0.5, on Ray (2 workers) and locally."""
    plan = ('video.plan="keys"', "video.key_every=2", "video.warm_start=0.5")
    local, on_ray = fresh("plan-local"), fresh("plan-ray")
    run(local, *plan)
    run(on_ray, *plan, 'execution.executor="ray"', "execution.workers=2")
    assert frame_bytes(on_ray) == frame_bytes(local)
    records = guide_records(on_ray)
    assert records["0002"]["role"] == "warm" and records["0002"]["worker"].startswith("ray-")
    summary = Manifest.open(on_ray).stage("guide")["plan"]
    assert summary["passes"] < summary["independent_passes"]
