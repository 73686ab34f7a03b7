"""The problems mtransfer reports to the user: one line each, never a traceback.

``MtransferError`` is a problem the user can fix; its subclasses say what kind, so that callers (and the
CLI's exit status) can tell them apart. The CLI prints ``error: <message>`` as plain text (user-supplied
paths are never read as markup) and exits with ``exit_code``: 2 for every problem, 130 for an interrupt,
like a shell does for Ctrl-C (143 when the interrupt was a SIGTERM).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

USAGE_EXIT = 2
INTERRUPT_EXIT = 130
TERMINATE_EXIT = 143
"""Stopped by SIGTERM (128 + 15, as a shell reports it); handled like Ctrl-C."""


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


NAME_MAX = 255
"""Bytes in one name (a path's part) that common file systems (ext4, XFS, APFS, NTFS) accept."""


def name_too_long(*paths: str | Path) -> str:
    """What to say when a path is refused as too long (ENAMETOOLONG): the first name among ``paths`` over the
    limit, or that the whole path is (the kernel's limit on a path, 4096 bytes on Linux)."""
    over = [part for path in paths for part in Path(path).parts if len(os.fsencode(part)) > NAME_MAX]
    if not over:
        return f"the path is {len(os.fsencode(str(paths[0])))} bytes long, too long for the system; use a shorter one"
    name = over[0]
    return (f"the name '{name[:24]}...{name[-12:]}' is {len(os.fsencode(name))} bytes long, over the file system's "
            f"limit of {NAME_MAX} per name; use a shorter one")


def name_too_long_to_write(path: str | Path, *others: str | Path) -> OutputError:
    """An output path (or one of ``others`` made from it) refused as too long, with where the name came from."""
    return OutputError(f"{path}: cannot write: {name_too_long(path, *others)} (--out, or rename the input a default "
                       "output name is made from)")


def output_error(path: str | Path, exc: BaseException) -> OutputError:
    """A failed write as one line naming the file and what to do, e.g. ``out/a.png: cannot write: the disk is full``."""
    code = getattr(exc, "errno", None)
    if code == errno.ENAMETOOLONG:
        return name_too_long_to_write(path, os.fsdecode(getattr(exc, "filename", None) or path))
    reason = _WRITE_ADVICE.get(code) or getattr(exc, "strerror", None) or str(exc).splitlines()[0] or type(exc).__name__
    return OutputError(f"{path}: cannot write: {reason}")


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return ``path`` as a Path, or raise a one-line error when it does not exist or is a folder."""
    p = Path(path)
    try:
        exists = p.exists()
    except OSError as exc:  # a name over the file system's limit: no such file can exist
        if exc.errno != errno.ENAMETOOLONG:
            raise
        raise input_error(p, f"no such {what}: {name_too_long(p)}") from None
    if not exists:
        raise input_error(p, f"no such {what}")
    if p.is_dir():
        raise input_error(p, f"is a folder, expected {'an' if what[:1] in 'aeiou' else 'a'} {what}")
    return p
