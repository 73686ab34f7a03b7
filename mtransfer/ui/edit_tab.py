"""The Edit tab: a motion-guided edit of the Motion tab's image towards its motion, run as a job with a
progress bar and the one-step estimate refreshing while it runs, then the result against the target
(flows side by side, flow error, losses, the run folder as a zip). The models stay loaded between edits
(``Shared.models``): a second edit with the same model and estimator does not load them again."""

from __future__ import annotations

import html
import shutil
import time
from dataclasses import replace
from pathlib import Path

import gradio as gr

from mtransfer.app import EditorCache, check_models, cpu_warning, load_settings, world_warning
from mtransfer.errors import DeviceError, MtransferError, UsageError
from mtransfer.evaluation.verdict import Verdict
from mtransfer.files import load_image, read_json_object
from mtransfer.flows import read_mask, resize_flow
from mtransfer.app.edit_folder import edit_into_folder
from mtransfer.guidance.edit import motionless
from mtransfer.layouts import EditFolder
from mtransfer.ui.jobs import Job, Outputs
from mtransfer.ui.session import (
    QUIET, FLOW_PX, POLL_S, RESULT_PX, SHOWN, Session, Shared, file_link, job_html, legend, page_error, picture,
    preset_choice, session_of, shows_problems, warning_html,
)

PREVIEWS = 10
"""The one-step estimate is shown about this many times per edit when the preset keeps no previews."""


def edit_settings(preset: str, steps: int):
    """The preset's settings with ``steps`` guidance steps (0 = the preset's) and previews every few steps,
    refused with the reason when the models are missing or Stable Diffusion would run on a CPU."""
    settings = load_settings(preset, [f"guidance.steps={int(steps)}"] if steps else [])
    check_models(settings.model, settings.estimator)
    guidance = settings.guidance
    warning = cpu_warning(settings.model, settings.model.torch_device(), guidance.steps * guidance.recursions, 1)
    if warning:
        raise DeviceError(f"preset '{preset}' needs a GPU here (no CUDA device is visible). {warning} "
                          "The web app does not start such a job; `mtransfer edit` does, if you mean it.")
    if not guidance.preview_every:
        settings = replace(settings, guidance=replace(guidance, preview_every=max(1, guidance.steps // PREVIEWS)))
    return settings


def edit_work(job: Job, session: Session, settings, spec: str, prompt: str, folder: Path, models: EditorCache,
              use_mask: bool):
    """The job: get the models (kept from the last edit when they match), edit the session's image towards
    ``spec`` (inside the session's mask when ``use_mask``), write the run folder and its zip, and leave the
    job's ``outputs`` for any page (this one may have been closed meanwhile)."""
    source_path = session.folder / EditFolder.SOURCE
    working = settings.model.working_size(session.original_size, source_path)
    source = load_image(source_path, size=working)
    target = resize_flow(session.flow(spec), working)
    mask = read_mask(Path(session.mask), size=working) if use_mask and session.mask else None
    job.warning = world_warning(settings.model, [target], [mask])  # said before the work, as `edit` says it
    job.begin("loading models", 0)
    warnings: list[str] = []
    loads = models.loads
    editor = models.editor(settings, source, warn=warnings.append)
    reused = models.loads == loads

    def phase(name: str, total: int):
        job.begin(name, total)
        return job.tick

    result, _ = edit_into_folder(
        folder, editor, source, target, command="ui edit", image=session.name, flow=spec,
        prompt=prompt or settings.model.prompt, edit_mask=mask,
        mask="the Motion tab's mask" if mask is not None else None, drawn_at=session.original_size,
        warnings=warnings, phase=phase, preview=job.show,
    )
    archive = shutil.make_archive(str(folder), "zip", root_dir=folder)
    masked = mask is not None
    verdict = Verdict.from_record(read_json_object(folder / EditFolder.RECORD, "an edit record")["verdict"])
    final = result.losses[-1] if result.losses else {}
    summary = (f"{verdict.describe()}; finished in {time.perf_counter() - job.started:.1f} s "
               f"({'models kept loaded from the last edit' if reused else 'models loaded'}"
               f"{', edited inside the mask' if masked else ''})"
               + (f", final flow loss {final['flow']:.4g}" if "flow" in final else "")
               + (" — DIVERGED: " + str(result.divergence) if result.diverged else ""))
    job.outputs = Outputs(summary, folder, picture=folder / EditFolder.EDITED, report=folder / EditFolder.REPORT)
    return result, Path(archive), reused, masked


def build(shared: Shared, spec: gr.Textbox) -> None:
    """Lay out the Edit tab in the current context; ``spec`` is the Motion tab's spec text box."""

    @shows_problems
    def on_edit(session, spec, preset, prompt, steps, use_mask):
        session = session_of(session)
        if not spec.strip():
            raise UsageError("no motion yet: build one in the Motion tab")
        try:
            settings = edit_settings(preset, steps or 0)
        except MtransferError as exc:  # missing weights, no GPU: said where the status is, as well as in a toast
            gr.Warning(str(exc), duration=None)
            yield {edit_status: f'<strong style="color: #b91c1c">cannot start:</strong> {html.escape(str(exc))}'}
            return
        if motionless(session.flow(spec)):  # a bad spec fails here, before the job starts
            raise UsageError("this motion moves no pixel, so there is nothing to edit")
        session.edits += 1
        folder = session.folder / f"edit-{session.edits:02d}"
        job = shared.queue.submit("edit", lambda job: edit_work(
            job, session, settings, spec, prompt, folder, shared.models, bool(use_mask)),
            title=f"edit of {session.name} ({spec if len(spec) <= 60 else spec[:57] + '...'})", folder=folder)
        yield {**{box: None for box in results}, edit_zip: None, edit_links: ""}  # the last edit's results go
        shown = None
        while not job.finished.wait(POLL_S):  # a closed page stops following; the job goes on (Jobs tab)
            update = {edit_status: job_html(job)}
            if job.picture is not None and job.picture[0] != shown:
                shown = job.picture[0]
                update[edit_preview] = gr.update(value=picture(job.picture[1]),
                                                 label=f"One-step estimate at step {shown}")
            yield update
        if job.cancelled:
            yield {edit_status: html.escape(f"cancelled while {job.status().split(' · ')[0]}: the worker "
                                            f"stopped; nothing was written to {folder.name}")}
            return
        if job.error is not None:
            raise page_error(job.error)
        _, archive, _, _ = job.result
        yield {
            edit_status: html.escape(job.outputs.summary) + warning_html(job),
            edit_result: str(folder / EditFolder.EDITED),
            edit_target: str(folder / EditFolder.TARGET_PICTURE),
            edit_achieved: str(folder / EditFolder.ACHIEVED_PICTURE),
            edit_error: str(folder / EditFolder.ERROR_PICTURE),
            edit_loss: str(folder / EditFolder.LOSS_CURVES),
            edit_zip: str(archive),
            edit_links: f"{file_link(folder / EditFolder.REPORT, EditFolder.REPORT)} · run folder `{folder}`",
        }

    with gr.Row():
        preset = preset_choice(shared, "edit-preset")
        prompt = gr.Textbox(label="Prompt (optional)", info="model.prompt")
        steps = gr.Number(0, label="Guidance steps (0 = the preset's)", info="guidance.steps", precision=0,
                          minimum=0, maximum=500, elem_id="edit-steps")
        use_mask = gr.Checkbox(True, label="Edit only inside the Motion tab's mask (when one is set)")
    with gr.Row():
        run_edit = gr.Button("Run edit", variant="primary", elem_id="run-edit")
        cancel_edit = gr.Button("Cancel", elem_id="cancel-edit")
    edit_status = gr.HTML(elem_id="edit-status")
    with gr.Row(equal_height=True):
        shown = {"interactive": False, "height": RESULT_PX, "elem_classes": SHOWN}
        edit_source = gr.Image(label="Source", elem_id="edit-source", format="png", **shown)
        edit_preview = gr.Image(label="One-step estimate (while the edit runs)", elem_id="edit-preview", format="png",
                                **shown)
        edit_result = gr.Image(label="Edited image", elem_id="edit-result", **shown)
    with gr.Row(equal_height=True):
        shown = {"interactive": False, "height": FLOW_PX, "elem_classes": SHOWN}
        edit_target = gr.Image(label="Target flow", elem_id="edit-target", **shown)
        edit_achieved = gr.Image(label="Achieved flow", **shown)
        edit_error = gr.Image(label="Flow error (achieved − target; bright = far off)", **shown)
        legend(elem_id="edit-legend")
    with gr.Row():
        edit_loss = gr.Image(label="Losses", interactive=False, elem_id="edit-loss")
        with gr.Column():
            edit_zip = gr.File(label="Run folder (zip)", elem_id="edit-zip")
            edit_links = gr.Markdown()

    results = [edit_preview, edit_result, edit_target, edit_achieved, edit_error, edit_loss]
    edit_outputs = [edit_status, *results, edit_zip, edit_links]
    run_edit.click(on_edit, [shared.session, spec, preset, prompt, steps, use_mask], edit_outputs,
                   concurrency_limit=1, **QUIET)
    cancel_edit.click(lambda: shared.queue.cancel("edit"), None, edit_status, **QUIET)
    shared.session.change(lambda session: None if session is None else str(session.folder / EditFolder.SOURCE),
                          shared.session, edit_source, **QUIET)  # the file: the painter shows the same pixels
