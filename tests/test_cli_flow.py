"""``mtransfer flow``: a real run on a sample clip, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mtransfer.cli import app, commands, main  # noqa: F401  (registers the sub-commands on the app)
from mtransfer.files import load_image
from mtransfer.flows.io import read_flow
from mtransfer.flows.viz import flow_to_color
from mtransfer.video import probe_video
from in_process import run_main as in_process

SAMPLE = Path(__file__).resolve().parent.parent / "sample_videos" / "translate.mp4"


def mtransfer(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtransfer", *arguments], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_flow_on_a_sample_clip_writes_every_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = mtransfer("flow", str(SAMPLE), "--max-frames", "4", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "--estimator raft-large" in result.stderr  # the hint for the default estimator

    assert sorted(p.name for p in (out / "driving").iterdir()) == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert sorted(p.name for p in (out / "driving_flow").iterdir()) == ["0001.flo", "0002.flo", "0003.flo"]
    assert sorted(p.name for p in (out / "driving_color").iterdir()) == ["0001.png", "0002.png", "0003.png"]
    assert load_image(out / "driving" / "0000.png").shape == (3, 128, 160)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["clip"]["frame_count"] == 4 and summary["source"]["frame_count"] == 24
    assert (summary["estimator"], summary["reference"]) == ("tvl1", "first")
    assert [record["index"] for record in summary["frames"]] == [1, 2, 3]
    assert summary["max_magnitude"] == max(record["max_magnitude"] for record in summary["frames"])

    with np.load(SAMPLE.parent / "translate_flow.npz") as archive:
        truth, mask = torch.from_numpy(archive["flows"]), torch.from_numpy(archive["object_mask"])
    for record in summary["frames"]:
        flow = read_flow(out / record["flow"])
        assert flow.shape == (2, 128, 160)
        assert (flow - truth[record["index"] - 1]).norm(dim=0)[mask].mean() < 0.5
        assert flow.norm(dim=0).max().item() == pytest.approx(record["max_magnitude"], rel=1e-5)
        # One colour scale for the whole clip, not one per frame:
        color = load_image(out / record["color"])
        expected = flow_to_color(flow, max_magnitude=summary["max_magnitude"])
        assert (color - expected).abs().max() < 1.5 / 255

    preview = probe_video(out / "flow.mp4")
    assert (preview.frame_count, preview.width, preview.height, preview.fps) == (3, 320, 128, 12.0)


def test_flow_resumes_refuses_changed_options_and_restart_moves_the_old_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``mtransfer flow`` keeps ``run``'s folder rules: nothing is deleted, stale results go to superseded/."""
    out = tmp_path / "out"
    flow = ("flow", str(SAMPLE), "--out", str(out), "--max-frames")
    assert in_process(monkeypatch, capsys, *flow, "5")[0] == 0
    (out / "notes.txt").write_text("mine")
    code, err = in_process(monkeypatch, capsys, *flow, "5")
    assert code == 0 and "nothing new" in err  # resumed: every frame was there

    code, err = in_process(monkeypatch, capsys, *flow, "4")
    assert code == 2 and "video.max_frames: 5 → 4" in err and "--restart" in err
    assert len(list((out / "driving_flow").glob("*.flo"))) == 4

    code, err = in_process(monkeypatch, capsys, *flow, "4", "--restart")
    assert code == 0, err
    assert sorted(p.stem for p in (out / "driving_flow").glob("*.flo")) == ["0001", "0002", "0003"]
    (moved,) = (out / "superseded").iterdir()
    assert sorted(p.stem for p in (moved / "driving_flow").glob("*.flo")) == ["0001", "0002", "0003", "0004"]
    assert (moved / "flow.mp4").is_file() and (out / "notes.txt").read_text() == "mine"


def test_a_missing_video_is_one_red_line_and_exit_status_2(tmp_path: Path) -> None:
    result = mtransfer("flow", "missing.mp4", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: missing.mp4: no such video"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["flow", "notes.mp4"], "notes.mp4: not a readable video"),
        (["flow", str(SAMPLE), "--size", "big"], "bad size 'big'"),
        (["flow", str(SAMPLE), "--estimator", "raft-small", "--weights", "nowhere.pth"], "nowhere.pth"),
    ],
)
def test_bad_input_exits_2_with_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, arguments: list[str], message: str
) -> None:
    """The same entry point as the ``mtransfer`` script, in-process to save the start-up time of torch."""
    (tmp_path / "notes.mp4").write_text("these are notes, not a video\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mtransfer", *arguments])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0]
    assert not list(tmp_path.rglob("*.flo"))


def test_help_shows_examples_a_newcomer_can_follow() -> None:
    result = CliRunner().invoke(app, ["flow", "--help"], terminal_width=120)
    assert result.exit_code == 0
    for expected in ("Examples", "mtransfer flow sample_videos/translate.mp4", "--reference", "--max-frames", "--size"):
        assert expected in result.output


def test_flow_quiet_prints_no_progress_in_a_log(tmp_path: Path) -> None:
    """Piped output gets timestamped progress lines; ``--quiet`` none, but still the result."""
    arguments = ("flow", str(SAMPLE), "--max-frames", "3", "--size", "64")
    logged = mtransfer(*arguments, "--out", str(tmp_path / "a"), cwd=tmp_path)
    quiet = mtransfer(*arguments, "--out", str(tmp_path / "b"), "--quiet", cwd=tmp_path)
    assert logged.returncode == quiet.returncode == 0, logged.stderr + quiet.stderr
    progress = [line for line in logged.stderr.splitlines() + logged.stdout.splitlines() if line.startswith("20")]
    assert progress and "flow" in " ".join(progress)  # the log names the stage it is in
    assert not [line for line in quiet.stderr.splitlines() + quiet.stdout.splitlines() if line.startswith("20")]
    assert (tmp_path / "b" / "driving_flow" / "0002.flo").is_file()
