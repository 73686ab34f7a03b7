"""What the exact model's world holds (``family_words``), said in the offline-demo preset, and the warning
before an edit whose target motion lies outside it (``world_warning``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mtransfer.app import load_settings, world_warning
from mtransfer.app.models import family_words
from mtransfer.errors import UsageError
from mtransfer.files import save_image
from mtransfer.flows import parse_flow_spec
from mtransfer.presets import load_pipeline

DEMO = load_settings("offline-demo", []).model


def test_the_offline_demo_description_states_its_world():
    height, width = DEMO.size
    words = family_words(height, width, DEMO)
    assert words.endswith("shifts of whole pixels up to ±6 px each way")
    assert words.split(": ", 1)[1] in load_pipeline("offline-demo")["description"]


def test_family_words_follow_the_settings():
    settings = load_settings("offline-demo", ["model.family_step=2", "model.family_radius=3",
                                              "model.family_rotations=[0, 5]"]).model
    assert family_words(96, 128, settings) == ("the picture moved as a whole: shifts in steps of 2 px up to ±6 px each "
                                               "way combined with turns by 0, 5 degrees")


@pytest.mark.parametrize("spec", ["translate(3, -2)", "translate(-6, 6)", "translate(2.4, 0)"])
def test_no_warning_inside_the_world(spec):
    assert world_warning(DEMO, [parse_flow_spec(spec, 96, 128)]) is None


@pytest.mark.parametrize(("spec", "closest", "label"), [("rotate(10)", "shift (0, 0) px", "missed"),
                                                        ("translate(12, 0)", "shift (6, 0) px", "partial")])
def test_warning_outside_the_world_names_the_closest_member(spec, closest, label):
    warning = world_warning(DEMO, [parse_flow_spec(spec, 96, 128)])
    assert warning is not None and "±6 px" in warning
    assert f"the closest it holds, {closest}," in warning and f"can be {label} at best" in warning


def test_a_turn_in_the_family_brings_a_rotation_within_reach():
    turning = load_settings("offline-demo", ["model.family_rotations=[0, 10]"]).model
    assert world_warning(turning, [parse_flow_spec("rotate(10)", 96, 128)]) is None


def test_the_mask_decides_what_must_be_reached():
    flow = parse_flow_spec("translate(12, 0)", 96, 128)
    flow[:, :, 64:] = 0  # the right half stays still: within reach there, out of reach on the left
    right = torch.zeros(96, 128)
    right[:, 64:] = 1
    assert world_warning(DEMO, [flow], [right]) is None
    assert world_warning(DEMO, [flow], [1 - right]) is not None


def test_a_clip_names_how_many_frames_lie_outside_and_the_worst():
    flows = [parse_flow_spec(spec, 96, 128) for spec in ("translate(2, 0)", "translate(9, 0)", "translate(14, 0)")]
    warning = world_warning(DEMO, flows)
    assert "2 of 3 target motions (the worst: frame 2)" in warning and "8.00 px off a 14.00 px" in warning


def test_models_that_paint_anything_get_no_warning():
    assert world_warning(load_settings("tiny", []).model, [parse_flow_spec("rotate(40)", 64, 64)]) is None


def test_edit_warns_before_the_models_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    from mtransfer.app.editor import Editor
    from mtransfer.cli import main

    save_image(tmp_path / "photo.png", torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0)))
    monkeypatch.chdir(tmp_path)

    def no_models(*_args, **_kwargs):
        raise UsageError("models not loaded in this test")

    monkeypatch.setattr(Editor, "load", no_models)
    monkeypatch.setattr(sys, "argv", ["mtransfer", "edit", "photo.png", "--flow", "rotate(10)", "--pipeline",
                                      "offline-demo"])
    with pytest.raises(SystemExit):
        main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("warning: model 'exact' at 96x128 (its pixels below) only holds") and "missed at best" in lines[0]
    assert lines[-1] == "error: models not loaded in this test"
