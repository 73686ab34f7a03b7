"""The pieces behind the web app's Edit and Video tabs, without a browser: models kept loaded between
edits, the one-step estimate handed out while an edit runs, cancelling a pipeline run through its
progress, and resuming unfinished run folders from their stored settings."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch
from rich.console import Console

from mtransfer.app import EditorCache, load_settings
from mtransfer.errors import InputError, Interrupted, MtransferError
from mtransfer.files import write_json
from mtransfer.ui.jobs import Job, JobProgress

TEST_PRESET = str(Path(__file__).resolve().parent / "data" / "run-test.toml")
SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"


@pytest.fixture
def counted_loads(monkeypatch):
    """Every backend and estimator load the editor makes, counted (the real loaders still run)."""
    import mtransfer.app.editor as editor_module

    counts = {"backend": 0, "estimator": 0}
    real_backend, real_estimator = editor_module.load_backend, editor_module.load_estimator

    def backend(*args, **kwargs):
        counts["backend"] += 1
        return real_backend(*args, **kwargs)

    def estimator(*args, **kwargs):
        counts["estimator"] += 1
        return real_estimator(*args, **kwargs)

    monkeypatch.setattr(editor_module, "load_backend", backend)
    monkeypatch.setattr(editor_module, "load_estimator", estimator)
    return counts


def test_editor_cache_loads_once_per_model_and_reloads_when_what_shapes_loading_changes(counted_loads):
    cache = EditorCache()
    image = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(0))
    settings = load_settings(TEST_PRESET)

    first = cache.editor(settings, image)
    # Settings that only shape the edit (steps, prompt) keep the models; the editor carries the new ones.
    fewer_steps = load_settings(TEST_PRESET, ["guidance.steps=2"])
    second = cache.editor(fewer_steps, image)
    assert counted_loads == {"backend": 1, "estimator": 1} and cache.loads == 1
    assert second.backend is first.backend and second.estimator is first.estimator
    assert second.guidance.steps == 2

    # The exact model is built from the image it edits: another image loads again.
    cache.editor(settings, image.flip(-1))
    assert counted_loads == {"backend": 2, "estimator": 2}
    # Another estimator setting loads again; so does another model (the tiny random SD of 'tiny').
    cache.editor(load_settings(TEST_PRESET, ["estimator.iterations=2"]), image.flip(-1))
    assert counted_loads == {"backend": 3, "estimator": 3}
    tiny = load_settings("tiny")
    cache.editor(tiny, image)
    cache.editor(load_settings("tiny", ['model.prompt="a dog"', "guidance.steps=2"]), image.flip(-1))
    assert counted_loads == {"backend": 4, "estimator": 4} and cache.loads == 4

    cache.close_models()
    cache.editor(tiny, image)
    assert cache.loads == 5


def test_a_kept_editor_edits_exactly_like_a_fresh_one_and_hands_out_each_preview_as_it_is_taken():
    """Reusing the models must not change an edit; the preview hook sees the previews the result keeps,
    in order, while the edit runs (every ``preview_every`` steps of the first recursion)."""
    from mtransfer.app import Editor

    image = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(1))
    flow = torch.zeros(2, 32, 48)
    flow[0] = 1.0
    settings = load_settings(TEST_PRESET, ["guidance.preview_every=1", "guidance.steps=3"])
    cache = EditorCache()
    cache.editor(settings, image).edit(cache.editor(settings, image).prepare(image), flow)  # the models' first use

    seen = []
    kept = cache.editor(settings, image)
    result = kept.edit(kept.prepare(image), flow, preview=lambda step, picture: seen.append((step, picture)))
    with Editor.load(settings, image) as fresh:
        expected = fresh.edit(fresh.prepare(image), flow)
    assert cache.loads == 1
    assert torch.equal(result.image, expected.image)
    assert [step for step, _ in seen] == [0, 1, 2]  # steps 0..2, each once (recursion 0 only)
    assert [step for step, _ in seen] == [step for step, _ in result.previews]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(seen, result.previews))
    assert seen[0][1].shape == (3, 32, 48)


def test_job_progress_says_the_stage_frame_and_pass_in_words_and_a_cancel_stops_as_ctrl_c_does():
    job = Job("video")
    progress = JobProgress(job)
    with progress:
        stage = progress.add_task("guide", total=4, completed=1)
        passes = progress.add_task("  passes", total=12)
        progress.advance(stage)
        progress.advance(passes)
        assert (job.phase, job.done, job.total) == ("guide", 2, 4)  # the sub-task does not move the bar
        assert job.status().startswith("editing the frames: frame 2 of 4, pass 1 of 12")
        progress.update(stage, description="guide 1/1 busy")  # the executor's counters stay out of the words
        assert job.status().startswith("editing the frames: frame 2 of 4, pass 1 of 12")
        job.cancel_requested.set()
        with pytest.raises(KeyboardInterrupt):  # the runner's interrupt note turns it into what is kept
            progress.advance(passes)


def test_an_edit_job_says_its_phase_in_words():
    job = Job("edit")
    job.begin("ddim", 10)
    assert job.status().startswith("preparing the image (ddim): step 0 of 10")
    job.begin("guide", 40)
    for _ in range(3):
        job.tick()
    assert job.status().startswith("guiding: pass 3 of 40 · ") and "left in this phase" in job.status()


def test_the_queue_keeps_a_history_of_jobs_newest_first_with_their_outputs(tmp_path):
    import threading

    from mtransfer.ui import jobs as jobs_module
    from mtransfer.ui.jobs import Busy, JobQueue, Outputs

    queue = JobQueue()

    def finishes(job):
        job.outputs = Outputs(f"made {job.title}", tmp_path)
        return job.title

    def fails(job):
        raise InputError("clip.mp4: not a readable video")

    first = queue.submit("edit", finishes, title="edit of cat.png", folder=tmp_path)
    assert first.finished.wait(5)
    second = queue.submit("video", fails, title="clip pan.mp4 onto cat.png")
    assert second.finished.wait(5)
    assert [job.number for job in queue.jobs()] == [2, 1]
    assert [job.state() for job in queue.jobs()] == ["failed", "finished"]
    assert first.outputs.summary == "made edit of cat.png" and first.folder == tmp_path
    ended = first.seconds
    threading.Event().wait(0.05)
    assert first.seconds == ended  # a finished job's time stopped when it ended
    for _ in range(jobs_module.HISTORY + 3):
        assert queue.submit("edit", lambda job: None).finished.wait(5)
    assert len(queue.jobs()) == jobs_module.HISTORY and queue.jobs()[0].number == jobs_module.HISTORY + 5

    assert queue.shutdown(1) is None  # nothing ran: nothing to wait for
    with pytest.raises(Busy, match="stopping"):
        queue.submit("edit", finishes)


def test_shutdown_stops_the_running_job_at_its_next_step_and_waits_for_it():
    import threading

    from mtransfer.ui.jobs import JobQueue

    queue = JobQueue()
    started, stopped_at = threading.Event(), []

    def work(job):
        job.begin("guide", 1000)
        started.set()
        try:
            for _ in range(1000):
                threading.Event().wait(0.01)
                job.tick()
        finally:
            stopped_at.append(job.done)

    job = queue.submit("edit", work, title="edit of cat.png")
    assert started.wait(5)
    assert queue.shutdown(10) is job
    assert not job.running and job.cancelled and stopped_at == [job.done] and job.done < 1000
    assert job.state() == "cancelled"


def interrupted_run(folder: Path, overrides: tuple[str, ...] = ()) -> Path:
    """A clip run (the test preset on the pan clip and the cat) stopped through its progress after two
    frames of the guide stage, as the page's Cancel stops one; returns ``folder``."""
    from mtransfer.pipeline.runner import RunRequest, run_pipeline

    job = Job("video")

    class StopInGuide(JobProgress):
        def advance(self, task_id, advance=1):
            super().advance(task_id, advance)
            task = self._tasks[task_id]
            if task.description.startswith("guide") and task.completed >= 2:
                job.cancel_requested.set()

    request = RunRequest(SAMPLES / "pan.mp4", SAMPLES / "cat.png", TEST_PRESET, overrides, folder)
    with pytest.raises(Interrupted):
        run_pipeline(request, Console(quiet=True), StopInGuide(job))
    return folder


def test_an_interrupted_run_folder_is_listed_and_resumed_with_its_stored_settings(tmp_path):
    """A run stopped through its progress (as the page's Cancel does) keeps its finished frames; the folder
    is listed as unfinished and resuming it from the folder alone finishes it without redoing them."""
    from mtransfer.files import read_json
    from mtransfer.pipeline.runner import run_pipeline
    from mtransfer.ui.runs import has_result, resume_request, unfinished_runs

    folder = interrupted_run(tmp_path / "session-1" / "video", ("align.strength=0.5",))
    stopped = read_json(folder / "manifest.json")
    kept = sorted(stopped["stages"]["guide"]["frames"])
    assert len(kept) == 2 and not has_result(stopped)
    assert unfinished_runs(tmp_path) == [folder]

    resumed = resume_request(folder)
    assert (resumed.video, resumed.image, resumed.out) == (SAMPLES / "pan.mp4", SAMPLES / "cat.png", folder)
    assert tomllib.loads(Path(resumed.pipeline).read_text()) == stopped["config"]
    run_pipeline(resumed, Console(quiet=True))
    finished = read_json(folder / "manifest.json")
    assert has_result(finished) and unfinished_runs(tmp_path) == []
    assert finished["config"]["align"]["strength"] == 0.5
    for index in kept:  # the frames finished before the stop were not made again
        assert finished["stages"]["guide"]["frames"][index] == stopped["stages"]["guide"]["frames"][index]


def test_resume_refuses_folders_that_cannot_be_resumed(tmp_path):
    from mtransfer.ui.runs import resume_request, unfinished_runs

    with pytest.raises(InputError, match="not a run folder"):
        resume_request(tmp_path)
    gone = tmp_path / "run"
    write_json(gone / "manifest.json", {"config": {"name": "x"}, "inputs": {
        "video": {"path": str(tmp_path / "missing.mp4")}, "image": {"path": str(SAMPLES / "cat.png")}}})
    with pytest.raises(InputError, match="its video .*missing.mp4 is gone"):
        resume_request(gone)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    assert unfinished_runs(tmp_path) == [gone]  # the unreadable manifest is skipped, not fatal


def test_region_from_two_clicked_corners_and_typed_boxes():
    pytest.importorskip("gradio", reason="web app test skipped: gradio not installed (pip install '.[ui]')")
    from mtransfer.ui.video_tab import corners_region, parse_region

    # Corners in either order give the same box, in fractions of the picture's width and height.
    assert corners_region((150, 20), (30, 80), (100, 200)) == "0.150, 0.200, 0.750, 0.800"
    assert corners_region((30, 80), (150, 20), (100, 200)) == "0.150, 0.200, 0.750, 0.800"
    with pytest.raises(MtransferError, match="must differ"):
        corners_region((30, 80), (30, 10), (100, 200))
    assert parse_region(" ") is None
    assert parse_region("0.1, 0.2 0.5,0.9") == (0.1, 0.2, 0.5, 0.9)
    with pytest.raises(MtransferError, match="four numbers"):
        parse_region("1, 2, x, 4")


def test_an_sd_preset_is_refused_before_any_work_without_weights_or_without_a_gpu(monkeypatch):
    """Missing weights come first (``check_models``'s one-line error); with weights but only a CPU, the
    page refuses too, with the CPU estimate, instead of starting hours of work; offline presets run."""
    pytest.importorskip("gradio", reason="web app test skipped: gradio not installed (pip install '.[ui]')")
    from mtransfer.ui import edit_tab

    with pytest.raises(InputError, match="raft-large weights .* missing"):
        edit_tab.edit_settings("paper", 0)
    if torch.cuda.is_available():
        pytest.skip("the no-GPU refusal needs a machine without CUDA")
    monkeypatch.setattr(edit_tab, "check_models", lambda model, estimator: None)  # as if the weights were here
    with pytest.raises(MtransferError, match="preset 'paper' needs a GPU here .* roughly .* hours"):
        edit_tab.edit_settings("paper", 0)
    tiny = edit_tab.edit_settings("tiny", 7)
    assert tiny.guidance.steps == 7 and tiny.guidance.preview_every == 1
    quiet = edit_tab.edit_settings("offline-demo", 0)  # 50 steps and no previews of its own: the page takes some
    shown = len(range(0, quiet.guidance.steps, quiet.guidance.preview_every))
    assert edit_tab.PREVIEWS <= shown <= 2 * edit_tab.PREVIEWS


def test_server_shutdown_stops_a_running_clip_as_ctrl_c_stops_the_cli(tmp_path, capsys):
    """The web app's Ctrl-C or SIGTERM (``stop_jobs``): the running clip stops at its next step and the
    runner's interrupt note records what is kept, as for the CLI's Ctrl-C: finished frames in the
    manifest, the lock released; the server's last line says which job stopped and how to go on."""
    import threading

    from mtransfer.cli.ui import stop_jobs
    from mtransfer.files import read_json
    from mtransfer.pipeline.manifest import LOCK
    from mtransfer.pipeline.runner import RunRequest, run_pipeline
    from mtransfer.ui.jobs import JobQueue

    folder = tmp_path / "session-1" / "video"
    reached = threading.Event()

    class HoldInGuide(JobProgress):
        def advance(self, task_id, advance=1):
            super().advance(task_id, advance)
            task = self._tasks[task_id]
            if task.description.startswith("guide") and task.completed >= 2 and not reached.is_set():
                reached.set()
                self.job.cancel_requested.wait(30)  # the server stops while this clip is in its guide stage

    def work(job):
        request = RunRequest(SAMPLES / "pan.mp4", SAMPLES / "cat.png", TEST_PRESET, (), folder)
        return run_pipeline(request, Console(quiet=True), HoldInGuide(job))

    jobs = JobQueue()
    job = jobs.submit("video", work, title="clip pan.mp4 onto cat.png", folder=folder)
    assert reached.wait(120)
    said = stop_jobs(jobs)
    assert not job.running and job.cancelled
    assert str(job.error).startswith(f"{folder}: kept decode done, flow done, align done, "
                                     "guide 2 of 4 frames")
    assert said.startswith("; 'clip pan.mp4 onto cat.png' stopped: ") and said.endswith(
        "guide 2 of 4 frames; Resume in the Video tab continues it")
    assert "stopping: 'clip pan.mp4 onto cat.png' stops at its next step" in capsys.readouterr().err
    manifest = read_json(folder / "manifest.json")
    assert manifest["stages"]["guide"]["status"] == "interrupted" and len(manifest["stages"]["guide"]["frames"]) == 2
    assert manifest["interrupted"]["kept"] == "decode done, flow done, align done, guide 2 of 4 frames"
    assert not (folder / LOCK).exists()
    with pytest.raises(MtransferError, match="stopping"):
        jobs.submit("video", work)


def test_an_edit_job_leaves_its_outputs_for_any_page_and_its_report_is_titled_from_the_upload(tmp_path):
    """The outputs a page opened later shows (summary with the verdict first, picture, report), and the
    report's title names the uploaded file, not the app's copy (source.png)."""
    pytest.importorskip("gradio", reason="web app test skipped: gradio not installed (pip install '.[ui]')")
    from mtransfer.files import read_json, save_image
    from mtransfer.ui.edit_tab import edit_work
    from mtransfer.ui.jobs import JobQueue
    from mtransfer.ui.session import Session

    save_image(tmp_path / "source.png", torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(0)))
    session = Session(tmp_path, "my cat.png")
    models = EditorCache()
    queue = JobQueue()
    folder = tmp_path / "edit-01"
    try:
        job = queue.submit("edit", lambda job: edit_work(job, session, load_settings(TEST_PRESET), "translate(2, 0)",
                                                         "", folder, models, use_mask=False), folder=folder)
        assert job.finished.wait(120) and job.error is None
        # Beyond what the test preset's toy world holds (shifts of up to 1 px at 32x48): said, as `edit` says it.
        far = queue.submit("edit", lambda job: edit_work(job, session, load_settings(TEST_PRESET), "translate(20, 0)",
                                                         "", tmp_path / "edit-02", models, use_mask=False))
        assert far.finished.wait(120) and far.error is None
    finally:
        models.close_models()
    assert job.warning is None and far.warning is not None and "outside" in far.warning, far.warning
    outputs = job.outputs
    assert outputs.summary.split(":")[0] in ("reached", "partial", "missed") and "finished in" in outputs.summary
    assert outputs.picture == folder / "edited.png" and outputs.picture.is_file() and outputs.folder == folder
    assert read_json(folder / "run.json")["image"] == "my cat.png"
    assert "<title>mtransfer edit: my cat.png</title>" in outputs.report.read_text()


def test_the_jobs_tab_shows_what_came_of_each_job_and_the_server_logs_each_start_and_end(tmp_path, capsys):
    pytest.importorskip("gradio", reason="web app test skipped: gradio not installed (pip install '.[ui]')")
    from mtransfer.files import save_image
    from mtransfer.ui.jobs import JobQueue, Outputs
    from mtransfer.ui.jobs_tab import finished_html, running_html

    picture = save_image(tmp_path / "edited.png", torch.rand(3, 8, 8))
    queue = JobQueue()
    assert "No job is running" in running_html(queue) and "No finished job" in finished_html(queue)

    def made(job):
        job.outputs = Outputs("reached: 0.1 px off", tmp_path, picture=picture, report=tmp_path / "gone.html")

    def refused(job):
        raise InputError("clip.mp4: not a readable video")

    def bug(job):
        raise ZeroDivisionError("division by zero")

    for work, title in ((made, "edit of <cat>.png"), (refused, "clip"), (bug, "another clip")):
        assert queue.submit("edit", work, title=title, folder=tmp_path).finished.wait(5)
    shown = finished_html(queue)
    assert shown.index("#3 another clip") < shown.index("#2 clip") < shown.index("#1 edit of &lt;cat&gt;.png")
    assert "failed: clip.mp4: not a readable video" in shown
    assert "failed: unexpected ZeroDivisionError: division by zero" in shown
    assert f'src="/gradio_api/file={picture.resolve()}"' in shown and "reached: 0.1 px off" in shown
    assert "report.html" not in shown  # a report that is not there is not linked
    logged = capsys.readouterr().err.splitlines()
    assert len(logged) == 6 and logged[0].endswith(f"web app: job #1 edit of <cat>.png started in {tmp_path}")
    assert logged[1].endswith("web app: job #1 finished after 0 s: reached: 0.1 px off")
    assert logged[3].endswith("web app: job #2 failed after 0 s: clip.mp4: not a readable video")
