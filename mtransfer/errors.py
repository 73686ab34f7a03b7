"""The problems mtransfer reports to the user: one line each, never a traceback.

``MtransferError`` is a problem the user can fix; its subclasses say what kind, so that callers (and the
CLI's exit status) can tell them apart. The CLI prints ``error: <message>`` as plain text (user-supplied
paths are never read as markup) and exits with ``exit_code``: 2 for every problem, 130 for an interrupt,
like a shell does for Ctrl-C.
"""

from __future__ import annotations

import errno
from pathlib import Path

USAGE_EXIT = 2
INTERRUPT_EXIT = 130


class MtransferError(Exception):
    """A problem with the user's input or environment, worded so the user can act on it."""

    exit_code = USAGE_EXIT


class UsageError(MtransferError):
    """A command line or setting that cannot work (a bad flag value, a contradiction between flags)."""


class InputError(MtransferError):
    """An input file that is missing, unreadable or holds something mtransfer cannot use."""


class WeightsMissing(InputError):
    """Weights that are neither on this machine nor downloadable: ``kind`` is ``"raft"`` or ``"diffusion"``.
    The message says what is missing in terms of settings; the command line adds its own flags that point
    at local weights or need none (``mtransfer.cli.hints``), which a core module cannot know."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class OutputError(MtransferError):
    """A result that cannot be written: disk full, read-only or forbidden folder, a file where a folder goes."""


class DeviceError(MtransferError):
    """A compute device that does not exist or is not available on this machine."""


class Interrupted(MtransferError):
    """The user stopped the command (Ctrl-C); the message says what is kept and how to continue."""

    exit_code = INTERRUPT_EXIT


def input_error(path: str | Path, problem: str) -> InputError:
    """An error that names the offending file first, e.g. ``clip.mp4: no video stream``."""
    return InputError(f"{path}: {problem}")


_WRITE_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space (or choose another --out) and run the same command again",
    errno.EDQUOT: "the disk quota is exceeded; free some space (or choose another --out) and run again",
    errno.EROFS: "the file system is read-only; choose another --out",
    errno.EACCES: "permission denied; choose another --out or fix the folder's permissions",
    errno.EPERM: "operation not permitted; choose another --out or fix the folder's permissions",
    errno.ENOTDIR: "a file stands where a folder is needed; choose another --out",
    errno.EEXIST: "a file stands where a folder is needed; choose another --out",
    errno.EISDIR: "a folder stands where the file goes; move it away or choose another --out",
}


def output_error(path: str | Path, exc: BaseException) -> OutputError:
    """A failed write as one line naming the file and what to do, e.g. ``out/a.png: cannot write: the disk is full``."""
    code = getattr(exc, "errno", None)
    reason = _WRITE_ADVICE.get(code) or getattr(exc, "strerror", None) or str(exc).splitlines()[0] or type(exc).__name__
    return OutputError(f"{path}: cannot write: {reason}")


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return ``path`` as a Path, or raise a one-line error when it does not exist or is a folder."""
    p = Path(path)
    if not p.exists():
        raise input_error(p, f"no such {what}")
    if p.is_dir():
        raise input_error(p, f"is a folder, expected a {what}")
    return p
