"""``mtransfer eval FOLDER``: judge a run or edit folder: motion fidelity, preservation, temporal consistency."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mtransfer.cli import app, console
from mtransfer.evaluation import EVALUATION, evaluate_run
from mtransfer.progress import progress_bar

EXAMPLES = """\
[bold]Examples[/]

  [cyan]mtransfer eval outputs/pan-onto-cat[/]
      every frame of a `mtransfer run` folder, judged by RAFT when its weights are here, else TV-L1

  [cyan]mtransfer eval outputs/cat-edit --estimator tvl1[/]
      one `mtransfer edit` folder, with a chosen judge

Writes evaluation.json into the folder. Fidelity is the end-point error (px) between the target flow and
the flow the judge measures from the source to the result; preservation is PSNR/SSIM outside the edit
mask; the warping error compares consecutive frames moved back by their target flows (lower is steadier),
next to the same figure for the source simply pushed along each target flow.
"""

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
    return table


@app.command("eval", epilog=EXAMPLES)
def eval_command(
    folder: Path = typer.Argument(..., help="A folder written by `mtransfer run` or `mtransfer edit`.", show_default=False),
    estimator: str | None = typer.Option(
        None, help="Judge estimator (raft-large, raft-small, tvl1, ...). [default: RAFT if its weights are "
        "here and it did not guide the edit, else tvl1]", show_default=False,
    ),
    device: str = typer.Option("cpu", help="Device for the judge: cpu, cuda, ..."),
) -> None:
    """Judge the edits in FOLDER independently of the estimator that guided them."""
    with progress_bar(console) as progress:
        tasks = []  # the bar appears once the folder has been read and its frames counted

        def advance(total: int) -> None:
            if total:
                tasks.append(progress.add_task("judge", total=total))
            else:
                progress.advance(tasks[0])

        evaluation = evaluate_run(folder, device=device, estimator=estimator, progress=advance)
    Console().print(evaluation_table(evaluation))
    console.print(f"[green]written[/] {folder / EVALUATION}", highlight=False)
