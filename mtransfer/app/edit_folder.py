"""The files of one edit: images, flow pictures, a side-by-side comparison, loss curves, previews, an HTML
report and run.json.

Every file is written atomically (``mtransfer.files``), so an interrupted run never leaves half a PNG.
Target and achieved flows are colour-coded on one scale (the target's largest motion) so they compare; the
error map ``|achieved − target|`` is scaled by ``error_scale``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from mtransfer.layouts import EDIT_RECORD, RUN_MANIFEST
from mtransfer.errors import OutputError
from mtransfer.files import save_image, staged_folder, to_uint8, write_json
from mtransfer.flows.io import write_flow
from mtransfer.flows.viz import error_scale, error_to_color, flow_to_color
from mtransfer.evaluation.verdict import Verdict, motion_verdict
from mtransfer.guidance.edit import EditResult
from mtransfer.app.report import Report, ReportFrame, figure_values, write_report

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


def check_edit_folder(folder: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, to write an edit into a ``mtransfer run`` folder: the edit's files would
    sit among the run's and its report would replace the run's."""
    folder = Path(folder)
    if (folder / RUN_MANIFEST).exists():
        raise OutputError(f"{folder}: is a `mtransfer run` folder ({RUN_MANIFEST}); choose another {option} for the edit")
    return folder


def write_edit(
    folder: str | Path, source: torch.Tensor, target_flow: torch.Tensor, result: EditResult, record: dict[str, Any],
    edit_mask: torch.Tensor | None = None,
) -> Path:
    """Write an edit's files into ``folder``; ``record`` (settings, versions, ...) goes into ``run.json``.

    ``run.json`` is written last and gains ``status`` (``ok`` or ``diverged``), the ``verdict`` on the
    achieved flow inside ``edit_mask`` (``motion_verdict``, by the guiding estimator ``record["estimator"]``),
    the final losses and the timings, so a folder with a ``run.json`` is a finished one. The files are
    written beside ``folder`` first (``staged_folder``): a write that fails leaves ``folder`` as it was.
    """
    check_edit_folder(folder)
    measured_by = f"the guiding estimator {(record.get('estimator') or {}).get('name', '')}".rstrip()
    verdict = motion_verdict(result.achieved_flow, target_flow, edit_mask, measured_by=measured_by)
    with staged_folder(folder) as stage:
        _write_edit_files(stage, source, target_flow, result, {**record, "verdict": verdict.record()}, verdict)
    return Path(folder)


def _write_edit_files(
    folder: Path, source: torch.Tensor, target_flow: torch.Tensor, result: EditResult, record: dict[str, Any],
    verdict: Verdict,
) -> None:
    scale = float(target_flow.norm(dim=0).max()) or None
    target_picture = flow_to_color(target_flow, scale)
    achieved_picture = flow_to_color(result.achieved_flow, scale)
    save_image(folder / "source.png", source)
    save_image(folder / "edited.png", result.image)
    write_flow(folder / "target_flow.flo", target_flow)  # what `mtransfer eval` judges the edit against
    save_image(folder / "target_flow.png", target_picture)
    save_image(folder / "achieved_flow.png", achieved_picture)
    error = (result.achieved_flow.float().cpu() - target_flow.float().cpu()).norm(dim=0)
    top_error = error_scale([error], scale or 0.0)
    save_image(folder / "flow_error.png", error_to_color(error, top_error))
    edit_label = "edit (DIVERGED)" if result.diverged else "edit"
    save_image(
        folder / "comparison.png",
        comparison([("source", source), ("target flow", target_picture), (edit_label, result.image),
                    ("achieved flow", achieved_picture)]),
    )
    clip = record.get("guidance", {}).get("clip_grad")
    save_image(folder / "loss.png", loss_curves(result.losses, clip=clip or None))
    for step, preview in result.previews:
        save_image(folder / "previews" / f"step_{step:04d}.png", preview)
    write_json(folder / "losses.json", [_finite(h) for h in result.losses])
    final = _finite(result.losses[-1]) if result.losses else {}
    _write_edit_report(folder, record, result, scale or 0.0, error, top_error, final, verdict)
    write_json(
        folder / EDIT_RECORD,
        {
            **record,
            "status": "diverged" if result.diverged else "ok",
            "divergence": result.divergence,
            "final_losses": {k: v for k, v in final.items() if k not in ("step", "recursion", "t")},
            "achieved_flow_error_px": {"mean": float(error.mean()), "max": float(error.max())},
            "timing": result.timing,
            "passes": len(result.losses),
            "previews": [f"previews/step_{step:04d}.png" for step, _ in result.previews],
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
        index=0, target_flow="target_flow.png", motion_px=scale, still=scale == 0, result="edited.png",
        achieved_flow="achieved_flow.png", flow_error="flow_error.png",
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
    files = ["edited.png", "comparison.png", "source.png", "target_flow.png", "achieved_flow.png", "flow_error.png",
             "loss.png", "losses.json", EDIT_RECORD]
    return write_report(folder / "report.html", Report(
        title=f"mtransfer edit: {Path(str(record.get('image', 'image'))).name}", summary=summary, source="source.png",
        frames=[frame], flow_scale_px=scale, error_scale_px=top_error, settings=record, files=files,
        pictures=[("loss.png", "energy, flow loss, colour loss and guidance norm over the guided passes")],
    ))


def _finite(values: dict) -> dict:
    """JSON has no NaN or infinity: such values (from a diverged run) are written as null."""
    return {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in values.items()}
