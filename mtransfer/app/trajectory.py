"""A generated image's DDIM trajectory on disk: what ``mtransfer generate`` keeps and ``edit --trajectory`` reads.

Editing along the generation's own trajectory needs no DDIM inversion: unguided sampling from the same
noise retraces the image exactly, so the edit mask pastes the true latents of the picture.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mtransfer.errors import input_error, require_file
from mtransfer.files import atomic_path

TRAJECTORY_KEYS = {"latents", "prompt", "model", "steps", "size", "seed", "cfg_scale"}


def save_trajectory(path: Path, latents: list[torch.Tensor], **meta: object) -> Path:
    """The generation's latents ``(steps + 1, C, h, w)`` and what they were made with, written atomically."""
    with atomic_path(path) as tmp:
        torch.save({"latents": torch.cat(latents).cpu(), **meta}, tmp)
    return path


def load_trajectory(path: Path, *, model: str, steps: int, size: tuple[int, int]) -> dict:
    """A trajectory from ``mtransfer generate``, checked against the edit's model, steps and size."""
    require_file(path, "trajectory file")
    try:
        record = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise input_error(path, f"not a trajectory written by `mtransfer generate` ({type(exc).__name__})") from None
    if not isinstance(record, dict) or not TRAJECTORY_KEYS <= set(record):
        raise input_error(path, "not a trajectory written by `mtransfer generate`")
    for key, wanted in (("model", model), ("steps", steps), ("size", list(size))):
        if record[key] != wanted:
            raise input_error(path, f"was generated with {key} {record[key]}, but this edit uses {wanted}; "
                                    f"edit with the same {key} (--set / flags)")
    return record
