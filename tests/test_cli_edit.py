"""``mtransfer edit``: the whole path on the tiny random SD (the same loading code as real models), its
files, and one-line errors with exit status 2 for bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtransfer.cli import main
from mtransfer.files import save_image


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tiny model gets built (once) instead of the user's cache."""
    return tmp_path_factory.mktemp("mtransfer-cache")


@pytest.fixture()
def inputs(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 80x96 picture, a mask drawn on it, and a working folder; the tiny model's cache is private."""
    monkeypatch.setenv("MTRANSFER_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    save_image(tmp_path / "photo.png", torch.rand(3, 80, 96, generator=torch.Generator().manual_seed(0)))
    mask = np.zeros((80, 96), np.uint8)
    mask[20:60, 20:70] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path


TINY = ["--model", "tiny", "--estimator", "pyramid", "--size", "64x64", "--device", "cpu", "--steps", "3",
        "--recursions", "2", "--guidance-weight", "30", "--clip", "20"]


def run_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *arguments: str) -> tuple[int, str]:
    """``mtransfer ARGUMENTS`` through the real entry point (error handling included), in this process."""
    monkeypatch.setattr(sys, "argv", ["mtransfer", *arguments])
    with pytest.raises(SystemExit) as exit_info:
        main()
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_edit_on_the_tiny_model_writes_every_output(inputs: Path, cache: Path) -> None:
    environment = {**os.environ, "MTRANSFER_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mtransfer", "edit", "photo.png", "--flow", "translate(3, 1) | rotate(5)",
         "--mask", "mask.png", "--prompt", "a cat", "--seed", "4", *TINY, "--set", "guidance.preview_every=1"],
        cwd=inputs, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "done" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    # stderr is a pipe here, as in a log: plain timestamped progress lines, no bars
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d guide 6/6 finished in ", result.stderr, re.M)
    assert "━" not in result.stderr
    assert last.split(":")[0] in ("reached", "partial", "missed") and "px target motion" in last

    out = inputs / "outputs" / "photo-edit"
    for name in ("edited.png", "source.png", "target_flow.png", "achieved_flow.png"):
        assert read_png(out / name).shape == (64, 64, 3), name
    from mtransfer.flows import parse_flow_spec, read_flow, resize_flow

    written = read_flow(out / "target_flow.flo")  # the flow `mtransfer eval` judges the edit against
    # the spec's pixels are the photo's (80x96), brought to the 64x64 working grid with the vectors scaled
    on_photo = parse_flow_spec("translate(3, 1) | rotate(5)", 80, 96)
    assert torch.allclose(written, resize_flow(on_photo, (64, 64)), atol=1e-5)
    assert "note: photo.png is 80x96 (height x width) and is edited at 64x64, which changes its shape" in result.stderr
    comparison = read_png(out / "comparison.png")
    assert comparison.shape[1] > 4 * comparison.shape[0] // 2  # four panels side by side
    curves = read_png(out / "loss.png")
    assert curves.shape[0] > 200 and (curves != 255).any()
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["step_0000.png", "step_0001.png", "step_0002.png"]
    edited = read_png(out / "edited.png").astype(float)
    assert edited.std() > 1  # a picture, not a constant

    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "ok" and record["divergence"] is None
    verdict = record["verdict"]  # the guiding estimator's flow against the target, inside --mask
    assert verdict["label"] == last.split(":")[0] and verdict["measured_by"] == "the guiding estimator pyramid"
    assert 0 < verdict["pixels"] < 64 * 64 and verdict["motion_px"] > 0
    assert f"{verdict['flow_error_px']:.2f} px off a {verdict['motion_px']:.2f} px" in last
    report = (out / "report.html").read_text()
    assert f"<p>Motion {verdict['label']}: achieved flow {verdict['flow_error_px']:.2f} px off" in report
    assert record["guidance"]["steps"] == 3 and record["guidance"]["recursions"] == 2
    assert record["guidance"]["guidance_weight"] == 30.0 and record["seed"] == 4
    assert record["model"]["model"] == "tiny" and record["model"]["prompt"] == "a cat"
    assert record["estimator"]["name"] == "pyramid" and record["device"] == "cpu" and record["size"] == [64, 64]
    assert {"mtransfer", "torch", "diffusers", "torchvision"} <= set(record["versions"])
    assert set(record["final_losses"]) >= {"total", "flow", "color", "grad_norm"}
    assert record["passes"] == 6 and record["timing"]["sampling_s"] > 0
    losses = json.loads((out / "losses.json").read_text())
    assert [(h["step"], h["recursion"]) for h in losses] == [(s, r) for s in range(3) for r in range(2)]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["missing.png", "--flow", "translate(1, 0)"], "missing.png: no such image"),
        (["photo.png", "--flow", "spin(3)"], "flow spec 'spin(3)'"),
        (["photo.png", "--flow", "small.npy"], "small.npy: flow is 32x32 (height x width) but the image is 64x64"),
        (["photo.png", "--flow", "translate(1, 0)", "--mask", "tiny_mask.png"], "tiny_mask.png: mask is 10x12"),
        (["photo.png", "--flow", "translate(1, 0)", "--model", "no/such/folder"], "no such model folder"),
        (["photo.png", "--flow", "translate(1, 0)", "--estimator", "tvl1"], "'tvl1' is not differentiable"),
        (["photo.png", "--flow", "translate(1, 0)", "--set", "guidance.stepz=3"], "guidance.stepz: unknown setting"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    inputs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, arguments: list[str], message: str
) -> None:
    np.save(inputs / "small.npy", np.zeros((32, 32, 2), np.float32))
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(inputs / "tiny_mask.png")
    tiny = [a for a in TINY if a not in ("--model", "tiny")] if "--model" in arguments else TINY
    tiny = [a for a in tiny if a not in ("--estimator", "pyramid")] if "--estimator" in arguments else tiny
    code, stderr = run_in_process(monkeypatch, capsys, "edit", *arguments, *tiny)
    assert code == 2
    assert message in stderr and "Traceback" not in stderr
    lines = stderr.strip().splitlines()  # once the photo is read, a note says that --size 64x64 stretches it
    assert lines[-1].startswith("error: ") and all(line.startswith("note: photo.png is 80x96") for line in lines[:-1])
    assert len(lines) <= 2
    assert not (inputs / "outputs").exists()  # nothing is written for rejected input


def test_a_diverged_edit_is_written_labelled_and_exits_2(
    inputs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, stderr = run_in_process(
        monkeypatch, capsys, "edit", "photo.png", "--flow", "translate(2, 0)", *TINY, "--out", "diverged",
        "--set", "guidance.max_latent_std=0.01",
    )
    assert code == 2 and "guidance diverged at step 0" in stderr and "Traceback" not in stderr
    record = json.loads((inputs / "diverged" / "run.json").read_text())
    assert record["status"] == "diverged" and "standard deviation" in record["divergence"]
    assert read_png(inputs / "diverged" / "edited.png").shape == (64, 64, 3)


def test_an_edit_folder_holds_one_edit_never_old_and_new_files_mixed(
    inputs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    first = ["edit", "photo.png", "--flow", "translate(2, 0)", *TINY, "--out", "e", "--set", "guidance.preview_every=1"]
    assert run_in_process(monkeypatch, capsys, *first)[0] == 0
    before = {p.relative_to(inputs / "e"): p.read_bytes() for p in (inputs / "e").rglob("*") if p.is_file()}
    assert Path("previews/step_0002.png") in before

    other = ["edit", "photo.png", "--flow", "translate(0, 2)", *TINY, "--out", "e"]
    code, stderr = run_in_process(monkeypatch, capsys, *other)
    assert code == 2 and "holds an edit (of photo.png by 'translate(2, 0)') made with other settings" in stderr
    assert "--restart" in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "inputs.flow" in stderr and len(errors) == 1 and "Traceback" not in stderr  # one error line
    after = {p.relative_to(inputs / "e"): p.read_bytes() for p in (inputs / "e").rglob("*") if p.is_file()}
    assert after == before  # refused before any work: the earlier edit is untouched

    assert run_in_process(monkeypatch, capsys, *other, "--restart")[0] == 0
    kept = [p for p in (inputs / "e").iterdir() if p.name != "superseded"]
    record = json.loads((inputs / "e" / "run.json").read_text())
    assert record["flow"] == "translate(0, 2)" and len(record["previews"]) < 3
    previews = sorted(f"previews/{p.name}" for p in (inputs / "e" / "previews").glob("*"))
    assert previews == record["previews"]  # the earlier edit's previews moved away with it
    (moved,) = (inputs / "e" / "superseded").iterdir()
    assert {p.relative_to(moved): p.read_bytes() for p in moved.rglob("*") if p.is_file()} == before
    assert {p.name for p in kept} >= {"edited.png", "run.json", "report.html"}

    # the same edit again replaces itself in place: no refusal, nothing superseded
    assert run_in_process(monkeypatch, capsys, *other)[0] == 0
    assert len(list((inputs / "e" / "superseded").iterdir())) == 1


def test_edit_refuses_a_folder_of_other_files(
    inputs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (inputs / "mine").mkdir()
    (inputs / "mine" / "notes.txt").write_text("not an edit")
    code, stderr = run_in_process(monkeypatch, capsys, "edit", "photo.png", "--flow", "translate(2, 0)", *TINY,
                                  "--out", "mine", "--restart")
    assert code == 2 and "holds files but no run.json" in stderr
    assert [p.name for p in (inputs / "mine").iterdir()] == ["notes.txt"]


def test_the_web_app_and_mtransfer_edit_write_the_same_edit_folder(
    inputs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Both go through ``edit_into_folder``: the same files and the same run.json keys."""
    pytest.importorskip("gradio", reason="web app test skipped: gradio not installed (pip install '.[ui]')")
    from mtransfer.app import EditorCache, load_settings
    from mtransfer.ui.edit_tab import edit_work
    from mtransfer.ui.jobs import Job
    from mtransfer.ui.session import Session

    assert run_in_process(monkeypatch, capsys, "edit", "photo.png", "--flow", "translate(2, 0)", *TINY,
                          "--out", "cli")[0] == 0
    session_folder = inputs / "session"
    save_image(session_folder / "source.png", torch.rand(3, 80, 96, generator=torch.Generator().manual_seed(0)))
    settings = load_settings("tiny", ["model.size=[64, 64]", "model.device='cpu'", "guidance.steps=3",
                                      "guidance.recursions=2"])
    models = EditorCache()
    try:
        result, archive, reused, masked = edit_work(Job("edit"), Session(session_folder), settings, "translate(2, 0)",
                                                    "", session_folder / "edit-01", models, use_mask=False)
    finally:
        models.close_models()
    assert archive.is_file() and not masked and not result.diverged

    def listing(folder: Path) -> set[str]:
        return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "previews" not in p.parts}

    web, cli = session_folder / "edit-01", inputs / "cli"
    assert listing(web) == listing(cli)
    web_record, cli_record = (json.loads((folder / "run.json").read_text()) for folder in (web, cli))
    assert set(web_record) == set(cli_record)
    assert web_record["command"] == "ui edit" and cli_record["command"] == "edit"
    assert web_record["drawn_at"] == [80, 96] and cli_record["drawn_at"] == [64, 64]
