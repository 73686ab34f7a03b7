"""The figures of an evaluation, named once: ``evaluate_run`` averages them, ``evaluation_table`` prints
them, the run report plots and tabulates them (``FIGURES`` for its column names, ``plot``/``reference``
for its plots) and ``summary_line`` says them in one sentence. ``metrics`` computes them under these keys."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One per-frame figure: its key, a readable name (report), a short column header (terminal; None:
    not in the terminal table), a format, and the report's plot of it (None: table only) with the figure
    drawn dashed beside it."""

    key: str
    name: str
    column: str | None
    format: str
    plot: str | None = None
    reference: str | None = None


MOTION_KEY = "max_motion_px"
"""Each frame's largest target motion: which frames move (only those are averaged), not a figure itself."""

FIGURE_TABLE = (
    Figure("epe_edit", "EPE in mask (px)", "EPE mask", "{:.2f}",
           "fidelity: EPE in the edit mask (px); dashed: overall", "epe_all"),
    Figure("epe_all", "EPE overall (px)", "EPE all", "{:.2f}"),
    Figure("within_1px_edit", "within 1 px in mask", "≤1px", "{:.0%}"),
    Figure("within_1px_all", "within 1 px overall", None, "{:.0%}"),
    Figure("psnr", "PSNR outside mask (dB)", "PSNR", "{:.1f}"),
    Figure("ssim", "SSIM outside mask", "SSIM", "{:.3f}", "preservation: SSIM outside the edit mask (1: untouched)"),
    Figure("warping_error", "warping error", "warp", "{:.4f}",
           "temporal consistency: warping error (lower is steadier); dashed: naive baseline", "baseline_warping_error"),
    Figure("baseline_warping_error", "naive warping error", "naive", "{:.4f}"),
)

FIGURES = {figure.key: figure.name for figure in FIGURE_TABLE}
"""The per-frame figures of an evaluation (averaged in its summary), with readable names for the report."""


def shown(key: str, value: Any) -> str:
    """``value`` of the figure ``key`` in its format; "–" when not measured, "∞" when infinite."""
    if value is None:
        return "–"
    if value == math.inf:
        return "∞"
    return next(f.format for f in FIGURE_TABLE if f.key == key).format(value)


def summary_line(evaluation: dict[str, Any]) -> str:
    """One sentence: the judge and the means over the moving frames."""
    mean, judge = evaluation["summary"], evaluation["judge"]

    def value(key: str) -> str:
        return shown(key, mean.get(key))

    return (
        f"Evaluation by {judge['estimator']} (not the guidance estimator {judge['guidance_estimator']}), means over "
        f"the moving frames: EPE {value('epe_edit')} px in the edit mask ({value('within_1px_edit')} "
        f"within 1 px); outside it PSNR {value('psnr')} dB, SSIM {value('ssim')}; warping error "
        f"{value('warping_error')} (naive baseline {value('baseline_warping_error')})."
    )
