"""Sizes that keep the picture: a preset's size is a scale that keeps the image's shape; a size the user
gives is kept as given, and a note says when it stretches the picture."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mtransfer.app import load_settings
from mtransfer.app.settings import fit_longer_side, shape_note
from mtransfer.cli.options import preset_overrides
from mtransfer.errors import UsageError
from mtransfer.files import save_image
from mtransfer.presets import available_pipelines


@pytest.mark.parametrize(("preset", "image", "working"), [
    ("offline-demo", (256, 384), (88, 128)),   # the bundled cat, 2:3
    ("offline-demo", (512, 512), (128, 128)),
    ("offline-demo", (384, 256), (128, 88)),   # portrait: the longer side is the height
    ("paper", (256, 384), (344, 512)),
    ("tiny", (80, 96), (56, 64)),
])
def test_a_preset_keeps_the_shape_and_fits_the_longer_side(preset, image, working):
    assert load_settings(preset, []).model.working_size(image) == working


@pytest.mark.parametrize("preset", available_pipelines())
def test_every_shipped_preset_keeps_the_shape_within_rounding(preset):
    model = load_settings(preset, []).model
    for image in ((256, 384), (500, 333), (1080, 1920), (97, 101)):
        working = model.working_size(image)
        scale = max(model.size) / max(image)
        assert max(working) == max(model.size)
        for side, exact in zip(working, image):
            assert side % 8 == 0 and abs(side - exact * scale) <= 4, (image, working)  # the nearest multiple


def test_a_size_the_user_gives_is_kept_as_given():
    for overrides in (preset_overrides("tiny", [], {}, "64x64"), preset_overrides("tiny", ["model.size=[64, 64]"], {})):
        assert load_settings("offline-demo", overrides).model.working_size((256, 384)) == (64, 64)
    kept = preset_overrides("tiny", ["model.size=[64, 64]", "model.keep_aspect=true"], {})
    assert load_settings("offline-demo", kept).model.working_size((256, 384)) == (40, 64)


def test_a_toml_that_does_not_ask_keeps_its_size(tmp_path):
    (tmp_path / "mine.toml").write_text('[model]\nmodel = "exact"\nsize = [32, 48]\n')
    assert load_settings(str(tmp_path / "mine.toml"), []).model.working_size((100, 100)) == (32, 48)


def test_fit_rounds_each_side_to_a_multiple_of_8_and_never_below():
    assert fit_longer_side((4104, 8), (512, 512)) == (512, 8)
    assert fit_longer_side((100, 700), (96, 128)) == (16, 128)  # 18.3 px rounds to 16


def test_the_note_names_both_shapes_and_the_size_that_keeps_it():
    note = shape_note((256, 384), (64, 64), "cat.png")
    assert note == ("note: cat.png is 256x384 (height x width) and is edited at 64x64, which changes its shape "
                    "(width:height 1.50 → 1.00); --size 40x64 keeps it")
    assert shape_note((256, 384), (88, 128)) is None  # 1.45 against 1.50: rounding, not a stretch


def test_edit_says_when_the_size_changes_the_shape(tmp_path, monkeypatch, capsys):
    from mtransfer.app.editor import Editor
    from mtransfer.cli import main

    save_image(tmp_path / "photo.png", torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0)))
    monkeypatch.chdir(tmp_path)

    def no_models(*_args, **_kwargs):
        raise UsageError("models not loaded in this test")

    monkeypatch.setattr(Editor, "load", no_models)
    monkeypatch.setattr(sys, "argv", ["mtransfer", "edit", "photo.png", "--flow", "translate(2, 0)", "--pipeline",
                                      "offline-demo", "--size", "96x96"])
    with pytest.raises(SystemExit):
        main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == ("note: photo.png is 96x128 (height x width) and is edited at 96x96, which changes its shape "
                        "(width:height 1.33 → 1.00); --size 72x96 keeps it")


def test_run_says_when_the_size_changes_the_shape(tmp_path, monkeypatch, capsys):
    """The same note before a run's work: the cat (256x384) at a fixed 64x64 is stretched."""
    from mtransfer.cli import main

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mtransfer", "run", str(root / "sample_videos" / "pan.mp4"), "--onto",
                                      str(root / "sample_videos" / "cat.png"), "--pipeline", "tiny", "--size",
                                      "64x64", "--flow-only", "--out", str(tmp_path / "run")])
    try:
        main()
    except SystemExit as stopped:  # main exits only on failure
        assert stopped.code in (0, None)
    assert "cat.png is 256x384 (height x width) and is edited at 64x64, which changes its shape" in " ".join(
        capsys.readouterr().err.split())


def test_no_note_when_the_size_is_already_the_closest_that_keeps_the_shape():
    """A small picture's multiple-of-8 rounding is not a stretch the user could avoid: 256x384 at 40x64."""
    assert fit_longer_side((256, 384), (64, 64)) == (40, 64)
    assert shape_note((256, 384), (40, 64)) is None
