"""Uploads from the page, checked and copied into a run folder under generated names.

A browser's file name reaches the file system only as ``safe_stem`` (letters, digits, ``-``, ``_``: what
titles a clip's report): the app reads the upload where Gradio stored it, checks it (size, readable
image or video, frame count) and writes its own copy (``source.png``, ``mask-01.png``, ``driving.mp4``
or ``<safe stem>.mp4``) into the session's folder under ``outputs/ui/``. Masks painted in the
page are stored the same way. Each mask gets a new number, so a spec term naming an earlier mask keeps
its meaning when another one is set.
"""

from __future__ import annotations

import datetime
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtransfer.errors import InputError, MtransferError
from mtransfer.files import atomic_path, load_image, save_image
from mtransfer.flows import read_mask
from mtransfer.video import probe_video


@dataclass(frozen=True)
class UploadLimits:
    """The largest uploads the app accepts (also given to Gradio, which refuses bigger files itself)."""

    image_bytes: int = 30 * 2**20
    video_bytes: int = 200 * 2**20
    video_frames: int = 1000

    @property
    def largest_bytes(self) -> int:
        return max(self.image_bytes, self.video_bytes)


def new_run_folder(root: Path, kind: str) -> Path:
    """A fresh folder ``root/<kind>-<UTC time>-<random>`` for one session's inputs and results."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder = root / f"{kind}-{stamp}-{secrets.token_hex(3)}"
    folder.mkdir(parents=True)
    return folder


def _named(upload: str | Path, exc: MtransferError) -> InputError:
    """The error as the page shows it: naming the upload by its base name, not the server's path."""
    name = Path(upload).name
    message = str(exc).replace(str(upload), f"upload '{name}'")
    return InputError(message if name in message else f"upload '{name}': {message}")


def _check_size(upload: str | Path, limit: int, what: str) -> Path:
    path = Path(upload)
    if not path.is_file():
        raise InputError(f"upload '{path.name}': no file arrived; upload the {what} again")
    size = path.stat().st_size
    if size > limit:
        raise InputError(f"upload '{path.name}': {size / 2**20:.1f} MiB is over the limit of "
                         f"{limit / 2**20:.0f} MiB for a {what}")
    return path


def accept_image(upload: str | Path, folder: Path, limits: UploadLimits = UploadLimits()) -> Path:
    """Check an uploaded image and save it as ``folder/source.png``."""
    path = _check_size(upload, limits.image_bytes, "image")
    try:
        image = load_image(path)
    except MtransferError as exc:
        raise _named(upload, exc) from None
    return save_image(folder / "source.png", image)


def accept_mask(upload: str | Path, folder: Path, size: tuple[int, int], limits: UploadLimits = UploadLimits()) -> Path:
    """Check an uploaded mask and save it, at the image's ``size`` (height, width), as ``folder/mask.png``."""
    path = _check_size(upload, limits.image_bytes, "mask")
    try:
        mask = read_mask(path, size=size)
    except MtransferError as exc:
        raise _named(upload, exc) from None
    if float(mask.max()) <= 0:
        raise InputError(f"upload '{path.name}': the mask is black everywhere; white marks what moves")
    return _keep_mask(folder, mask)


def accept_painted_mask(layer: np.ndarray, folder: Path, size: tuple[int, int]) -> Path | None:
    """Save the strokes painted over the image, an RGBA ``(h, w, 4)`` layer, as a mask at ``size``
    (height, width): painted pixels (any colour, any opacity) move. None when nothing is painted."""
    if layer.ndim != 3 or layer.shape[-1] != 4:
        raise InputError(f"the painted mask is not an RGBA layer (shape {layer.shape})")
    painted = torch.from_numpy(np.ascontiguousarray(layer[..., 3] > 0)).float()[None, None]
    if float(painted.max()) <= 0:
        return None
    mask = torch.nn.functional.interpolate(painted, size=size, mode="bilinear", align_corners=False)[0]
    return _keep_mask(folder, mask)


def _keep_mask(folder: Path, mask: torch.Tensor) -> Path:
    """Save ``mask`` ``(1, H, W)`` as the session's next ``mask-NN.png``."""
    taken = [int(p.stem[5:]) for p in folder.glob("mask-*.png") if p.stem[5:].isdigit()]
    number = 1 + max(taken, default=0)
    return save_image(folder / f"mask-{number:02d}.png", mask)


VIDEO_SUFFIXES = (".mp4", ".gif", ".mov", ".webm", ".mkv", ".avi")


def safe_stem(name: str, fallback: str) -> str:
    """The stem of an uploaded file's name kept to letters, digits, ``-`` and ``_`` (at most 40), or
    ``fallback`` when nothing is left: a file name of the app's own that still reads as the user's."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(name).stem).strip("-_")[:40]
    return stem or fallback


def accept_video(upload: str | Path, folder: Path, limits: UploadLimits = UploadLimits(),
                 stem: str = "driving") -> Path:
    """Check an uploaded clip (size, a readable video, at most ``limits.video_frames`` frames) and copy it
    to ``folder/<stem><suffix>`` (the suffix kept only when it is a known video suffix)."""
    path = _check_size(upload, limits.video_bytes, "video")
    try:
        info = probe_video(path)
    except MtransferError as exc:
        raise _named(upload, exc) from None
    if info.frame_count < 2:
        raise InputError(f"upload '{path.name}': not a video clip ({info.frame_count} frame); a motion needs at least 2")
    if info.frame_count > limits.video_frames:
        raise InputError(f"upload '{path.name}': {info.frame_count} frames is over the limit of "
                         f"{limits.video_frames}; cut the clip first")
    suffix = path.suffix.lower() if path.suffix.lower() in VIDEO_SUFFIXES else ".mp4"
    target = folder / f"{stem}{suffix}"
    with atomic_path(target) as partial:  # a second check of the same upload may copy it at the same time
        shutil.copyfile(path, partial)
    return target
