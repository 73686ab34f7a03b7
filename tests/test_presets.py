"""Pipeline presets: found by name or path, overrides parsed as TOML values, bad input named clearly."""

from __future__ import annotations

import pytest

from mtransfer.errors import MtransferError
from mtransfer.presets import available_pipelines, load_pipeline, parse_override, section


def test_paper_preset_holds_the_papers_settings():
    guidance = section(load_pipeline("paper"), "guidance")
    assert (guidance["steps"], guidance["recursions"]) == (500, 10)
    assert (guidance["guidance_weight"], guidance["flow_weight"], guidance["color_weight"]) == (300.0, 3.0, 100.0)
    assert "paper" in available_pipelines()


def test_overrides_are_typed_and_nested():
    config = load_pipeline("paper", ["guidance.steps=50", "model.size=[256, 320]", "model.prompt=a cat", "x.y.z=true"])
    assert config["guidance"]["steps"] == 50
    assert config["model"]["size"] == [256, 320]
    assert config["model"]["prompt"] == "a cat"
    assert config["x"]["y"]["z"] is True


def test_bad_names_paths_and_overrides(tmp_path):
    with pytest.raises(MtransferError, match="unknown pipeline 'nope'"):
        load_pipeline("nope")
    with pytest.raises(MtransferError, match="no such pipeline file"):
        load_pipeline(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[guidance\nsteps = ")
    with pytest.raises(MtransferError, match="broken.toml: not valid TOML"):
        load_pipeline(broken)
    with pytest.raises(MtransferError, match="expected section.key=value"):
        parse_override("steps=5")
    with pytest.raises(MtransferError, match="is a value, not a section"):
        load_pipeline("paper", ["guidance.steps.x=1"])
