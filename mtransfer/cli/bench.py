"""``mtransfer bench``: the guided-step benchmark (``benchmarks/guided_step.py``) from the command line.

The benchmark lives in the repository's ``benchmarks/`` folder, not in the installed package, so this
command works from a source checkout (editable install) and says so otherwise. Every option is the
benchmark's own; ``mtransfer bench --help`` prints them.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import typer

from mtransfer.cli import app
from mtransfer.errors import MtransferError

REPOSITORY = Path(__file__).resolve().parents[2]


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def bench(ctx: typer.Context) -> None:
    """Time one motion-guided pass (random SD v1.4 + RAFT) for the fp32 baseline and fast variants.

    Options are passed to ``python -m benchmarks.guided_step``; see ``mtransfer bench --help`` and BENCHMARKS.md.
    """
    if not (REPOSITORY / "benchmarks" / "guided_step.py").is_file():
        raise MtransferError(
            f"{REPOSITORY / 'benchmarks'}: no benchmarks folder; `mtransfer bench` needs a source checkout of mtransfer"
        )
    if str(REPOSITORY) not in sys.path:
        sys.path.insert(0, str(REPOSITORY))
    guided_step = importlib.import_module("benchmarks.guided_step")
    try:
        guided_step.main(ctx.args, prog="mtransfer bench")
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        raise typer.Exit(exc.code or 0) from None
