"""The one-screen terminal summary of an evaluation, shown by ``mtransfer eval`` and at the end of ``mtransfer run``."""

from __future__ import annotations

from rich.table import Table

_COLUMNS = (  # key, header, format
    ("max_motion_px", "|T|", "{:.1f}"),
    ("epe_edit", "EPE mask", "{:.2f}"),
    ("epe_all", "EPE all", "{:.2f}"),
    ("within_1px_edit", "≤1px", "{:.0%}"),
    ("psnr", "PSNR", "{:.1f}"),
    ("ssim", "SSIM", "{:.3f}"),
    ("warping_error", "warp", "{:.4f}"),
    ("baseline_warping_error", "naive", "{:.4f}"),
)
_MAX_ROWS = 16


def _cell(value: object, fmt: str) -> str:
    if value is None:
        return "–"
    return fmt.format(value)


def evaluation_table(evaluation: dict) -> Table:
    """One screen: a row per frame (the first ones when there are many) and the summary row."""
    judge = evaluation["judge"]
    table = Table(title=f"{evaluation['folder']}  (judge: {judge['estimator']}, guided by: {judge['guidance_estimator']})")
    table.add_column("frame", justify="right")
    for _, header, _ in _COLUMNS:
        table.add_column(header, justify="right")
    frames = evaluation["frames"]
    for row in frames[:_MAX_ROWS]:
        table.add_row(str(row["frame"]), *(_cell(row.get(key), fmt) for key, _, fmt in _COLUMNS))
    if len(frames) > _MAX_ROWS:
        table.add_row(f"… {len(frames) - _MAX_ROWS} more", *[""] * len(_COLUMNS))
    summary = evaluation["summary"]
    table.add_row("mean", "", *(_cell(summary.get(key), fmt) for key, _, fmt in _COLUMNS[1:]), style="bold")
    counts = ", ".join(f"{count} {label}" for label, count in (evaluation.get("verdicts") or {}).items() if count)
    if counts:  # reached / partial / missed by the judge (mtransfer.evaluation.verdict), one line under the table
        table.caption = f"judge's verdicts on the moving frames: {counts}"
    return table
