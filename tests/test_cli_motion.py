"""`mtransfer motion`: a spec becomes a flow file equal to the toolkit's, plus pictures; bad specs fail cleanly."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from mtransfer.flows import compose, read_flow, rotation, translation


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtransfer", *args], capture_output=True, text=True)


def test_motion_writes_the_composed_flow_and_previews(tmp_path):
    image = tmp_path / "still.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "m" / "flow.flo"
    result = run_cli("motion", "rotate(15) | translate(4, -2)", "--onto", str(image), "--out", str(out), "--frames", "3")
    assert result.returncode == 0, result.stderr
    expected = compose(rotation(48, 64, 15), translation(48, 64, 4, -2))
    assert torch.allclose(read_flow(out), expected, atol=1e-5)
    for suffix in ("_color.png", "_arrows.png", "_moved.png"):
        with Image.open(tmp_path / "m" / f"flow{suffix}") as picture:
            assert picture.size == (64, 48)
    assert (tmp_path / "m" / "flow_preview.mp4").stat().st_size > 0


def test_motion_rejects_unknown_motion_and_missing_size(tmp_path):
    result = run_cli("motion", "spin(3)", "--size", "32x32", "--out", str(tmp_path / "f.flo"))
    assert result.returncode == 2
    assert "unknown motion 'spin'" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("motion", "translate(1)")
    assert result.returncode == 2 and "--onto" in result.stderr
    assert not (tmp_path / "f.flo").exists()
