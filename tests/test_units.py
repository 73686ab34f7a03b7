"""One unit for motion specs: pixels of the image the user gave. A spec copied between `motion --onto`,
`edit` and the web app must move the same content the same amount, whatever size each works at."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mtransfer.errors import UsageError
from mtransfer.files import save_image
from mtransfer.flows import read_flow, resize_flow

SPEC = "rotate(15, cx=30, cy=20) | translate(12, -6)"  # absolute pixels: a centre and a shift


def _cli(monkeypatch, *arguments: str) -> None:
    from mtransfer.cli import main

    monkeypatch.setattr(sys, "argv", ["mtransfer", *arguments])
    with pytest.raises(SystemExit):
        main()
        raise SystemExit(0)


def _photo(folder: Path, height: int, width: int) -> Path:
    path = folder / "photo.png"
    save_image(path, torch.rand(3, height, width, generator=torch.Generator().manual_seed(0)))
    return path


def _motion_flow(monkeypatch, folder: Path, photo: Path, spec: str = SPEC) -> torch.Tensor:
    """What `motion --onto` builds: the spec on the image's own grid."""
    _cli(monkeypatch, "motion", spec, "--onto", str(photo), "--out", str(folder / "m.flo"), "--frames", "2")
    return read_flow(folder / "m.flo")


def _edit_flow(monkeypatch, photo: Path, *arguments: str, spec: str = SPEC) -> torch.Tensor:
    """The target flow `edit` guides towards, caught before the models load (the edit itself is not run)."""
    from mtransfer.app import models
    from mtransfer.app.editor import Editor

    caught = []

    def catch(settings, flows, masks=None):
        caught.append(flows[0])

    def no_models(*_args, **_kwargs):
        raise UsageError("models not loaded in this test")

    monkeypatch.setattr(models, "world_warning", catch)
    monkeypatch.setattr(Editor, "load", no_models)
    _cli(monkeypatch, "edit", str(photo), "--flow", spec, *arguments)
    return caught[0]


@pytest.mark.parametrize(("image", "size"), [((80, 96), "40x48"), ((80, 96), "80x96"), ((60, 90), "64x64")])
def test_edit_and_motion_move_the_same_content_the_same_amount(image, size, tmp_path, monkeypatch):
    photo = _photo(tmp_path, *image)
    on_image = _motion_flow(monkeypatch, tmp_path, photo)
    assert tuple(on_image.shape[-2:]) == image
    centre = on_image[:, 20, 30]  # the rotation's centre only shifts: by (12, -6) image px
    assert torch.allclose(centre, torch.tensor([12.0, -6.0]), atol=1e-3)
    working = _edit_flow(monkeypatch, photo, "--pipeline", "tiny", "--size", size)
    expected = resize_flow(on_image, tuple(int(side) for side in size.split("x")))
    assert working.shape == expected.shape
    assert torch.allclose(working, expected, atol=1e-4)


def test_a_preset_size_keeps_the_spec_in_image_pixels(tmp_path, monkeypatch):
    photo = _photo(tmp_path, 80, 96)
    working = _edit_flow(monkeypatch, photo, "--pipeline", "tiny", spec="translate(12, -6)")  # at 56x64
    assert tuple(working.shape[-2:]) == (56, 64)
    assert float(working[0].mean()) == pytest.approx(12.0 * 64 / 96, abs=1e-3)  # 12 image px, in working px
    assert float(working[1].mean()) == pytest.approx(-6.0 * 56 / 80, abs=1e-3)


def _web_app_flow(folder: Path, spec: str) -> torch.Tensor:
    """The flow the web app's Edit tab guides towards, on the image's own grid (``edit_work`` resizes it)."""
    from mtransfer.ui.session import Session

    session = Session(folder)
    return resize_flow(session.flow(spec), session.original_size)


def test_the_web_app_reads_the_spec_in_image_pixels_for_a_small_image(tmp_path, monkeypatch):
    photo = _photo(tmp_path, 80, 96)
    photo.rename(tmp_path / "source.png")
    _photo(tmp_path, 80, 96)
    assert torch.allclose(_web_app_flow(tmp_path, SPEC), _motion_flow(monkeypatch, tmp_path, photo), atol=1e-4)


def test_the_web_app_reads_the_spec_in_image_pixels_for_a_large_image(tmp_path, monkeypatch):
    photo = _photo(tmp_path, 600, 800)
    photo.rename(tmp_path / "source.png")
    _photo(tmp_path, 600, 800)
    web = _web_app_flow(tmp_path, "translate(40, 0)")
    assert float(web[0].mean()) == pytest.approx(40.0, abs=1.0)
