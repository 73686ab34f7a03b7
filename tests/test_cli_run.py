"""``mtransfer run`` end to end from the command line: every output well formed, and bad input refused."""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from mtransfer.app.settings import fit_longer_side
from mtransfer.cli import main
from mtransfer.files import load_image
from mtransfer.flows.io import read_flow
from mtransfer.video import probe_video

ROOT = Path(__file__).resolve().parent.parent
VIDEO = ROOT / "sample_videos" / "translate.mp4"
IMAGE = ROOT / "sample_videos" / "cat.png"
PRESET = str(Path(__file__).resolve().parent / "data" / "run-test.toml")
FRAMES, HEIGHT, WIDTH = 4, 32, 48  # from the test preset


def cli(capsys, *args: str) -> tuple[int, str]:
    """Run ``mtransfer ARGS`` in this process; its exit status and what it printed to stderr."""
    argv = sys.argv
    sys.argv = ["mtransfer", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
    return code, capsys.readouterr().err


def run_args(out: Path, *extra: str, video: Path = VIDEO, image: Path = IMAGE) -> list[str]:
    return ["run", str(video), "--onto", str(image), "--pipeline", PRESET, "--out", str(out), *extra]


class Sources(HTMLParser):
    """Every ``src``/``href`` in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.paths += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = sys.argv
    sys.argv = ["mtransfer", *run_args(out, "--prompt", "a cat")]
    try:
        main()
    finally:
        sys.argv = argv
    return out


def test_run_writes_every_output_well_formed(finished):
    for kind, suffix in (("frames", ".png"), ("flow_color", ".png"), ("edit_mask", ".png"), ("driving", ".png")):
        files = sorted((finished / kind).glob(f"*{suffix}"))
        assert [f.stem for f in files] == [f"{i:04d}" for i in range(FRAMES)]
    for path in (finished / "frames").glob("*.png"):
        assert Image.open(path).size == (WIDTH, HEIGHT)
    flows = [read_flow(finished / "flow" / f"{i:04d}.flo") for i in range(FRAMES)]
    assert all(flow.shape == (2, HEIGHT, WIDTH) for flow in flows)
    assert flows[0].abs().max() == 0 and flows[-1].abs().max() > 0.5  # frame 0 is the reference

    for name, width in (("result.mp4", WIDTH), ("result.gif", WIDTH), ("side_by_side.mp4", 40 + 2 * WIDTH),
                        ("flow.mp4", 40 + WIDTH)):
        info = probe_video(finished / name)
        assert (info.frame_count, info.width, info.height) == (FRAMES, width, HEIGHT), name
    assert probe_video(finished / "result.mp4").fps == pytest.approx(probe_video(VIDEO).fps / 5)

    manifest = json.loads((finished / "manifest.json").read_text())
    assert manifest["config"]["model"]["prompt"] == "a cat"
    assert all(manifest["stages"][s]["status"] == "done" for s in ("decode", "flow", "align", "guide", "encode"))


def test_report_references_only_existing_local_files(finished):
    page = (finished / "report.html").read_text()
    parser = Sources()
    parser.feed(page)
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page).group(1))
    viewer = [shown[key] for frame in data["frames"] for shown in frame["panels"].values()
              for key in ("src", "error") if shown.get(key)]
    inline = [path for path in parser.paths if path.startswith("data:image/png;base64,")]  # the flow legend
    assert len(viewer) >= 3 * FRAMES and len(inline) == 1
    for path in set(parser.paths + viewer) - set(inline):
        assert not re.match(r"^[a-z]+:|^/", path), f"not a relative path: {path}"
        assert (finished / path).is_file(), path
    assert "frames/0003.png" in viewer and "achieved_color/0003.png" in viewer and "source.png" in parser.paths
    assert "guidance.steps" in page and "<script>" in page
    # the evaluation: its three plots, the naive baseline as the temporal plot's reference, the file linked
    assert all(f'data-key="{key}"' in page for key in ("epe_edit", "ssim", "warping_error"))
    assert '<polyline class="reference"' in page and "evaluation.json" in parser.paths


def test_flow_only_stops_before_guidance(tmp_path, capsys):
    code, err = cli(capsys, *run_args(tmp_path / "run", "--flow-only"))
    assert code == 0, err
    out = tmp_path / "run"
    assert probe_video(out / "flow.mp4").frame_count == FRAMES
    assert len(list((out / "flow").glob("*.flo"))) == FRAMES
    assert not (out / "frames").exists() and not (out / "result.mp4").exists()
    assert "--flow-only" in (out / "report.html").read_text()
    assert "evaluation skipped: --flow-only made no edits" in err and not (out / "evaluation.json").exists()


def test_common_flags_become_settings(tmp_path, capsys):
    code, err = cli(capsys, *run_args(tmp_path / "run", "--flow-only", "--frames", "3", "--size", "40x56",
                                      "--strength", "0.5", "--region", "0,0,0.5,1", "--flow", "chained"))
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]
    assert config["video"]["max_frames"] == 3 and config["model"]["size"] == [40, 56]
    assert config["align"]["strength"] == 0.5 and config["align"]["region"] == [0.0, 0.0, 0.5, 1.0]
    flow = read_flow(tmp_path / "run" / "flow" / "0002.flo")
    assert flow.shape == (2, 40, 56) and flow[:, :, 28:].abs().max() == 0  # no motion outside the region


def one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for word in words:
        assert word in lines[0], err


def test_bad_inputs_are_one_line_errors_that_leave_earlier_results_alone(finished, tmp_path, capsys):
    before = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()}

    not_video = tmp_path / "clip.mp4"
    not_video.write_text("not a video")
    one_line_error(*cli(capsys, *run_args(finished, video=not_video)), "clip.mp4")

    odd = tmp_path / "odd.png"
    Image.new("RGB", (61, 45), (10, 120, 200)).save(odd)
    code, err = cli(capsys, *run_args(finished, "--set", "model.model=\"tiny\"", "--set", "model.size=[]", image=odd))
    one_line_error(code, err, "odd.png", "multiples of 8", "--size 40x56")

    one_line_error(*cli(capsys, *run_args(finished, "--region", "10,10,200,20")), "outside")
    one_line_error(*cli(capsys, *run_args(finished, "--flow-only", "--init", "previous")), "--flow-only")
    one_line_error(*cli(capsys, *run_args(finished, "--set", "align.fit=\"squash\"")), "align.fit")
    one_line_error(*cli(capsys, *run_args(finished, image=tmp_path / "missing.png")), "missing.png")
    one_line_error(*cli(capsys, *run_args(finished, "--pipeline", "nonesuch")), "nonesuch")
    # TV-L1 has no gradient: guidance through it would silently ignore the flow term
    one_line_error(*cli(capsys, *run_args(finished, "--set", 'estimator.name="tvl1"')),
                   "estimator.name: 'tvl1' is not differentiable", "raft-large, raft-small, pyramid")

    after = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()}
    assert after == before


def test_changed_settings_are_refused_with_a_way_out(finished, capsys):
    code, err = cli(capsys, *run_args(finished, "--steps", "4"))
    one_line_error(code, err, "guidance.steps: 3 → 4", "--out", "--restart")


def test_a_missing_model_is_a_one_line_error_before_any_stage_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    missing = ("--set", "model.model=\"CompVis/stable-diffusion-v1-4\"", "--set", "model.size=[32, 48]")
    code, err = cli(capsys, *run_args(tmp_path / "run", *missing))
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: could not load") and "stable-diffusion-v1-4" in err
    assert not (tmp_path / "run").exists()  # found before minutes of flow estimation, nothing written
    raft = ("--set", 'estimator.name="raft-small"', "--set", f'estimator.weights="{tmp_path / "no.pth"}"')
    code, err = cli(capsys, *run_args(tmp_path / "run", *raft))
    assert code == 2 and "no.pth: no such raft-small weights file" in " ".join(err.split())
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("MTRANSFER_RAFT_WEIGHTS", str(tmp_path / "judge.pth"))  # a judge without its weights
    code, err = cli(capsys, *run_args(tmp_path / "run", "--set", 'evaluation.estimator="raft-small"'))
    assert code == 2 and "judge.pth: no such raft-small weights file" in " ".join(err.split())
    assert not (tmp_path / "run").exists()  # found before the edits, nothing written
    code, err = cli(capsys, *run_args(tmp_path / "run", *missing, "--flow-only"))
    assert code == 0, err  # flows need no diffusion model
    assert len(list((tmp_path / "run" / "flow").glob("*.flo"))) == FRAMES


def test_the_tiny_stable_diffusion_preset_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = cli(capsys, "run", ROOT / "sample_videos" / "rotate.mp4", "--onto", IMAGE, "-p", "tiny", "--out", out)
    assert code == 0, err
    info = probe_video(out / "result.mp4")
    height, width = fit_longer_side(tuple(load_image(IMAGE).shape[-2:]), (64, 64))  # the preset keeps its shape
    assert (info.frame_count, info.width, info.height) == (3, width, height) and (width, height) == (64, 40)
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    guide = stages["guide"]["frames"]
    assert guide["0000"] == {"still": True, "role": "still"} and guide["0002"]["diverged"] is False  # frame 2 went through SD
    assert (out / "cache" / "latents" / "0002.pt").exists()
    # judged at the end: the figures in the manifest and evaluation.json, the summary table in the terminal
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert stages["evaluate"]["frames"]["0002"] == evaluation["frames"][2]
    assert {"epe_edit", "psnr", "ssim", "warping_error", "baseline_warping_error"} <= set(evaluation["frames"][2])
    printed = " ".join(err.split())
    assert "EPE mask" in printed and "naive" in printed and f"judge: {evaluation['judge']['estimator']}" in printed, err

