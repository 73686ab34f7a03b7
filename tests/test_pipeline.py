"""The staged pipeline: manifest, resume after an interruption, refusing to mix settings, --restart."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

import mtransfer.app.settings as app_settings
import mtransfer.evaluation.evaluate as evaluate
import mtransfer.pipeline.stages.flow as stages
from mtransfer.app import Editor, load_settings
from mtransfer.errors import MtransferError
from mtransfer.evaluation import evaluate_run, read_evaluation
from mtransfer.files import load_image
from mtransfer.flows.io import read_flow
from mtransfer.guidance import GuidanceSettings
from mtransfer.pipeline.manifest import LOCK, Manifest
from mtransfer.pipeline.runner import RunRequest, check_inputs, run_pipeline, stage_settings
from mtransfer.guidance.edit import previous_frame_start
from mtransfer.pipeline.stages import KILL_AFTER_ENV
from mtransfer.presets import PRESETS_DIR, available_pipelines

ROOT = Path(__file__).resolve().parent.parent
VIDEO = ROOT / "sample_videos" / "translate.mp4"
IMAGE = ROOT / "sample_videos" / "cat.png"
PRESET = str(Path(__file__).resolve().parent / "data" / "run-test.toml")
QUIET = Console(file=open(os.devnull, "w"), width=100)


def run(out: Path, *overrides: str, restart: bool = False, flow_only: bool = False) -> Path:
    request = RunRequest(VIDEO, IMAGE, PRESET, tuple(overrides), out, restart=restart, flow_only=flow_only)
    return run_pipeline(request, QUIET)


def frames_of(folder: Path) -> torch.Tensor:
    return torch.stack([load_image(p) for p in sorted((folder / "frames").glob("*.png"))])


class Interrupt(Exception):
    """Stands in for a kill: raised from inside a stage after some frames were finished."""


COUNTED = {"edit": (Editor, "edit"), "video_flows": (stages, "video_flows"), "judge": (evaluate, "judge_motion")}
"""What the tests count: edits (``Editor.edit``), flow estimations (the flow stage's ``video_flows``) and
the evaluation judge's measurements (``judge_motion``, once per judged frame)."""


def counting(monkeypatch, what: str, stop_after: int | None = None) -> list[int]:
    """Count the calls of ``COUNTED[what]`` (or yielded items) and raise ``Interrupt`` after ``stop_after``."""
    calls: list[int] = []
    owner, name = COUNTED[what]
    original = getattr(owner, name)
    original = getattr(original, "__wrapped__", original)  # never wrap a wrapper

    def edit_wrapper(*args, **kwargs):
        if stop_after is not None and len(calls) >= stop_after:
            raise Interrupt
        calls.append(1)
        return original(*args, **kwargs)

    def flows_wrapper(*args, **kwargs):
        for item in original(*args, **kwargs):
            if stop_after is not None and len(calls) >= stop_after:
                raise Interrupt
            calls.append(1)
            yield item

    wrapper = flows_wrapper if what == "video_flows" else edit_wrapper
    wrapper.__wrapped__ = original
    monkeypatch.setattr(owner, name, wrapper)
    return calls


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted run that resumed runs must reproduce exactly."""
    return run(tmp_path_factory.mktemp("reference") / "run")


def test_every_shipped_preset_is_valid():
    assert {"paper", "preview", "offline-demo", "tiny"} <= set(available_pipelines())
    for name in available_pipelines():
        settings = load_settings(name)
        assert settings.video.flow in ("direct", "chained")
    paper = load_settings("paper")
    assert (paper.guidance.steps, paper.guidance.recursions, paper.model.size) == (500, 10, (512, 512))
    assert "CHANGES THE MATH" in (PRESETS_DIR / "preview.toml").read_text()


def test_manifest_records_config_inputs_versions_and_every_frame(reference):
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["config"]["model"]["model"] == "exact"
    assert manifest["inputs"]["video"]["bytes"] == VIDEO.stat().st_size
    assert len(manifest["inputs"]["image"]["sha256_first_mib"]) == 64
    assert manifest["versions"]["torch"] == importlib.metadata.version("torch")
    for stage, count in (("decode", 4), ("flow", 3), ("align", 4), ("guide", 4)):
        assert manifest["stages"][stage]["status"] == "done"
        assert len(manifest["stages"][stage]["frames"]) == count
    assert manifest["stages"]["guide"]["frames"]["0000"] == {"still": True, "role": "still"}
    assert manifest["stages"]["guide"]["settings"]["guidance"]["steps"] == 3
    assert not (reference / LOCK).exists()
    # Frame 0 is the source image itself; the others were edited, and say how well.
    assert torch.equal(frames_of(reference)[0], load_image(reference / "source.png"))
    for index in ("0001", "0002", "0003"):
        record = manifest["stages"]["guide"]["frames"][index]
        assert record["seconds"] > 0 and record["flow_error_px"] >= 0 and record["diverged"] is False


def test_rerunning_a_finished_run_computes_nothing(reference, monkeypatch):
    edits = counting(monkeypatch, "edit")
    flows = counting(monkeypatch, "video_flows")
    judged = counting(monkeypatch, "judge")
    before = {name: (reference / name).stat().st_mtime_ns for name in ("result.mp4", "evaluation.json", "report.html")}
    run(reference)
    assert edits == [] and flows == [] and judged == []
    assert {name: (reference / name).stat().st_mtime_ns for name in before} == before


def test_the_run_evaluates_every_frame_into_the_manifest_and_evaluation_json(reference):
    manifest = json.loads((reference / "manifest.json").read_text())
    recorded = manifest["stages"]["evaluate"]
    evaluation = json.loads((reference / "evaluation.json").read_text())
    judge = evaluation["judge"]
    # an independent judge: not the estimator inside the energy, resolved and recorded as what evaluate depends on
    assert judge["estimator"] != "pyramid" and judge["guidance_estimator"] == "pyramid"
    assert recorded["status"] == "done" and recorded["judge"] == judge
    assert recorded["settings"]["evaluation"] == {"enabled": True, "estimator": judge["estimator"], "max_side": 256}
    assert recorded["summary"] == evaluation["summary"]
    rows = {f"{row['frame']:04d}": row for row in evaluation["frames"]}
    assert recorded["frames"] == rows and list(rows) == ["0000", "0001", "0002", "0003"]
    # frame 0 is the source itself: untouched, and no frame before it to compare with
    assert rows["0000"]["psnr"] == "inf" and rows["0000"]["ssim"] == 1.0 and "warping_error" not in rows["0000"]
    for name in ("0001", "0002", "0003"):
        row = rows[name]
        assert row["epe_edit"] >= 0 and 0 <= row["within_1px_edit"] <= 1 and row["ssim"] <= 1
        assert row["warping_error"] >= 0 and row["baseline_warping_error"] >= 0
    # what the stage assembled frame by frame is what one evaluation of the finished folder gives
    again = evaluate_run(reference, estimator=judge["estimator"])
    assert again["frames"] == read_evaluation(reference)["frames"]


def test_an_interrupted_run_resumes_with_only_the_missing_frames(reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    edits = counting(monkeypatch, "edit", stop_after=2)
    with pytest.raises(Interrupt):
        run(out)
    assert len(edits) == 2
    assert Manifest.open(out).done_frames("guide") == {0, 1, 2}
    assert not (out / LOCK).exists()

    edits = counting(monkeypatch, "edit")
    flows = counting(monkeypatch, "video_flows")
    run(out)
    assert len(edits) == 1 and flows == []  # only frame 3 was left; flows were all done
    assert torch.equal(frames_of(out), frames_of(reference))


def test_chained_flow_resumes_mid_stage_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    steps = counting(monkeypatch, "video_flows", stop_after=2)
    with pytest.raises(Interrupt):
        run(tmp_path / "a", "video.flow=\"chained\"", flow_only=True)
    assert Manifest.open(tmp_path / "a").done_frames("flow") == {1, 2}

    steps = counting(monkeypatch, "video_flows")
    run(tmp_path / "a", "video.flow=\"chained\"", flow_only=True)
    assert len(steps) == 1
    monkeypatch.undo()
    run(tmp_path / "b", "video.flow=\"chained\"", flow_only=True)
    for index in range(1, 4):
        name = f"driving_flow/{index:04d}.flo"
        assert torch.equal(read_flow(tmp_path / "a" / name), read_flow(tmp_path / "b" / name))


def test_init_previous_resumes_identically(tmp_path, monkeypatch):
    counting(monkeypatch, "edit", stop_after=2)
    chain = ("video.init=\"previous\"", "video.plan=\"chain\"")
    with pytest.raises(Interrupt):
        run(tmp_path / "a", *chain)
    monkeypatch.undo()
    run(tmp_path / "a", *chain)
    run(tmp_path / "b", *chain)
    assert torch.equal(frames_of(tmp_path / "a"), frames_of(tmp_path / "b"))


def test_warm_start_runs_fewer_passes_by_the_stated_amount_and_resumes_identically(tmp_path, monkeypatch):
    """run-test: 4 steps x 2 recursions. Frame 1 follows the still frame 0, so it runs in full; frames 2
    and 3 start from the frame before at the step where the last round(0.5 * 4) = 2 steps begin."""
    warm = ("guidance.steps=4", "video.warm_start=0.5", 'video.plan="chain"')
    counting(monkeypatch, "edit", stop_after=2)
    with pytest.raises(Interrupt):
        run(tmp_path / "a", *warm)
    assert Manifest.open(tmp_path / "a").done_frames("guide") == {0, 1, 2}
    monkeypatch.undo()
    edits = counting(monkeypatch, "edit")
    run(tmp_path / "a", *warm)
    assert len(edits) == 1  # frame 3 alone, from frame 2's stored latent
    monkeypatch.undo()
    run(tmp_path / "b", *warm)
    assert torch.equal(frames_of(tmp_path / "a"), frames_of(tmp_path / "b"))

    frames = json.loads((tmp_path / "b" / "manifest.json").read_text())["stages"]["guide"]["frames"]
    recursions, steps, remaining = 2, 4, 2
    assert [frames[f"{i:04d}"]["passes"] for i in (1, 2, 3)] == [recursions * steps] + [recursions * remaining] * 2
    assert [frames[f"{i:04d}"]["passes_saved"] for i in (1, 2, 3)] == [0] + [recursions * (steps - remaining)] * 2
    assert "passes saved" in (tmp_path / "b" / "report.html").read_text()

    run(tmp_path / "c", "guidance.steps=4")  # a cold run differs from frame 2 on, where warm starts began
    cold, warmed = frames_of(tmp_path / "c"), frames_of(tmp_path / "b")
    assert torch.equal(cold[:2], warmed[:2]) and not torch.equal(cold[2:], warmed[2:])


def test_a_batched_run_gives_every_frame_its_unbatched_result(reference, tmp_path):
    out = run(tmp_path / "run", "video.batch=2")  # frames 1-2 together, then frame 3 alone
    for index in (1, 2, 3):
        name = f"cache/latents/{index:04d}.pt"
        batched, single = (torch.load(folder / name, weights_only=True) for folder in (out, reference))
        assert (batched - single).abs().max() < 1e-4
    frames = json.loads((out / "manifest.json").read_text())["stages"]["guide"]["frames"]
    assert [frames[f"{i:04d}"]["passes"] for i in (1, 2, 3)] == [3 * 2] * 3  # steps x recursions each


def test_evaluation_settings_are_checked():
    with pytest.raises(MtransferError, match=r"^evaluation\.estimator: pyramid guides the edit"):
        load_settings(PRESET, ['evaluation.estimator="pyramid"'])
    with pytest.raises(MtransferError, match=r"^evaluation\.max_side: must be at least 16"):
        load_settings(PRESET, ["evaluation.max_side=8"])
    with pytest.raises(MtransferError, match=r"^evaluation\.estimator: must be"):
        load_settings(PRESET, ['evaluation.estimator="nonesuch"'])


def test_warm_start_settings_are_checked():
    with pytest.raises(MtransferError, match="video.warm_start"):
        load_settings(PRESET, ["video.warm_start=1.0", 'video.plan="chain"'])
    with pytest.raises(MtransferError, match="init"):
        load_settings(PRESET, ["video.warm_start=0.5", "video.init=\"previous\"", 'video.plan="chain"'])
    with pytest.raises(MtransferError, match=r'^video.plan: "independent" starts every frame from the shared start'):
        load_settings(PRESET, ["video.warm_start=0.5"])
    with pytest.raises(MtransferError, match=r"^video.plan: needs video.warm_start"):
        load_settings(PRESET, ['video.plan="keys"', "video.key_every=2"])
    with pytest.raises(MtransferError, match=r"^video.key_every: is how many moving frames a key serves"):
        load_settings(PRESET, ['video.plan="keys"', "video.warm_start=0.5"])
    with pytest.raises(MtransferError, match=r"^video.warm_warp: moves a warm start"):
        load_settings(PRESET, ['video.warm_warp="image"'])
    # settings added with the frame plan are recorded only away from the behaviour before them, so run
    # folders made before still resume
    assert load_settings(PRESET).by_stage()["guide"]["video"] == {"init": "shared", "warm_start": 0.0}
    keyed = load_settings(PRESET, ['video.plan="keys"', "video.key_every=2", "video.warm_start=0.5"])
    assert keyed.by_stage()["guide"]["video"] == {"init": "shared", "warm_start": 0.5, "plan": "keys", "key_every": 2}
    # Ray takes every plan and batches now
    load_settings(PRESET, ["video.warm_start=0.5", 'video.plan="chain"', "video.batch=2", 'execution.executor="ray"'])


def test_a_killed_process_resumes_without_corrupt_or_repeated_frames(reference, tmp_path, monkeypatch):
    """The run kills itself (SIGKILL, no clean-up) right after frame 1 is recorded: a fixed point, no race."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mtransfer", "run", str(VIDEO), "--onto", str(IMAGE), "-p", PRESET,
               "--out", str(out)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", KILL_AFTER_ENV: "1"}
    killed = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert Manifest.open(out).done_frames("guide") == {0, 1}
    assert (out / LOCK).exists()  # a dead owner's lock, taken over below
    edits = counting(monkeypatch, "edit")
    run(out)
    assert len(edits) == 2  # frames 2 and 3; frame 0 is the source itself, frame 1 was kept
    assert torch.equal(frames_of(out), frames_of(reference))


def test_judge_settings_redo_only_the_evaluation_which_resumes_frame_by_frame(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(out)
    first = read_evaluation(out)
    edits, flows = counting(monkeypatch, "edit"), counting(monkeypatch, "video_flows")

    judged = counting(monkeypatch, "judge")
    run(out, "evaluation.max_side=16")  # a judge setting: no --restart needed, only the evaluation is redone
    assert edits == [] and flows == [] and len(judged) == 4
    assert read_evaluation(out)["judge"]["max_side"] == 16
    (moved,) = (out / "superseded").glob("*/evaluation.json")
    assert read_evaluation(moved.parent) == first  # the earlier evaluation is kept, not mixed in

    judged = counting(monkeypatch, "judge", stop_after=2)  # killed after judging two frames
    with pytest.raises(Interrupt):
        run(out, "evaluation.max_side=24")
    assert Manifest.open(out).done_frames("evaluate") == {0, 1}
    judged = counting(monkeypatch, "judge")
    run(out, "evaluation.max_side=24")
    assert len(judged) == 2 and edits == [] and flows == []  # frames 2 and 3
    resumed = read_evaluation(out)
    assert evaluate_run(out, estimator=resumed["judge"]["estimator"], max_side=24)["frames"] == resumed["frames"]

    judged = counting(monkeypatch, "judge")
    (out / "frames" / "0002.png").unlink()  # a result made again is judged again, with every other frame
    run(out, "evaluation.max_side=24")
    assert len(edits) == 1 and len(judged) == 4

    judged = counting(monkeypatch, "judge")
    run(out, "evaluation.max_side=24", "evaluation.enabled=false")
    assert judged == [] and not (out / "evaluation.json").exists()
    assert "evaluate" not in json.loads((out / "manifest.json").read_text())["stages"]
    assert 'data-key="warping_error"' not in (out / "report.html").read_text()


def test_changed_settings_are_refused_then_restart_moves_only_the_affected_stages(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(out)
    old_result = (out / "frames" / "0003.png").read_bytes()
    manifest_before = (out / "manifest.json").read_bytes()
    with pytest.raises(MtransferError, match=r"guidance\.steps: 3 → 4.*--restart"):
        run(out, "guidance.steps=4")
    assert (out / "manifest.json").read_bytes() == manifest_before

    flows = counting(monkeypatch, "video_flows")
    edits = counting(monkeypatch, "edit")
    run(out, "guidance.steps=4", restart=True)
    assert flows == [] and len(edits) == 3  # the flows were still valid; every moving frame was redone
    (moved,) = (out / "superseded").iterdir()
    assert (moved / "frames" / "0003.png").read_bytes() == old_result
    assert not (moved / "driving_flow").exists()
    assert json.loads((out / "manifest.json").read_text())["stages"]["guide"]["settings"]["guidance"]["steps"] == 4


def test_restart_without_changes_recomputes_everything_and_keeps_the_old_results(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(out, flow_only=True)
    flows = counting(monkeypatch, "video_flows")
    run(out, flow_only=True, restart=True)
    assert len(flows) == 3
    (moved,) = (out / "superseded").iterdir()
    assert len(list((moved / "driving_flow").glob("*.flo"))) == 3 and (moved / "flow.mp4").exists()


def test_changed_input_content_is_refused(tmp_path):
    image = tmp_path / "image.png"
    image.write_bytes(IMAGE.read_bytes())
    request = RunRequest(VIDEO, image, PRESET, (), tmp_path / "run", flow_only=True)
    run_pipeline(request, QUIET)
    from PIL import Image

    Image.new("RGB", (48, 32), (200, 30, 30)).save(image)
    with pytest.raises(MtransferError, match="inputs.image"):
        run_pipeline(request, QUIET)


def test_a_live_run_lock_is_respected_and_a_stale_one_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (out / LOCK).write_text(str(sleeper.pid))
        with pytest.raises(MtransferError, match="another mtransfer run"):
            run(out, flow_only=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    run(out, flow_only=True)  # the owner is gone: the lock is stale
    assert (out / "flow.mp4").exists() and not (out / LOCK).exists()


def test_previous_frame_start_is_the_shared_start_when_nothing_moved():
    from mtransfer.diffusion.exact import ExactBackend
    from mtransfer.guidance import GuidanceSettings, prepare_source

    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    backend = ExactBackend(torch.stack((image, image.flip(-1))))
    state = prepare_source(backend, image, "", GuidanceSettings(steps=5, recursions=1, cfg_scale=1.0))
    assert torch.equal(previous_frame_start(state, state.latent, backend.alphas_cumprod), state.start)
    moved = previous_frame_start(state, state.latent + 1.0, backend.alphas_cumprod)
    shift = (moved - state.start).mean().item()
    assert shift == pytest.approx(float(backend.alphas_cumprod[state.timesteps[0]]) ** 0.5, rel=1e-4)


def test_a_non_differentiable_guidance_estimator_is_refused_before_any_work(tmp_path):
    with pytest.raises(MtransferError, match=r"^estimator\.name: 'tvl1' is not differentiable.*raft-large, raft-small, pyramid"):
        run(tmp_path / "run", 'estimator.name="tvl1"')
    assert not (tmp_path / "run").exists()


@dataclasses.dataclass(frozen=True)
class GuidanceWithDummy(GuidanceSettings):
    """``GuidanceSettings`` with one more setting, declared nowhere but in the section it belongs to."""

    dummy: float = 1.0


def test_a_new_setting_invalidates_its_stage_and_later_ones_from_its_declaration(tmp_path, monkeypatch):
    """Nothing lists which keys a stage depends on: a new guidance setting invalidates guide (and encode)."""
    monkeypatch.setitem(app_settings.SECTIONS, "guidance", GuidanceWithDummy)
    out = tmp_path / "run"
    run(out)
    recorded = json.loads((out / "manifest.json").read_text())["stages"]
    assert recorded["guide"]["settings"]["guidance"]["dummy"] == 1.0
    assert "dummy" not in recorded["align"]["settings"].get("guidance", {})

    changed = load_settings(PRESET, ["guidance.dummy=2.0"])
    wanted = stage_settings(changed, check_inputs(RunRequest(VIDEO, IMAGE), changed), flow_only=False)
    stale = Manifest.open(out).stale_stages({stage: wanted[stage] for stage in ("decode", "flow", "align", "guide")})
    assert set(stale) == {"guide"} and stale["guide"] == ["guidance.dummy: 1.0 → 2.0"]
    assert wanted["encode"]["guidance"]["dummy"] == 2.0  # later stages carry it too

    with pytest.raises(MtransferError, match=r"guidance\.dummy: 1\.0 → 2\.0.*--restart"):
        run(out, "guidance.dummy=2.0")
    edits, flows = counting(monkeypatch, "edit"), counting(monkeypatch, "video_flows")
    run(out, "guidance.dummy=2.0", restart=True)
    assert len(edits) == 3 and flows == []  # guide redone, the flows kept


def test_settings_that_shape_no_result_do_not_invalidate(reference, monkeypatch):
    edits = counting(monkeypatch, "edit")
    run(reference, "guidance.preview_every=5", 'model.device="cpu"', "video.batch_size=2")
    assert edits == []
