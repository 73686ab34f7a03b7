"""Flow and mask files: byte layouts, round trips, and one-line errors that name the file."""

from __future__ import annotations

import struct

import av
import numpy as np
import pytest
import torch
from PIL import Image

from mtransfer.errors import MtransferError
from mtransfer.flows import read_flow, read_flow_and_valid, read_mask, write_flow


def random_flow(height: int = 6, width: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, height, width, generator=torch.Generator().manual_seed(seed)) * 20


def test_flo_layout_is_middlebury(tmp_path) -> None:
    # Built by hand: header, then u, v interleaved row by row.
    values = np.arange(2 * 3 * 2, dtype="<f4").reshape(2, 3, 2)  # (H, W, uv)
    path = tmp_path / "hand.flo"
    path.write_bytes(struct.pack("<fii", 202021.25, 3, 2) + values.tobytes())
    flow = read_flow(path)
    assert flow.shape == (2, 2, 3)
    assert torch.equal(flow[0], torch.tensor([[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]]))
    assert torch.equal(flow[1], torch.tensor([[1.0, 3.0, 5.0], [7.0, 9.0, 11.0]]))
    write_flow(tmp_path / "again.flo", flow)
    assert (tmp_path / "again.flo").read_bytes() == path.read_bytes()


def test_flo_round_trip_is_bit_exact(tmp_path) -> None:
    flow = random_flow()
    first, second = tmp_path / "a.flo", tmp_path / "b.flo"
    write_flow(first, flow)
    assert first.read_bytes()[:4] == b"PIEH"  # the magic float's bytes
    back = read_flow(first)
    assert back.dtype == torch.float32 and torch.equal(back, flow)
    write_flow(second, back)
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.flo", "b.flo"]  # no temporary files left


def test_flo_unknown_values_become_invalid(tmp_path) -> None:
    flow = random_flow()
    valid = torch.ones(1, 6, 9)
    valid[0, 2, 3] = 0
    write_flow(tmp_path / "holes.flo", flow, valid)
    raw = np.frombuffer((tmp_path / "holes.flo").read_bytes(), "<f4", offset=12).reshape(6, 9, 2)
    assert np.all(raw[2, 3] > 1e9)
    back, back_valid = read_flow_and_valid(tmp_path / "holes.flo")
    assert torch.equal(back_valid, valid)
    assert back[:, 2, 3].abs().max() == 0 and torch.equal(back[:, 0], flow[:, 0])


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"PIEH", "too short"),
        (struct.pack("<fii", 1.0, 2, 2) + bytes(32), "magic"),
        (struct.pack("<fii", 202021.25, 0, 5), "impossible size"),
        (struct.pack("<fii", 202021.25, 10**6, 10**6), "impossible size"),
        (struct.pack("<fii", 202021.25, 4, 4) + bytes(100), "truncated"),
        (struct.pack("<fii", 202021.25, 2, 2) + bytes(40), "trailing"),
    ],
)
def test_bad_flo_files_name_the_file_and_the_problem(tmp_path, content: bytes, problem: str) -> None:
    path = tmp_path / "bad.flo"
    path.write_bytes(content)
    with pytest.raises(MtransferError, match=problem) as caught:
        read_flow(path)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_missing_and_unknown_files(tmp_path) -> None:
    with pytest.raises(MtransferError, match="no such flow file"):
        read_flow(tmp_path / "missing.flo")
    (tmp_path / "flow.txt").write_text("1 2 3")
    with pytest.raises(MtransferError, match="unknown flow file type"):
        read_flow(tmp_path / "flow.txt")
    with pytest.raises(MtransferError, match="unknown flow file type"):
        write_flow(tmp_path / "flow.jpg", random_flow())
    with pytest.raises(MtransferError, match="shape"):
        write_flow(tmp_path / "flow.flo", torch.zeros(3, 4, 4))


def test_npy_accepts_both_layouts_and_writes_channels_first(tmp_path) -> None:
    flow = random_flow()
    np.save(tmp_path / "first.npy", flow.numpy().astype(np.float64))
    np.save(tmp_path / "last.npy", flow.permute(1, 2, 0).numpy())
    assert torch.equal(read_flow(tmp_path / "first.npy"), flow)
    assert torch.equal(read_flow(tmp_path / "last.npy"), flow)
    write_flow(tmp_path / "out.npy", flow)
    stored = np.load(tmp_path / "out.npy")
    assert stored.shape == (2, 6, 9) and stored.dtype == np.float32 and np.array_equal(stored, flow.numpy())
    valid = torch.ones(1, 6, 9)
    valid[0, 0, 0] = 0
    write_flow(tmp_path / "holes.npy", flow, valid)
    assert np.isnan(np.load(tmp_path / "holes.npy")[:, 0, 0]).all()
    assert torch.equal(read_flow_and_valid(tmp_path / "holes.npy")[1], valid)


def test_bad_npy_files(tmp_path) -> None:
    np.save(tmp_path / "shape.npy", np.zeros((3, 4, 5), np.float32))
    with pytest.raises(MtransferError, match=r"shape.npy: array shape \(3, 4, 5\)"):
        read_flow(tmp_path / "shape.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(MtransferError, match="junk.npy: not a readable .npy"):
        read_flow(tmp_path / "junk.npy")


def test_kitti_png_round_trip_and_encoding(tmp_path) -> None:
    flow = random_flow(7, 11)
    flow[:, 0, 0] = torch.tensor([1.5, -2.25])
    valid = torch.ones(1, 7, 11)
    valid[0, 3, 4] = 0
    path = tmp_path / "kitti.png"
    write_flow(path, flow, valid)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        assert frame.format.name == "rgb48be"  # 16-bit RGB as PNG stores it
        raw = frame.to_ndarray().astype(np.int64)
    assert raw.shape == (7, 11, 3)
    assert raw[0, 0].tolist() == [2**15 + 96, 2**15 - 144, 1]  # u, v in 1/64 px around 2^15; valid flag
    assert raw[3, 4, 2] == 0
    back, back_valid = read_flow_and_valid(path)
    assert torch.equal(back_valid, valid)
    keep = valid.bool().expand(2, -1, -1)
    assert (back - flow)[keep].abs().max() <= 1 / 128 + 1e-4
    assert back[:, 3, 4].abs().max() == 0


def test_bad_kitti_files(tmp_path) -> None:
    with pytest.raises(MtransferError, match="512"):
        write_flow(tmp_path / "far.png", torch.full((2, 3, 3), 600.0))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "eight.png")
    with pytest.raises(MtransferError, match="eight.png: not a KITTI flow PNG"):
        read_flow(tmp_path / "eight.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(MtransferError, match="broken.png: not a readable PNG"):
        read_flow(tmp_path / "broken.png")


def test_read_mask_from_grey_alpha_and_16_bit_images(tmp_path) -> None:
    grey = np.array([[0, 255], [51, 102]], np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    mask = read_mask(tmp_path / "grey.png")
    assert mask.shape == (1, 2, 2) and torch.allclose(mask[0], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = [[255, 0], [0, 255]]
    Image.fromarray(rgba).save(tmp_path / "cutout.png")
    assert torch.equal(read_mask(tmp_path / "cutout.png")[0], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    Image.fromarray(np.array([[0, 65535], [32768, 0]], np.uint16)).save(tmp_path / "deep.png")
    assert torch.allclose(read_mask(tmp_path / "deep.png")[0], torch.tensor([[0.0, 1.0], [0.5, 0.0]]), atol=1e-4)
    resized = read_mask(tmp_path / "grey.png", size=(6, 10))
    assert resized.shape == (1, 6, 10) and 0 <= resized.min() and resized.max() <= 1


def test_read_mask_errors(tmp_path) -> None:
    with pytest.raises(MtransferError, match="no such mask image"):
        read_mask(tmp_path / "none.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(MtransferError, match="text.png: not a readable mask image"):
        read_mask(tmp_path / "text.png")
