"""Flow files: Middlebury ``.flo``, NumPy ``.npy`` and KITTI 16-bit ``.png``; and mask images.

Each format has its own mark for pixels without a flow, which readers turn into a valid mask:

* ``.flo`` – the magic float ``202021.25``, int32 width, int32 height, then float32 ``u, v`` interleaved
  row by row, all little-endian. Components above ``1e9`` in magnitude mean "unknown".
* ``.npy`` – ``(2, H, W)`` or ``(H, W, 2)`` when reading; always written as ``(2, H, W)`` float32.
  NaN means "unknown".
* ``.png`` (KITTI) – 16-bit RGB, ``u = (R - 2**15) / 64``, ``v = (G - 2**15) / 64``, ``B`` = 1 where valid.
  Values are quantised to 1/64 px and limited to +-512 px.

Writes are atomic (see ``mtransfer.files``).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Collection
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mtransfer.errors import MtransferError, input_error, require_file
from mtransfer.files import open_image, write_bytes

FLOW_SUFFIXES = (".flo", ".npy", ".png")
FLO_MAGIC = 202021.25
FLO_UNKNOWN = 1e10
MAX_SIDE = 100_000
KITTI_OFFSET = 2**15
KITTI_SCALE = 64.0


def read_flow(path: str | Path) -> torch.Tensor:
    """A flow file as ``(2, H, W)`` float32; pixels marked unknown in the file are set to zero motion."""
    return read_flow_and_valid(path)[0]


def read_flow_and_valid(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A flow file as ``(2, H, W)`` float32 and its ``(1, H, W)`` valid mask (1 = the file gives a flow)."""
    path = require_file(path, "flow file")
    suffix = path.suffix.lower()
    if suffix == ".flo":
        flow = _read_flo(path)
        _refuse_non_finite(path, flow, "a .flo marks unknown pixels with values above 1e9, not NaN or infinity")
        valid = (flow.abs() < 1e9).all(0, keepdim=True)
    elif suffix == ".npy":
        flow = _read_npy(path)
        _refuse_non_finite(path, torch.where(torch.isnan(flow), 0.0, flow), "a .npy flow marks unknown pixels with NaN")
        valid = torch.isfinite(flow).all(0, keepdim=True)
    elif suffix == ".png":
        flow, valid = _read_kitti(path)
    else:
        raise _unknown_suffix(path)
    if not valid.any():
        raise input_error(path, "holds no flow: every pixel is marked unknown (NaN, or above 1e9 in a .flo)")
    return torch.where(valid, flow, 0.0), valid.float()


MAX_MOTION = 4.0
"""Displacements longer than this many times the image's larger side are refused: they move every pixel far
out of the picture, which is never a useful target and is almost always a unit or scale mistake."""


def motion_problem(flow: torch.Tensor) -> str | None:
    """Why ``flow`` ``(2, H, W)`` cannot be a target motion (non-finite, or far beyond the image), or None."""
    finite = torch.isfinite(flow)
    if not finite.all():
        return f"motion holds {int((~finite).sum())} NaN or infinite values"
    height, width = flow.shape[-2:]
    limit = MAX_MOTION * max(height, width)
    largest = float(flow.abs().max()) if flow.numel() else 0.0
    if largest > limit:
        return (f"moves pixels by up to {largest:.4g} px, far beyond the {height}x{width} (height x width) image "
                f"(more than {MAX_MOTION:g}x its larger side, {limit:g} px); check the units")
    return None


def _refuse_non_finite(path: Path, flow: torch.Tensor, convention: str) -> None:
    bad = int((~torch.isfinite(flow)).sum())
    if bad:
        raise input_error(path, f"holds {bad} NaN or infinite values; {convention}")


def write_flow(path: str | Path, flow: torch.Tensor, valid: torch.Tensor | None = None) -> Path:
    """Write a ``(2, H, W)`` flow by the file's suffix; pixels where ``valid`` is 0 get the format's unknown mark."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FLOW_SUFFIXES:
        raise _unknown_suffix(path)
    if flow.dim() == 4 and flow.shape[0] == 1:
        flow = flow[0]
    if flow.dim() != 3 or flow.shape[0] != 2:
        raise input_error(path, f"can only write one flow of shape (2, H, W), got {tuple(flow.shape)}")
    array = flow.detach().to("cpu", torch.float32).numpy()
    keep = np.ones(array.shape[1:], bool)
    if valid is not None:
        keep = valid.detach().cpu().numpy().reshape(array.shape[1:]) > 0
    if suffix == ".png":
        return write_bytes(path, _kitti_bytes(path, array, keep))
    if suffix == ".flo":
        return write_bytes(path, _flo_bytes(np.where(keep, array, np.float32(FLO_UNKNOWN))))
    buffer = io.BytesIO()
    np.save(buffer, np.where(keep, array, np.float32(np.nan)))
    return write_bytes(path, buffer.getvalue())


def read_mask(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A mask image as ``(1, H, W)`` float in [0, 1]; ``size = (height, width)`` resizes it (bilinear).

    The alpha channel is the mask when the image has a non-opaque one (a painted cut-out); otherwise
    the brightness is (white = 1). 8- and 16-bit images are both scaled to [0, 1].
    """
    try:
        with open_image(path, "mask image") as img:
            if "A" in img.getbands() and img.getchannel("A").getextrema()[0] < 255:
                img = img.getchannel("A")
            full_scale = 65535.0 if img.mode.startswith("I") else 255.0
            if img.mode not in ("L", "F") and not img.mode.startswith("I"):
                img = img.convert("L")
            img = img.convert("F")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.float32) / full_scale
    except (UnidentifiedImageError, OSError) as exc:
        raise input_error(path, f"not a readable mask image ({exc.__class__.__name__})") from None
    return torch.from_numpy(array.clip(0.0, 1.0))[None]


def read_mask_on(
    path: str | Path, size: tuple[int, int], accepted: Collection[tuple[int, int]] = (), what: str = "mask"
) -> torch.Tensor:
    """The one rule for every mask a user gives (``edit --mask``, ``mask=`` in a motion): read at its own
    size, which must be ``size`` or one of ``accepted`` (e.g. the input image's, when ``size`` is the
    working size) — a mask of another size would be stretched onto other pixels — and not all black (it
    would allow nothing); then brought to ``size``."""
    mask = read_mask(path)
    own = tuple(mask.shape[-2:])
    if own != tuple(size) and own not in {tuple(s) for s in accepted}:
        others = "".join(f" or {h}x{w}" for h, w in dict.fromkeys(tuple(s) for s in accepted) if (h, w) != tuple(size))
        raise input_error(path, f"{what} is {own[0]}x{own[1]}, expected {size[0]}x{size[1]}{others}; draw it on the image")
    if float(mask.max()) == 0:
        raise input_error(path, f"{what} is all black: it marks no pixel (white = where motion or change is allowed)")
    return mask if own == tuple(size) else read_mask(path, size=size)


def _unknown_suffix(path: Path) -> MtransferError:
    return input_error(path, f"unknown flow file type '{path.suffix}'; use .flo, .npy or KITTI .png")


def _read_flo(path: Path) -> torch.Tensor:
    data = path.read_bytes()
    if len(data) < 12:
        raise input_error(path, f"too short for a .flo header ({len(data)} bytes)")
    magic, width, height = struct.unpack("<fii", data[:12])
    if magic != FLO_MAGIC:
        raise input_error(path, f"not a .flo file (magic number {magic!r}, expected {FLO_MAGIC})")
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise input_error(path, f"header gives an impossible size {width}x{height}")
    expected = 12 + 8 * width * height
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise input_error(path, f"{problem}: {len(data)} bytes, a {width}x{height} flow needs {expected}")
    values = np.frombuffer(data, dtype="<f4", offset=12).reshape(height, width, 2)
    return torch.from_numpy(values.transpose(2, 0, 1).astype(np.float32))


def _flo_bytes(array: np.ndarray) -> bytes:
    _, height, width = array.shape
    header = struct.pack("<fii", FLO_MAGIC, width, height)
    return header + np.ascontiguousarray(array.transpose(1, 2, 0), dtype="<f4").tobytes()


def _read_npy(path: Path) -> torch.Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise input_error(path, f"not a readable .npy array ({exc})") from None
    if array.dtype.kind not in "fiu":
        raise input_error(path, f"holds {array.dtype} values, expected numbers")
    if array.ndim == 3 and array.shape[0] == 2:
        pass
    elif array.ndim == 3 and array.shape[2] == 2:
        array = array.transpose(2, 0, 1)
    else:
        raise input_error(path, f"array shape {array.shape} is not a flow; expected (2, H, W) or (H, W, 2)")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _read_kitti(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded with FFmpeg (PyAV): PIL and torchvision's decoder do not both keep 16-bit RGB."""
    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            if frame.format.name not in ("rgb48be", "rgb48le", "rgba64be", "rgba64le"):
                raise input_error(path, f"not a KITTI flow PNG: expected 16-bit RGB, found {frame.format.name}")
            channels = frame.to_ndarray(format="rgb48le").astype(np.float32)
    except (av.error.FFmpegError, StopIteration):
        raise input_error(path, "not a readable PNG (corrupted or another format)") from None
    flow = (torch.from_numpy(channels[..., :2]).permute(2, 0, 1) - KITTI_OFFSET) / KITTI_SCALE
    return flow.contiguous(), torch.from_numpy(channels[..., 2] > 0)[None]


def _kitti_bytes(path: Path, array: np.ndarray, keep: np.ndarray) -> bytes:
    """A 16-bit RGB PNG written directly (zlib + chunks): PIL cannot write 16 bits per RGB channel."""
    coded = np.round(array * KITTI_SCALE + KITTI_OFFSET)
    if (keep & ((coded < 0) | (coded > 65535)).any(0)).any():
        raise input_error(path, "flow exceeds the +-512 px a KITTI PNG can store; use .flo or .npy")
    _, height, width = array.shape
    pixels = np.zeros((height, width, 3), dtype=">u2")
    pixels[..., 0] = np.where(keep, coded[0], KITTI_OFFSET)
    pixels[..., 1] = np.where(keep, coded[1], KITTI_OFFSET)
    pixels[..., 2] = keep
    rows = np.concatenate((np.zeros((height, 1), np.uint8), pixels.view(np.uint8).reshape(height, -1)), axis=1)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16-bit truecolour, no interlace
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body
