"""One exception type for problems the user can fix; the CLI prints it as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class MtransferError(Exception):
    """A problem with the user's input or environment, worded so the user can act on it."""


def input_error(path: str | Path, problem: str) -> MtransferError:
    """An error that names the offending file first, e.g. ``clip.mp4: no video stream``."""
    return MtransferError(f"{path}: {problem}")


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return ``path`` as a Path, or raise a one-line error when it does not exist or is a folder."""
    p = Path(path)
    if not p.exists():
        raise input_error(p, f"no such {what}")
    if p.is_dir():
        raise input_error(p, f"is a folder, expected a {what}")
    return p
