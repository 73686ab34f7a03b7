"""The ``mtransfer`` command line: one typer app, one module per sub-command, one error path."""

from __future__ import annotations

import datetime
import errno
import os
import signal
import sys
import tempfile
import threading
import traceback
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from mtransfer.cli.hints import weights_hint
from mtransfer.errors import INTERRUPT_EXIT, TERMINATE_EXIT, MtransferError, WeightsMissing, name_too_long

app = typer.Typer(
    name="mtransfer",
    help="Transfer the motion of a video onto still images with motion-guided diffusion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

INTERRUPTED = ("interrupted: stopped before any result was written or while starting; files already written are "
               "kept; run the same command again (`run` and `flow` resume where they stopped)")


@app.callback()
def _root() -> None:
    """Keeps sub-command names mandatory even while only one command is registered."""


def say(label: str, style: str, message: str) -> None:
    """``label: message`` on stderr; the message is printed as is (paths like ``a[/b]`` are not markup)."""
    console.print(Text.assemble((f"{label}:", style), " ", message), highlight=False, soft_wrap=True)


def crash_log(exc: BaseException) -> Path | None:
    """Write the traceback of an unexpected exception to ``<temp>/mtransfer-logs/`` (always writable, and
    never the output folder, which may be the very thing that failed); None when even that fails."""
    try:
        folder = Path(tempfile.gettempdir()) / "mtransfer-logs"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = folder / f"crash-{stamp}-{os.getpid()}.log"
        text = f"command: {' '.join(sys.argv)}\n\n" + "".join(traceback.format_exception(exc))
        path.write_text(text, errors="backslashreplace")
        return path
    except OSError:
        return None


def _unexpected(exc: BaseException) -> int:
    """One line for an exception mtransfer did not foresee, plus where its traceback was saved."""
    log = crash_log(exc)
    where = f"the traceback is in {log}" if log else "no log could be written"
    first = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and any(mark in first for mark in ("can't allocate memory", "out of memory"))
    ):
        say("error", "bold red", f"out of memory ({first[:200]}); try a smaller --size, --set model.dtype=\"float16\" "
            f"or another --device; {where}")
        return 2
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG and exc.filename is not None:
        say("error", "bold red", f"{os.fsdecode(exc.filename)}: {name_too_long(os.fsdecode(exc.filename))}")
        return 2  # the user's to fix, and the line says all: no traceback log
    if isinstance(exc, OSError) and exc.filename is not None:
        say("error", "bold red", f"{os.fsdecode(exc.filename)}: {exc.strerror or first}; {where}")
        return 2
    say("error", "bold red", f"unexpected {type(exc).__name__}: {first[:300]} (a bug in mtransfer; {where})")
    return 1


def _command(arguments: list[str]) -> str | None:
    """The sub-command's name: the first argument that is not an option (the app itself has none that take values)."""
    return next((argument for argument in arguments if not argument.startswith("-")), None)


def main() -> None:
    """Entry point: every problem becomes one plain line and an exit status, never a traceback.

    User-fixable problems (``MtransferError``) exit 2, usage errors from the parser 2, Ctrl-C 130 and
    SIGTERM 143 with what is kept; anything else exits 1 with the path of a log file holding the traceback.
    """
    from mtransfer.cli import commands  # noqa: F401  (registers the sub-commands)

    terminated: list[int] = []

    def terminate(signum: int, frame: object) -> None:
        """SIGTERM raises Ctrl-C's exception in the main thread, so that the same clean-up runs (lock released,
        temporaries removed, the ``interrupted:`` line) instead of the process dying where it stands."""
        terminated.append(signum)
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can a handler be set
    previous = signal.signal(signal.SIGTERM, terminate) if in_main_thread else None
    try:
        code = _main()
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    if code == INTERRUPT_EXIT and terminated:
        code = TERMINATE_EXIT
    if code:
        sys.exit(code)


def _main() -> int:
    """The command's exit status, its problem already said."""
    try:
        code = app(standalone_mode=False)
    except MtransferError as exc:
        stopped = exc.exit_code == INTERRUPT_EXIT
        message = str(exc)
        if isinstance(exc, WeightsMissing) and (hint := weights_hint(_command(sys.argv[1:]), exc.kind)):
            message += f"; {hint}"
        say("interrupted" if stopped else "error", "yellow" if stopped else "bold red", message)
        return exc.exit_code
    except KeyboardInterrupt:
        code = INTERRUPT_EXIT
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        return 1
    except typer.TyperException as exc:  # usage errors (bad option values, missing arguments)
        exc.show()
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001  (the one place that turns a bug into a line and a log)
        return _unexpected(exc)
    # Without standalone mode typer returns the status of `typer.Exit` (and of Ctrl-C, as 130) instead of exiting.
    if code == INTERRUPT_EXIT:
        say("interrupted", "yellow", INTERRUPTED.removeprefix("interrupted: "))
    return code if isinstance(code, int) else 0
