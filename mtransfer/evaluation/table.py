"""The one-screen terminal summary of an evaluation, shown by ``mtransfer eval`` and at the end of ``mtransfer run``."""

from __future__ import annotations

from rich.table import Table

from mtransfer.evaluation.figures import FIGURE_TABLE, MOTION_KEY

_COLUMNS = ((MOTION_KEY, "|T|", "{:.1f}"),) + tuple(  # key, header, format
    (figure.key, figure.column, figure.format) for figure in FIGURE_TABLE if figure.column
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
