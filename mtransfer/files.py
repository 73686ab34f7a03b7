"""Reading and atomically writing the files mtransfer produces: images, JSON, arrays.

Every write goes to a temporary file in the destination folder and is renamed into place, so a run
killed at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mtransfer.errors import input_error, require_file


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results should read like any other file
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, record: Any) -> Path:
    return write_bytes(path, (json.dumps(record, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_json(path: str | Path) -> Any:
    path = require_file(path, "JSON file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise input_error(path, f"not valid JSON ({exc})") from None


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """An RGB image as a float tensor ``(3, H, W)`` in [0, 1]; ``size`` is (height, width) to resize to."""
    path = require_file(path, "image")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.LANCZOS)
            array = np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise input_error(path, f"not a readable image ({exc.__class__.__name__})") from None
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` or ``(1, H, W)`` float in [0, 1] → ``(H, W, C)`` uint8 array."""
    image = image.detach().float().cpu().clamp(0, 1)
    return (image * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def save_image(path: str | Path, image: torch.Tensor | np.ndarray) -> Path:
    """Write an image atomically; tensors are ``(C, H, W)`` in [0, 1], arrays ``(H, W[, C])`` uint8."""
    array = to_uint8(image) if isinstance(image, torch.Tensor) else image
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format=Image.registered_extensions().get(Path(path).suffix.lower(), "PNG"))
    return Path(path)
