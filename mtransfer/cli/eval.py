"""``mtransfer eval FOLDER``: judge a run or edit folder: motion fidelity, preservation, temporal consistency."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from mtransfer.cli import app, console
from mtransfer.cli.options import QUIET_HELP

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

@app.command("eval", epilog=EXAMPLES)
def eval_command(
    folder: Path = typer.Argument(..., help="A folder written by `mtransfer run` or `mtransfer edit`.", show_default=False),
    estimator: str | None = typer.Option(
        None, help="Judge estimator (raft-large, raft-small, tvl1, ...). [default: RAFT if its weights are "
        "here and it did not guide the edit, else tvl1]", show_default=False,
    ),
    device: str = typer.Option("cpu", help="Device for the judge: cpu, cuda, ..."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Judge the edits in FOLDER independently of the estimator that guided them."""
    from mtransfer.evaluation import EVALUATION, evaluate_run, evaluation_table  # torch: not for --help
    from mtransfer.progress import progress_bar

    with progress_bar(console, quiet=quiet) as progress:
        tasks = []  # the bar appears once the folder has been read and its frames counted

        def advance(total: int) -> None:
            if total:
                tasks.append(progress.add_task("judge", total=total))
            else:
                progress.advance(tasks[0])

        evaluation = evaluate_run(folder, device=device, estimator=estimator, progress=advance)
    Console().print(evaluation_table(evaluation))
    console.print(f"[green]written[/] {folder / EVALUATION}", highlight=False)
