"""The frame plan: keys and warm frames by the rules of ``video.plan``, jobs that wait for their parents, the
flow-warped start, and runs under a plan (fewer passes, resume after kill -9 in any order, invalidation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from mtransfer.app.plan import KEY, STILL, WARM, frame_plan, plan_jobs, total_passes
from mtransfer.diffusion.exact import ExactBackend
from mtransfer.errors import UsageError
from mtransfer.files import load_image
from mtransfer.guidance.edit import parent_to_child, warped_start
from mtransfer.pipeline.manifest import Manifest
from mtransfer.pipeline.runner import RunRequest, run_pipeline
from mtransfer.pipeline.stages import KILL_AFTER_ENV

ROOT = Path(__file__).resolve().parent.parent
VIDEO = ROOT / "sample_videos" / "pan.mp4"
IMAGE = ROOT / "sample_videos" / "cat.png"
QUIET = Console(file=open(os.devnull, "w"), width=100)
KEYS = ('video.plan="keys"', "video.key_every=2", "video.warm_start=0.5")


def roles(plan) -> list[tuple[str, int | None]]:
    return [(frame.role, frame.parent) for frame in plan]


# --- the plan's rules ----------------------------------------------------------------------------------


def test_each_plan_follows_its_rule() -> None:
    """Frame 0 and frame 4 are still. Rules: independent = every moving frame a key; chain = a key at the
    first moving frame after a still one, else warm from the frame before; keys K = a new key also after K
    moving frames of a segment; warm_from = "key": warm from the segment's key."""
    still = [True, False, False, False, True, False, False, False, False]
    assert roles(frame_plan(still, "independent")) == [(STILL, None)] + [(KEY, None)] * 3 + [(STILL, None)] + [(KEY, None)] * 4
    assert roles(frame_plan(still, "chain")) == [
        (STILL, None), (KEY, None), (WARM, 1), (WARM, 2), (STILL, None), (KEY, None), (WARM, 5), (WARM, 6), (WARM, 7)]
    assert roles(frame_plan(still, "keys", key_every=2)) == [
        (STILL, None), (KEY, None), (WARM, 1), (KEY, None), (STILL, None), (KEY, None), (WARM, 5), (KEY, None), (WARM, 7)]
    assert roles(frame_plan(still, "keys", key_every=3, warm_from="key")) == [
        (STILL, None), (KEY, None), (WARM, 1), (WARM, 1), (STILL, None), (KEY, None), (WARM, 5), (WARM, 5), (KEY, None)]


def test_a_jolt_in_the_target_flow_makes_a_key() -> None:
    still = [True] + [False] * 5
    jolt = {4}  # the target flow of frame 4 differs from its parent's by 10 px, the others by 1 px
    plan = frame_plan(still, "chain", change=lambda index, parent: 10.0 if index in jolt else 1.0, key_change=5.0)
    assert roles(plan) == [(STILL, None), (KEY, None), (WARM, 1), (WARM, 2), (KEY, None), (WARM, 4)]


def test_passes_count_a_key_in_full_and_a_warm_frame_from_its_first_step() -> None:
    plan = frame_plan([True] + [False] * 8, "keys", key_every=4)  # keys 1, 5; six warm frames
    assert total_passes(plan, steps=10, recursions=3, first_warm_step=6) == 2 * 10 * 3 + 6 * 4 * 3


def test_jobs_wait_for_their_parents_jobs_and_group_only_frames_ready_together() -> None:
    plan = frame_plan([True] + [False] * 8, "keys", key_every=4)  # 1 → 2 → 3 → 4, 5 → 6 → 7 → 8
    jobs = plan_jobs(plan, range(9), batch=2)
    assert [(job.frames, job.after) for job in jobs] == [
        ((1, 5), ()), ((2, 6), (1,)), ((3, 7), (2,)), ((4, 8), (3,))]
    job_of = {frame: job for job in jobs for frame in job.frames}
    for frame in plan:  # the rule: a warm frame's job waits for the job that makes its parent
        if frame.role == WARM:
            assert job_of[frame.parent].index in job_of[frame.index].after
    # resumed with frames 1-3 written: 4 starts from frame 3's stored latent, ready at once like key 5
    resumed = plan_jobs(plan, [4, 5, 6, 7, 8], batch=2)
    assert [(job.frames, job.after) for job in resumed] == [((4,), ()), ((5,), ()), ((6,), (5,)), ((7,), (6,)), ((8,), (7,))]


# --- the flow-warped start -----------------------------------------------------------------------------


def test_the_warped_start_moves_the_parents_result_by_the_motion_from_parent_to_child() -> None:
    """Parent: the source moved 2 px right; child: 5 px right. The child's start must be the parent's
    result moved 3 px further right (a hand-made shift), in picture and in latent."""
    height, width = 24, 32
    generator = torch.Generator().manual_seed(0)
    parent = torch.rand(1, 3, height, width, generator=generator)
    parent_flow = torch.zeros(2, height, width)
    parent_flow[0] = 2.0
    child_flow = torch.zeros(2, height, width)
    child_flow[0] = 5.0
    fetch = parent_to_child(parent_flow, child_flow)
    assert torch.allclose(fetch[0], torch.full((height, width), -3.0), atol=1e-4) and fetch[1].abs().max() < 1e-4
    backend = ExactBackend(parent)
    latent = backend.encode(parent)
    shifted = torch.zeros_like(parent)
    shifted[..., 3:] = parent[..., :-3]
    shifted[..., :3] = parent[..., :1]  # border repeated
    for how in ("image", "latent"):
        start = backend.decode(warped_start(backend, latent, parent_flow, child_flow, how))
        assert (start - shifted).abs().max() < 1e-4, how
    assert torch.equal(warped_start(backend, latent, parent_flow, child_flow, "none"), latent)


# --- runs under a plan ---------------------------------------------------------------------------------


def run(out: Path, *overrides: str, frames: int = 4) -> Path:
    request = RunRequest(VIDEO, IMAGE, "tiny", (f"video.max_frames={frames}", *overrides), out)
    return run_pipeline(request, QUIET)


def frame_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((folder / "frames").iterdir())}


def guide(folder: Path) -> dict:
    return Manifest.open(folder).stage("guide")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> Path:
    return run(tmp_path_factory.mktemp("keyed") / "run", *KEYS)


def test_a_keyed_plan_takes_fewer_passes_and_records_each_frames_role(keyed, tmp_path) -> None:
    record = guide(keyed)
    frames = record["frames"]
    assert [frames[f"{i:04d}"]["role"] for i in range(4)] == ["still", "key", "warm", "key"]
    assert frames["0002"]["parent"] == 1
    steps, recursions = 4, 1  # the tiny preset; a warm frame runs the last round(0.5 * 4) = 2 steps
    assert [frames[f"{i:04d}"]["passes"] for i in (1, 2, 3)] == [steps * recursions, 2 * recursions, steps * recursions]
    assert record["plan"]["passes"] == 10 < record["plan"]["independent_passes"] == 12
    report = (keyed / "report.html").read_text()
    assert 'list="keys"' in report and "warm from 1" in report


def test_a_run_killed_mid_plan_resumes_to_the_same_frames(keyed, tmp_path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mtransfer", "run", str(VIDEO), "--onto", str(IMAGE), "--pipeline", "tiny",
               "--out", str(out), "--set", "video.max_frames=4", *[arg for setting in KEYS for arg in ("--set", setting)]]
    environment = {**os.environ, KILL_AFTER_ENV: "2", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed = subprocess.run(command, env=environment, capture_output=True, timeout=600)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert Manifest.open(out).done_frames("guide") == {0, 1, 2}  # warm frame 2 right after its key
    (out / "cache" / "latents" / "0001.pt").unlink()  # a lost parent latent is remade, not trusted
    run(out, *KEYS)
    assert frame_bytes(out) == frame_bytes(keyed)


def test_a_change_of_plan_invalidates_the_guide_stage_and_later_ones(keyed, tmp_path) -> None:
    out = Path(tmp_path / "run")
    import shutil

    shutil.copytree(keyed, out)
    with pytest.raises(UsageError, match=r"video\.key_every: 2 → 3"):
        run(out, 'video.plan="keys"', "video.key_every=3", "video.warm_start=0.5")
    request = RunRequest(VIDEO, IMAGE, "tiny", ("video.max_frames=4", 'video.plan="keys"', "video.key_every=3",
                                               "video.warm_start=0.5"), out, restart=True)
    run_pipeline(request, QUIET)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [manifest["stages"]["guide"]["frames"][f"{i:04d}"]["role"] for i in range(4)] == [
        "still", "key", "warm", "warm"]
    moved = list((out / "superseded").glob("*/frames/0002.png"))
    assert moved and list((out / "superseded").glob("*/evaluation.json"))  # the later stages moved too
    assert load_image(out / "frames" / "0003.png").shape == load_image(keyed / "frames" / "0003.png").shape
