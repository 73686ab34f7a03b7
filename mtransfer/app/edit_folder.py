"""One edit into a folder (``edit_into_folder``, used by ``mtransfer edit`` and the web app) and the files
it writes: images, flow pictures, a side-by-side comparison, loss curves, previews, an HTML report and
run.json (names in ``mtransfer.layouts.EditFolder``, ``F`` here).

A folder holds one edit: an earlier edit made with other settings is refused (``check_edit_folder``) or,
with ``restart``, moved to ``superseded/<time>/`` once the new files are complete, so old and new files
never mix.

Every file is written atomically (``mtransfer.files``), so an interrupted run never leaves half a PNG.
Target and achieved flows are colour-coded on one scale (the target's largest motion) so they compare; the
error map ``|achieved − target|`` is scaled by ``error_scale``.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from mtransfer.layouts import RUN_MANIFEST, SUPERSEDED
from mtransfer.layouts import EditFolder as F
from mtransfer.errors import OutputError, UsageError
from mtransfer.files import (
    json_ready, read_json, rescue_on_failure, save_image, staged_folder, supersede, to_uint8, write_json,
)
from mtransfer.flows.io import write_flow
from mtransfer.flows.viz import error_scale, error_to_color, flow_to_color
from mtransfer.evaluation.verdict import Verdict, motion_verdict
from mtransfer.guidance.edit import EditResult
from mtransfer.app.editor import Editor
from mtransfer.app.report import Report, ReportFrame, figure_values, write_report
from mtransfer.app.settings import RunSettings
from mtransfer.app.versions import versions
from mtransfer.validation import differences

CURVES = (("total", "energy (total)"), ("flow", "flow loss (mean |px|)"), ("color", "colour loss"),
          ("grad_norm", "guidance norm |sqrt(1-a) g| before clipping (log scale)"))
LOG_SCALE = {"grad_norm"}
_GAP = 4


def comparison(panels: list[tuple[str, torch.Tensor]]) -> np.ndarray:
    """Images ``(3, H, W)`` side by side with a caption above each, as an ``(H', W', 3)`` uint8 array."""
    height, width = panels[0][1].shape[-2:]
    zoom = max(1, 192 // height)  # small working sizes are enlarged (nearest) so the panels stay legible
    height, width = height * zoom, width * zoom
    caption = 14
    canvas = Image.new("RGB", (len(panels) * (width + _GAP) - _GAP, height + caption), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, image) in enumerate(panels):
        left = i * (width + _GAP)
        picture = Image.fromarray(to_uint8(image)).resize((width, height), Image.Resampling.NEAREST)
        canvas.paste(picture, (left, caption))
        draw.text((left + 2, 1), label, fill="black")
    return np.asarray(canvas)


def loss_curves(
    history: list[dict], clip: float | None = None, width: int = 720, panel_height: int = 150
) -> np.ndarray:
    """One panel per quantity in ``CURVES`` over the guided passes, as an ``(H, W, 3)`` uint8 array.

    Passes where a quantity was not evaluated (guidance weight 0 at that step) or is not finite are left
    out. The guidance norm is drawn on a log scale with the clip value as a red line.
    """
    canvas = Image.new("RGB", (width, panel_height * len(CURVES)), "white")
    draw = ImageDraw.Draw(canvas)
    left, right, top, bottom = 70, width - 10, 18, panel_height - 20
    count = max(len(history) - 1, 1)
    for row, (key, title) in enumerate(CURVES):
        y0 = row * panel_height
        draw.rectangle((left, y0 + top, right, y0 + bottom), outline=(160, 160, 160))
        draw.text((left, y0 + 3), title, fill="black")
        log = key in LOG_SCALE
        points = [
            (i, float(h[key])) for i, h in enumerate(history)
            if h.get(key) is not None and math.isfinite(float(h[key])) and (not log or float(h[key]) > 0)
        ]
        if not points:
            draw.text((left + 8, y0 + top + 8), "not evaluated", fill=(120, 120, 120))
            continue
        values = [v for _, v in points] + ([clip] if log and clip else [])
        low, high = min(values), max(values)
        scale = math.log10 if log else float
        span = scale(high) - scale(low) or 1.0

        def y(value: float) -> float:
            return y0 + bottom - (bottom - top) * (scale(value) - scale(low)) / span

        draw.text((4, y0 + top), f"{high:.3g}", fill="black")
        draw.text((4, y0 + bottom - 10), f"{low:.3g}", fill="black")
        draw.text((left, y0 + bottom + 4), "0", fill="black")
        draw.text((right - 60, y0 + bottom + 4), f"pass {len(history)}", fill="black")
        if log and clip:
            draw.line([(left, y(clip)), (right, y(clip))], fill=(214, 39, 40), width=1)
            draw.text((right - 80, y(clip) - 12), f"clip {clip:g}", fill=(214, 39, 40))
        xy = [(left + (right - left) * i / count, y(v)) for i, v in points]
        draw.line(xy if len(xy) > 1 else xy * 2, fill=(31, 119, 180), width=2)
    return np.asarray(canvas)


Phase = Callable[[str, int], Callable[[], None]]
"""``phase(name, total)``: a phase of ``total`` ticks begins; returns what to call after each tick."""


def tensor_id(tensor: torch.Tensor | None) -> str | None:
    """A short content hash of an input as the command read it (a flow from a spec or a file, a mask)."""
    if tensor is None:
        return None
    data = tensor.detach().float().cpu().contiguous().numpy()
    return f"{tuple(data.shape)} sha256 {hashlib.sha256(data.tobytes()).hexdigest()[:16]}"


def edit_key(
    settings: RunSettings, size: Sequence[int], prompt: str, source: torch.Tensor, target_flow: torch.Tensor,
    edit_mask: torch.Tensor | None = None, trajectory: str | None = None,
) -> dict[str, Any]:
    """What an edit's files depend on: the settings the guide stage declares it shapes and the inputs as
    read (``trajectory``: an id of the trajectory file). Kept in ``run.json`` so that a later edit into the
    folder knows whether it would replace the same edit; also the key of a rescued write."""
    return {
        "command": "edit", **settings.by_stage()["guide"], "size": list(size), "prompt": prompt,
        "inputs": {"image": tensor_id(source), "flow": tensor_id(target_flow), "mask": tensor_id(edit_mask),
                   "trajectory": trajectory},
    }


def check_edit_folder(
    folder: str | Path, key: dict[str, Any] | None = None, restart: bool = False, option: str = "--out"
) -> Path:
    """Refuse, before any work, a folder an edit with ``key`` must not be written into: a ``mtransfer run``
    folder (the edit's report would replace the run's), a folder of other files, or (unless ``restart``) an
    earlier edit made with other settings. Without ``key`` only the first is checked."""
    folder = Path(folder)
    if (folder / RUN_MANIFEST).exists():
        raise OutputError(f"{folder}: is a `mtransfer run` folder ({RUN_MANIFEST}); choose another {option} for the edit")
    if key is None or not folder.is_dir() or not any(p.name != SUPERSEDED for p in folder.iterdir()):
        return folder
    record_path = folder / F.RECORD
    if not record_path.is_file():
        raise OutputError(f"{folder}: holds files but no {F.RECORD}, so it is no finished edit; choose an "
                          f"empty or new {option} folder")
    record = read_json(record_path)
    recorded = record.get("key") if isinstance(record, dict) else None
    if restart or recorded == key:
        return folder
    if isinstance(recorded, dict):
        changes = differences(recorded, key)
        shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
    else:
        shown = f"its {F.RECORD} records no settings key: an older mtransfer wrote it"
    named = isinstance(record, dict) and "flow" in record
    earlier = f" (of {record.get('image')} by {record['flow']!r})" if named else ""
    raise UsageError(f"{folder}: holds an edit{earlier} made with other settings ({shown}); use {option} NEW_FOLDER "
                     f"to keep it, or --restart to move it to {folder / SUPERSEDED} and edit anew")


def edit_into_folder(
    folder: str | Path,
    editor: Editor,
    source: torch.Tensor,
    target_flow: torch.Tensor,
    *,
    command: str,
    image: str,
    flow: str,
    prompt: str,
    drawn_at: Sequence[int] | None = None,
    edit_mask: torch.Tensor | None = None,
    mask: str | None = None,
    trajectory: tuple[str, list[torch.Tensor], str] | None = None,
    overrides: Sequence[str] = (),
    warnings: Sequence[str] = (),
    load_timing: dict[str, float] | None = None,
    phase: Phase = lambda name, total: lambda: None,
    preview: Callable[[int, torch.Tensor], None] | None = None,
    restart: bool = False,
    rescue: bool = False,
) -> tuple[EditResult, Path | None]:
    """Edit ``source`` towards ``target_flow`` with ``editor`` and write the edit into ``folder``.

    ``image``, ``flow`` and ``mask`` say in ``run.json`` where the inputs came from (``edit_mask`` is the
    mask itself), ``drawn_at`` the size a motion spec was drawn at (default: the working size);
    ``trajectory`` is ``(path, latents, id)`` of a generated image's own noise trajectory. ``phase`` hears
    of each phase (prepare, guide, writing) and gives its tick. ``rescue`` keeps the files elsewhere when
    writing them fails (``mtransfer.files.rescue_on_failure``). Returns the result and where an earlier
    edit was moved (``restart``), or None.
    """
    settings, guidance = editor.settings, editor.settings.guidance
    size = list(source.shape[-2:])
    trajectory_id = None if trajectory is None else trajectory[2]
    key = edit_key(settings, size, prompt, source, target_flow, edit_mask, trajectory_id)
    check_edit_folder(folder, key, restart)
    started = time.perf_counter()
    state = editor.prepare(
        source, prompt, progress=phase("generation" if trajectory else guidance.source_noise, guidance.steps),
        trajectory=None if trajectory is None else trajectory[1],
    )
    timing = {**(load_timing or {}), "prepare_s": time.perf_counter() - started}
    tick = phase("guide", guidance.steps * guidance.recursions)
    result = editor.edit(state, target_flow, edit_mask=edit_mask, progress=tick, preview=preview)
    phase("writing", 0)
    record = {
        "command": command, "image": image, "flow": flow, "drawn_at": list(drawn_at or size), "mask": mask,
        "trajectory": None if trajectory is None else trajectory[0], "prompt": prompt, "pipeline": settings.name,
        "overrides": list(overrides), "size": size, "device": str(editor.device), "model": asdict(settings.model),
        "estimator": asdict(settings.estimator), "guidance": asdict(guidance), "seed": guidance.seed,
        "versions": versions(), "warnings": list(warnings), "load_timing": timing, "key": key,
    }
    if not rescue:
        return result, write_edit(folder, source, target_flow, result, record, restart, edit_mask)
    with rescue_on_failure(folder, key, lambda where: write_edit(where, source, target_flow, result, record,
                                                                 edit_mask=edit_mask)):
        return result, write_edit(folder, source, target_flow, result, record, restart, edit_mask)


def superseding(folder: str | Path, moved: list[Path | None]) -> Callable[[], None]:
    """For ``staged_folder(clear=...)``: move every earlier file of ``folder`` to ``superseded/<time>/``
    (where to is appended to ``moved``)."""
    folder = Path(folder)

    def clear() -> None:
        earlier = [p for p in folder.iterdir() if p.name != SUPERSEDED] if folder.is_dir() else []
        moved.append(supersede(folder, earlier))

    return clear


def write_edit(
    folder: str | Path, source: torch.Tensor, target_flow: torch.Tensor, result: EditResult, record: dict[str, Any],
    restart: bool = False,
    edit_mask: torch.Tensor | None = None,
) -> Path | None:
    """Write an edit's files into ``folder``; ``record`` (settings, versions, ``key``, ...) goes into ``run.json``.

    ``run.json`` is written last and gains ``status`` (``ok`` or ``diverged``), the ``verdict`` on the
    achieved flow inside ``edit_mask`` (``motion_verdict``, by the guiding estimator ``record["estimator"]``),
    the final losses and the timings, so a folder with a ``run.json`` is a finished one. The files are
    written beside ``folder`` first (``staged_folder``): a write that fails leaves ``folder`` as it was. With
    ``restart`` the files already there are moved to ``superseded/<time>/`` just before the new ones move in;
    returns where to (None when nothing was moved).
    """
    check_edit_folder(folder, record.get("key"), restart)
    measured_by = f"the guiding estimator {(record.get('estimator') or {}).get('name', '')}".rstrip()
    verdict = motion_verdict(result.achieved_flow, target_flow, edit_mask, measured_by=measured_by)
    moved: list[Path | None] = []
    with staged_folder(folder, F.RECORD, superseding(folder, moved) if restart else None) as stage:
        _write_edit_files(stage, source, target_flow, result, {**record, "verdict": verdict.record()}, verdict)
    return moved[0] if moved else None


def _write_edit_files(
    folder: Path, source: torch.Tensor, target_flow: torch.Tensor, result: EditResult, record: dict[str, Any],
    verdict: Verdict,
) -> None:
    scale = float(target_flow.norm(dim=0).max()) or None
    target_picture = flow_to_color(target_flow, scale)
    achieved_picture = flow_to_color(result.achieved_flow, scale)
    save_image(folder / F.SOURCE, source)
    save_image(folder / F.EDITED, result.image)
    write_flow(folder / F.TARGET_FLOW, target_flow)  # what `mtransfer eval` judges the edit against
    save_image(folder / F.TARGET_PICTURE, target_picture)
    save_image(folder / F.ACHIEVED_PICTURE, achieved_picture)
    error = (result.achieved_flow.float().cpu() - target_flow.float().cpu()).norm(dim=0)
    top_error = error_scale([error], scale or 0.0)
    save_image(folder / F.ERROR_PICTURE, error_to_color(error, top_error))
    edit_label = "edit (DIVERGED)" if result.diverged else "edit"
    save_image(
        folder / F.COMPARISON,
        comparison([("source", source), ("target flow", target_picture), (edit_label, result.image),
                    ("achieved flow", achieved_picture)]),
    )
    clip = record.get("guidance", {}).get("clip_grad")
    save_image(folder / F.LOSS_CURVES, loss_curves(result.losses, clip=clip or None))
    for step, preview in result.previews:
        save_image(folder / F.preview(step), preview)
    write_json(folder / F.LOSSES, result.losses)
    final = json_ready(result.losses[-1]) if result.losses else {}
    _write_edit_report(folder, record, result, scale or 0.0, error, top_error, final, verdict)
    write_json(
        folder / F.RECORD,
        {
            **record,
            "status": "diverged" if result.diverged else "ok",
            "divergence": result.divergence,
            "final_losses": {k: v for k, v in final.items() if k not in ("step", "recursion", "t")},
            "achieved_flow_error_px": {"mean": float(error.mean()), "max": float(error.max())},
            "timing": result.timing,
            "passes": len(result.losses),
            "previews": [F.preview(step) for step, _ in result.previews],
        },
    )


def _write_edit_report(
    folder: Path, record: dict[str, Any], result: EditResult, scale: float, error: torch.Tensor, top_error: float,
    final: dict, verdict: Verdict,
) -> Path:
    """``report.html``: the run report's layout for one frame (source | target flow | edit | achieved flow)."""
    figures = {
        "seconds": result.timing.get("sampling_s"),
        "flow_error_mean_px": float(error.mean()),
        "flow_error_max_px": float(error.max()),
        **{f"final_{key}": value for key, value in final.items() if key not in ("step", "recursion", "t")},
    }
    frame = ReportFrame(
        index=0, target_flow=F.TARGET_PICTURE, motion_px=scale, still=scale == 0, result=F.EDITED,
        achieved_flow=F.ACHIEVED_PICTURE, flow_error=F.ERROR_PICTURE,
        status="diverged" if result.diverged else verdict.label, figures=figure_values(figures),
    )
    size = record.get("size") or list(result.image.shape[-2:])
    summary = [
        f"{Path(str(record.get('image', 'image'))).name} at {size[1]}x{size[0]} (width x height), motion "
        f"{record.get('flow')!s}; pipeline '{record.get('pipeline')}', "
        + (f"prompt {record['prompt']!r}." if record.get("prompt") else "no prompt."),
        f"{len(result.losses)} guided passes; status {'DIVERGED: ' + str(result.divergence) if result.diverged else 'ok'}.",
        f"Motion {verdict.describe()}.",
    ]
    files = [F.EDITED, F.COMPARISON, F.SOURCE, F.TARGET_PICTURE, F.ACHIEVED_PICTURE, F.ERROR_PICTURE, F.LOSS_CURVES,
             F.LOSSES, F.RECORD]
    return write_report(folder / F.REPORT, Report(
        title=f"mtransfer edit: {Path(str(record.get('image', 'image'))).name}", summary=summary, source=F.SOURCE,
        frames=[frame], flow_scale_px=scale, error_scale_px=top_error,
        settings={k: v for k, v in record.items() if k != "key"}, files=files,
        pictures=[(F.LOSS_CURVES, "energy, flow loss, colour loss and guidance norm over the guided passes")],
    ))

