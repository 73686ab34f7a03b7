"""Video decoding/encoding (mtransfer.video) and per-frame flows of a clip (mtransfer.video_flow)."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from mtransfer.errors import MtransferError
from mtransfer.video import iter_frames, output_size, parse_size, probe_video, read_video, write_video
from mtransfer.video_flow import video_flows


def smooth_clip(count: int, height: int, width: int) -> torch.Tensor:
    """Soft colour waves drifting by one pixel per frame: easy to compress, every frame different."""
    ys, xs = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    frames = []
    for t in range(count):
        red = 0.5 + 0.4 * torch.sin((xs - t) / width * 2 * math.pi)
        green = 0.5 + 0.4 * torch.cos(ys / height * math.pi)
        frames.append(torch.stack((red, green, torch.full_like(xs, 0.3 + 0.03 * t))))
    return torch.stack(frames)


def gray_levels(count: int, height: int = 32, width: int = 48) -> torch.Tensor:
    """Frame t is a flat gray at level 20 t / 255, so a decoded frame tells its own index."""
    levels = torch.arange(count, dtype=torch.uint8) * 20
    return levels.view(count, 1, 1, 1).expand(count, 3, height, width).contiguous()


def decoded_index(frame: torch.Tensor) -> int:
    return round(frame.mean().item() * 255 / 20)


@pytest.mark.parametrize("suffix, tolerance", [(".mp4", 0.02), (".gif", 0.03)])
def test_round_trip_keeps_count_size_rate_and_pixels(tmp_path: Path, suffix: str, tolerance: float) -> None:
    clip = smooth_clip(9, 48, 64)
    path = write_video(tmp_path / f"clip{suffix}", clip, fps=10)
    frames, info = read_video(path)
    assert frames.shape == clip.shape and frames.dtype == torch.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    assert (frames - clip).abs().mean() < tolerance
    probed = probe_video(path)
    assert (probed.frame_count, probed.width, probed.height) == (9, 64, 48)
    assert probed.fps == pytest.approx(10, rel=0.05)  # GIF delays are whole centiseconds
    assert probed.duration == pytest.approx(0.9, abs=0.05)
    assert info.frame_count == 9 and info.fps == pytest.approx(probed.fps)
    assert [p.name for p in tmp_path.iterdir()] == [f"clip{suffix}"]  # no temporary files left behind


def test_the_same_frames_always_encode_to_the_same_bytes(tmp_path: Path) -> None:
    noisy = torch.rand(24, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    contents = {write_video(tmp_path / f"{run}.mp4", noisy, fps=12).read_bytes() for run in range(6)}
    assert len(contents) == 1


def test_mp4_pads_odd_sizes_by_replicating_the_edge(tmp_path: Path) -> None:
    clip = smooth_clip(3, 33, 47)
    frames, info = read_video(write_video(tmp_path / "odd.mp4", clip, fps=8))
    assert (info.height, info.width) == (34, 48)
    assert (frames[:, :, :33, :47] - clip).abs().mean() < 0.02
    assert (frames[:, :, 33, :47] - clip[:, :, 32]).abs().mean() < 0.03
    gif_frames, _ = read_video(write_video(tmp_path / "odd.gif", clip, fps=8))
    assert gif_frames.shape == clip.shape


def test_uint8_and_float_frames_encode_alike(tmp_path: Path) -> None:
    levels = gray_levels(4)
    from_uint8, _ = read_video(write_video(tmp_path / "a.mp4", levels, fps=12))
    from_float, _ = read_video(write_video(tmp_path / "b.mp4", levels.float() / 255, fps=12))
    assert (from_uint8 - from_float).abs().max() < 2 / 255
    assert [decoded_index(f) for f in from_uint8] == [0, 1, 2, 3]


def test_stride_max_frames_and_size(tmp_path: Path) -> None:
    path = write_video(tmp_path / "levels.mp4", gray_levels(10), fps=12)
    frames, info = read_video(path, stride=3)
    assert [decoded_index(f) for f in frames] == [0, 3, 6, 9]
    assert info.fps == pytest.approx(4.0) and info.frame_count == 4 and info.duration == pytest.approx(1.0)
    frames, _ = read_video(path, stride=3, max_frames=2)
    assert [decoded_index(f) for f in frames] == [0, 3]
    frames, info = read_video(path, size=(16, 20), max_frames=1)
    assert frames.shape == (1, 3, 16, 20) and (info.height, info.width) == (16, 20)
    assert decoded_index(frames[0]) == 0
    frames, info = read_video(path, size=16, max_frames=1)  # short side 16 of 32x48 keeps 2:3
    assert frames.shape == (1, 3, 16, 24)
    assert [decoded_index(f) for f in iter_frames(path, stride=4)] == [0, 4, 8]


def test_output_size_and_parse_size() -> None:
    assert output_size(1080, 1920, 256) == (256, 455)
    assert output_size(1920, 1080, 256) == (455, 256)
    assert output_size(100, 50, (30, 40)) == (30, 40)
    assert output_size(100, 50, None) == (100, 50)
    assert parse_size("128x160") == (128, 160)
    assert parse_size("256") == 256
    for bad in ("abc", "0x5", "12x", "1x2x3", "-4"):
        with pytest.raises(MtransferError, match="bad size"):
            parse_size(bad)


def test_frame_count_is_counted_when_the_container_has_none(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for index in range(7):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 30 * index, np.uint8))
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # the case being tested
    info = probe_video(path)
    assert (info.frame_count, info.fps, info.width) == (7, 10.0, 32)
    assert info.duration == pytest.approx(0.7)


def _text_file(path: Path) -> Path:
    path.write_text("not a video at all\n")
    return path


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 44100
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _video_stream_without_frames(path: Path) -> Path:
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
    return path


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda d: d / "missing.mp4", "no such video"),
        (lambda d: d / "a folder.mp4", "is a folder"),
        (lambda d: _text_file(d / "notes.mp4"), "not a readable video"),
        (lambda d: _audio_only(d / "sound.mp4"), "no video stream (it contains audio)"),
        (lambda d: _video_stream_without_frames(d / "empty.avi"), "contains no video frames"),
    ],
)
def test_bad_files_raise_one_line_errors_naming_the_file(tmp_path: Path, make, problem: str) -> None:
    (tmp_path / "a folder.mp4").mkdir()
    path = make(tmp_path)
    for read in (probe_video, read_video, lambda p: next(iter_frames(p))):
        with pytest.raises(MtransferError) as caught:
            read(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and problem in message and "\n" not in message


def test_bad_read_arguments_name_the_file(tmp_path: Path) -> None:
    path = write_video(tmp_path / "levels.mp4", gray_levels(3), fps=12)
    for arguments, problem in [
        (dict(stride=0), "stride must be 1 or more"),
        (dict(max_frames=0), "max_frames must be 1 or more"),
        (dict(size=(0, 10)), "size must be"),
        (dict(size=-3), "size must be"),
    ]:
        with pytest.raises(MtransferError, match=f"^{path}: {problem}"):
            iter_frames(path, **arguments)  # checked before any decoding
    with pytest.raises(MtransferError, match="unsupported video extension"):
        write_video(tmp_path / "clip.avi", gray_levels(2), fps=12)


class ShiftEstimator:
    """A stand-in estimator whose flow is ``target - source`` in both channels, and which records its calls."""

    name = "shift"
    differentiable = True

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.batches.append(source.shape[0])
        difference = (target - source)[:, :1]
        return torch.cat((difference, difference), dim=1)


@pytest.mark.parametrize("reference, offset", [("first", lambda t: 0), ("previous", lambda t: t - 1)])
def test_video_flows_pairs_each_frame_with_its_reference(reference: str, offset) -> None:
    levels = torch.tensor([0.0, 0.1, 0.3, 0.6, 1.0, 1.5, 2.1])
    frames = levels.view(-1, 1, 1, 1).expand(-1, 3, 4, 5).contiguous()
    estimator = ShiftEstimator()
    results = list(video_flows(frames, estimator, reference=reference, batch_size=4))
    assert [index for index, _ in results] == [1, 2, 3, 4, 5, 6]
    assert estimator.batches == [4, 2]
    for index, flow in results:
        assert flow.shape == (2, 4, 5) and flow.grad_fn is None
        assert torch.allclose(flow, (levels[index] - levels[offset(index)]).expand(2, 4, 5))
    one_by_one = list(video_flows(frames, ShiftEstimator(), reference=reference, batch_size=1))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(results, one_by_one))


def test_video_flows_keeps_gradients_only_when_asked() -> None:
    frames = torch.rand(3, 3, 4, 4, requires_grad=True)
    flows = [flow for _, flow in video_flows(frames, ShiftEstimator())]
    torch.stack(flows).sum().backward()
    assert frames.grad is not None and frames.grad[0].sum() < 0 < frames.grad[1:].sum()
    with pytest.raises(ValueError, match="reference"):
        next(video_flows(frames.detach(), ShiftEstimator(), reference="last"))
    with pytest.raises(ValueError, match=r"\(T, 3, H, W\)"):
        next(video_flows(frames[0], ShiftEstimator()))
