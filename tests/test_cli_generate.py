"""`mtransfer generate` keeps its trajectory; `mtransfer edit --trajectory` edits along it without inversion."""

from __future__ import annotations

import json

import pytest
import torch

from mtransfer.cli import main
from mtransfer.files import load_image


def cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr("sys.argv", ["mtransfer", *args])
    try:
        main()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_unguided_edit_along_the_trajectory_retraces_the_generated_image(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MTRANSFER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "gen"
    assert cli(monkeypatch, "generate", "a red cat", "--pipeline", "tiny", "--seed", "5", "--out", str(out)) == 0
    record = torch.load(out / "trajectory.pt", weights_only=True)
    assert record["latents"].shape[0] == 4 + 1 and record["prompt"] == "a red cat"

    edit = tmp_path / "edit"
    code = cli(monkeypatch, "edit", str(out / "image.png"), "--pipeline", "tiny", "--trajectory",
               str(out / "trajectory.pt"), "--flow", "translate(3)", "--guidance-weight", "0", "--out", str(edit))
    assert code == 0, capsys.readouterr().err
    run = json.loads((edit / "run.json").read_text())
    assert run["prompt"] == "a red cat" and run["trajectory"].endswith("trajectory.pt")
    assert (load_image(edit / "edited.png") - load_image(out / "image.png")).abs().max() <= 1 / 255


def test_a_trajectory_from_other_settings_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MTRANSFER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "gen"
    assert cli(monkeypatch, "generate", "a dog", "--pipeline", "tiny", "--out", str(out)) == 0
    capsys.readouterr()
    code = cli(monkeypatch, "edit", str(out / "image.png"), "--pipeline", "tiny", "--steps", "6",
               "--trajectory", str(out / "trajectory.pt"), "--flow", "translate(1)", "--out", str(tmp_path / "e"))
    err = capsys.readouterr().err
    assert code == 2 and "trajectory.pt: was generated with steps 4, but this edit uses 6" in " ".join(err.split())
    (tmp_path / "junk.pt").write_bytes(b"not a trajectory")
    code = cli(monkeypatch, "edit", str(out / "image.png"), "--pipeline", "tiny",
               "--trajectory", str(tmp_path / "junk.pt"), "--flow", "translate(1)", "--out", str(tmp_path / "e"))
    assert code == 2 and "junk.pt: not a trajectory" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "e").exists()
