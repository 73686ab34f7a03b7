"""``mtransfer bench``: the guided-step benchmark (``mtransfer.bench.guided_step``) from the command line.

Every option is the benchmark's own; ``mtransfer bench --help`` prints them.
"""

from __future__ import annotations

import typer

from mtransfer.cli import app


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def bench(ctx: typer.Context) -> None:
    """Time one motion-guided pass (random SD v1.4 + RAFT) for the fp32 baseline and fast variants.

    Options are the benchmark's (``mtransfer.bench.guided_step``); see ``mtransfer bench --help`` and BENCHMARKS.md.
    """
    from mtransfer.bench.options import parse

    try:
        args = parse(ctx.args, prog="mtransfer bench")
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        raise typer.Exit(exc.code or 0) from None
    from mtransfer.bench.guided_step import run_parsed  # diffusers is slow to import: only when the bench runs

    run_parsed(args)
