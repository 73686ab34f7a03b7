"""Reading and writing video clips as tensors ``(T, 3, H, W)`` in [0, 1], with PyAV.

Reading decodes one frame at a time (``iter_frames``) so long videos never sit in memory undecoded;
``read_video`` stacks the frames it keeps. Writing picks the format by extension: ``.mp4`` is H.264
(yuv420p, the pixel format every player accepts) and ``.gif`` an animated GIF with one adaptive
palette per frame. Files are written atomically, like everything else mtransfer writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mtransfer.errors import UsageError, input_error, require_file
from mtransfer.files import MAX_IMAGE_PIXELS, atomic_path

VIDEO_FORMATS = {".mp4": "mp4", ".gif": "gif"}


@dataclass(frozen=True)
class VideoInfo:
    """What a clip is: frames per second, number of frames, frame size in pixels, length in seconds."""

    fps: float
    frame_count: int
    width: int
    height: int
    duration: float


def _open(path: str | Path) -> tuple[Path, av.container.InputContainer]:
    """Open a video for reading; a missing or unreadable file becomes a one-line error naming it."""
    path = require_file(path, "video")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise input_error(path, f"not a readable video ({_reason(exc)})") from None
    if not container.streams.video:
        kinds = sorted({stream.type for stream in container.streams}) or ["nothing"]
        container.close()
        raise input_error(path, f"no video stream (it contains {', '.join(kinds)})")
    return path, container


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or exc.__class__.__name__


def probe_video(path: str | Path) -> VideoInfo:
    """Frame rate, frame count, size and duration of the first video stream in ``path``.

    The frame count comes from the container when it records one (MP4 does) and otherwise from
    counting the stream's packets, one per frame, which is exact for video codecs and needs no decoding.
    """
    path, container = _open(path)
    with container:
        stream = container.streams.video[0]
        try:
            frame_count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        except av.FFmpegError as exc:
            raise input_error(path, f"damaged video stream ({_reason(exc)})") from None
        if frame_count == 0:
            raise input_error(path, "contains no video frames")
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else (frame_count / duration if duration > 0 else 0.0)
        if fps <= 0:
            raise input_error(path, "the frame rate is unknown")
        if duration <= 0:
            duration = frame_count / fps
        return VideoInfo(fps, frame_count, stream.codec_context.width, stream.codec_context.height, duration)


MIN_SIDE = 8
"""Smallest frame side mtransfer works at: flow estimators need a few pixels of neighbourhood (TV-L1's
gradients fail on a 1-pixel side) and Stable Diffusion's latents are 1/8 of the image."""


def output_size(height: int, width: int, size: tuple[int, int] | int | None) -> tuple[int, int]:
    """The ``(height, width)`` frames are resized to: ``size`` itself, or for an int, the short side.

    An int keeps the aspect ratio: a 1920x1080 video with ``size=256`` becomes 455x256 (width x height).
    A result with a side under ``MIN_SIDE`` pixels is refused.
    """
    if size is None:
        target = height, width
    elif isinstance(size, int):
        scale = size / min(height, width)
        target = max(1, round(height * scale)), max(1, round(width * scale))
    else:
        target = int(size[0]), int(size[1])
    if min(target) < MIN_SIDE:
        raise UsageError(f"frames of {target[0]}x{target[1]} (height x width) are too small to measure motion; "
                         f"each side needs at least {MIN_SIDE} px (video.size / --size)")
    if target[0] * target[1] > MAX_IMAGE_PIXELS:
        raise UsageError(f"frames of {target[0]}x{target[1]} (height x width) are over mtransfer's limit of "
                         f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels; choose a smaller video.size / --size")
    return target


LARGE_FLOW_PIXELS = 4_000_000


def large_flow_warning(height: int, width: int, frames: int) -> str | None:
    """A warning when a clip's flow will be slow and big (over 4 megapixels a frame, e.g. above 4K), else None."""
    if height * width <= LARGE_FLOW_PIXELS:
        return None
    total_mb = frames * height * width * 8 / 1e6  # two float32 components per pixel
    return (f"flow will be measured at {height}x{width} (height x width), {total_mb:,.0f} MB of .flo files for "
            f"{frames} frames and minutes per frame; a short side of 512 px is plenty: --set video.size=512 "
            "(run) or --size 512 (flow)")


def parse_size(text: str) -> tuple[int, int] | int:
    """Command-line size: ``"128x160"`` is (height, width), ``"256"`` the short side; sides of at least ``MIN_SIDE``."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) in (1, 2) and all(part.isdigit() and int(part) > 0 for part in parts):
        if min(int(part) for part in parts) < MIN_SIDE:
            raise UsageError(f"size '{text}': each side needs at least {MIN_SIDE} px")
        if len(parts) == 2 and int(parts[0]) * int(parts[1]) > MAX_IMAGE_PIXELS:
            raise UsageError(f"size '{text}': over mtransfer's limit of {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels")
        return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    raise UsageError(f"bad size '{text}': expected HEIGHTxWIDTH like 128x160, or a short side like 256")


def iter_frames(
    path: str | Path,
    *,
    stride: int = 1,
    max_frames: int | None = None,
    size: tuple[int, int] | int | None = None,
) -> Iterator[torch.Tensor]:
    """Decode frames 0, stride, 2*stride, ... one at a time as ``(3, H, W)`` floats in [0, 1].

    ``size`` is ``(height, width)`` or a single int for the short side (see ``output_size``); resizing
    is bilinear with antialiasing. Decoding stops as soon as ``max_frames`` frames were yielded.
    Arguments are checked here, before the first frame is asked for.
    """
    path = require_file(path, "video")
    if stride < 1:
        raise input_error(path, f"stride must be 1 or more, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise input_error(path, f"max_frames must be 1 or more, got {max_frames}")
    if size is not None and not (size >= 1 if isinstance(size, int) else len(size) == 2 and min(size) >= 1):
        raise input_error(path, f"size must be a positive short side or (height, width), got {size}")
    return _decode_frames(path, stride, max_frames, size)


def _decode_frames(
    path: Path, stride: int, max_frames: int | None, size: tuple[int, int] | int | None
) -> Iterator[torch.Tensor]:
    path, container = _open(path)
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        kept = 0
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index % stride:
                    continue
                image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).float() / 255.0
                target = output_size(image.shape[1], image.shape[2], size)
                if target != tuple(image.shape[1:]):
                    image = F.interpolate(image[None], target, mode="bilinear", antialias=True, align_corners=False)
                    image = image[0].clamp(0.0, 1.0)
                yield image
                kept += 1
                if max_frames is not None and kept >= max_frames:
                    return
        except av.FFmpegError as exc:
            raise input_error(path, f"damaged video stream ({_reason(exc)})") from None
        if kept == 0:
            raise input_error(path, "contains no video frames")


def read_video(
    path: str | Path,
    *,
    stride: int = 1,
    max_frames: int | None = None,
    size: tuple[int, int] | int | None = None,
) -> tuple[torch.Tensor, VideoInfo]:
    """Decode a clip into ``(T, 3, H, W)`` floats in [0, 1], with the ``VideoInfo`` of *that clip*.

    The info describes the returned frames, not the file: its fps is the file's fps divided by
    ``stride`` (so writing the frames back at ``info.fps`` keeps real-time speed), its size is the
    resized size. Use ``probe_video`` for the file itself. Arguments as in ``iter_frames``.
    """
    source = probe_video(path)
    frames = torch.stack(list(iter_frames(path, stride=stride, max_frames=max_frames, size=size)))
    fps = source.fps / stride
    count, _, height, width = frames.shape
    return frames, VideoInfo(fps, count, width, height, count / fps)


def _as_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(T, 3, H, W)`` float in [0, 1] or uint8 → ``(T, H, W, 3)`` uint8."""
    frames = torch.as_tensor(frames).detach().cpu()
    if frames.dim() != 4 or frames.shape[1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be (T, 3, H, W) with T >= 1, got {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        frames = (frames.float().clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
    return frames.permute(0, 2, 3, 1).contiguous().numpy()


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p stores colour at half resolution, so odd sides get one replicated row/column."""
    _, height, width, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def _palette_frame(image: np.ndarray) -> av.VideoFrame:
    """A GIF frame with its own 256-colour palette, so colours stay close to the original."""
    quantized = Image.fromarray(image).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    rgb = np.zeros((256, 3), dtype=np.uint8)
    used = np.asarray(quantized.getpalette(), dtype=np.uint8).reshape(-1, 3)[:256]
    rgb[: len(used)] = used
    argb = np.concatenate([np.full((256, 1), 255, dtype=np.uint8), rgb], axis=1)
    return av.VideoFrame.from_ndarray((np.asarray(quantized, dtype=np.uint8), argb), format="pal8")


def write_video(path: str | Path, frames: torch.Tensor | np.ndarray, fps: float, *, crf: int = 18) -> Path:
    """Write ``frames`` ``(T, 3, H, W)`` (float in [0, 1] or uint8) as ``.mp4`` (H.264) or ``.gif``.

    MP4 frames with an odd width or height are padded by one replicated pixel row/column to even
    size (a yuv420p requirement); GIFs keep the exact size. ``crf`` is the H.264 quality (lower is
    better, 18 looks lossless). The file appears atomically.
    """
    path = Path(path)
    container_format = VIDEO_FORMATS.get(path.suffix.lower())
    if container_format is None:
        raise UsageError(f"{path}: unsupported video extension, use one of {', '.join(VIDEO_FORMATS)}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    images = _as_uint8(frames)
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format=container_format) as container:
            if container_format == "mp4":
                images = _pad_to_even(images)
                # Without x264's macroblock-tree lookahead the same frames always give the same bytes
                # (with it, the output varied from run to run), at a few percent in file size.
                options = {"crf": str(crf), "x264-params": "mbtree=0"}
                stream = container.add_stream("libx264", rate=rate, options=options)
                stream.pix_fmt = "yuv420p"
            else:
                stream = container.add_stream("gif", rate=rate)
                stream.pix_fmt = "pal8"
            stream.height, stream.width = images.shape[1:3]
            for index, image in enumerate(images):
                frame = _palette_frame(image) if container_format == "gif" else av.VideoFrame.from_ndarray(image)
                frame.pts = index
                frame.time_base = 1 / rate
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    return path
