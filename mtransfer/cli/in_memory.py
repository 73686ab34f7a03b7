"""What the commands that keep all their work in memory until the end (``edit``, ``generate``) share:
reusing results a failed write rescued, and what Ctrl-C keeps.

Their results are written in one go at the end; when that write fails, ``mtransfer.files.rescue_on_failure``
keeps them under the temp folder, keyed by what they depend on. That key is built like a run's resume
check: the settings the guide stage declares it shapes (``RunSettings.by_stage``), plus the inputs as the
command read them, so the same command finds and only writes them, and other settings never do.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.text import Text

from mtransfer.errors import Interrupted
from mtransfer.files import other_rescues, take_rescued
from mtransfer.validation import differences


def reuse_rescued(
    folder: Path, key: dict[str, Any], command: str, console: Console, clear: Callable[[], Any] | None = None
) -> bool:
    """Write the results an earlier ``command`` with this very ``key`` rescued into ``folder`` and say so in
    one line (True); else False, after naming rescues for ``folder`` made with other settings (never used).
    ``clear()`` runs just before they move in (``staged_folder``)."""
    rescued = take_rescued(folder, key, clear)
    if rescued is not None:
        console.print(Text(f"{command}: wrote the results an earlier `mtransfer {command}` with these settings had "
                           f"saved in {rescued} (its write had failed) to {folder}; nothing was recomputed"),
                      highlight=False, soft_wrap=True)
        return True
    for where, other in other_rescues(folder, key):
        changes = differences(other, key)
        shown = "; ".join(changes[:2]) + ("; ..." if len(changes) > 2 else "")
        console.print(Text(f"note: {where} holds results of `mtransfer {command}` for this folder made with other "
                           f"settings ({shown}); they are not used (delete that folder once it is not needed)"),
                      highlight=False, soft_wrap=True)
    return False


@contextmanager
def stopped_note(folder: Path, command: str) -> Iterator[None]:
    """Ctrl-C before the results are written: one ``interrupted:`` line (exit 130) saying nothing was written."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(
            f"{folder}: `mtransfer {command}` stopped before its results were written (it keeps its work in memory "
            "until the end), so nothing new is there and the folder is as it was; run the same command again to "
            "compute it anew"
        ) from None
