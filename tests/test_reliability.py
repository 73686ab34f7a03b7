"""Issue 13: every bad input and fault ends in one plain line and the right exit status, never a traceback,
never a wrong result with exit 0, never lost work. One test per case found by the reliability probe."""

from __future__ import annotations

import errno
import json
import os
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mtransfer.files as files
from mtransfer.devices import parse_device
from mtransfer.app import load_settings
from mtransfer.errors import DeviceError, InputError, Interrupted, MtransferError, OutputError, UsageError
from mtransfer.files import atomic_path, load_image, save_image
from mtransfer.flows.io import FLO_MAGIC
from mtransfer.pipeline.manifest import Manifest
from mtransfer.presets import parse_override
from in_process import run_main as cli

ROOT = Path(__file__).resolve().parent.parent
VIDEO = ROOT / "sample_videos" / "pan.mp4"
IMAGE = ROOT / "sample_videos" / "cat.png"
PRESET = str(ROOT / "tests" / "data" / "run-test.toml")
TINY_EDIT = ["--model", "tiny", "--estimator", "pyramid", "--size", "32x32", "--device", "cpu", "--steps", "2",
             "--recursions", "1"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny model is built once per session into a private cache, not the user's; rescued results and
    crash logs go to a private temp folder."""
    monkeypatch.setenv("MTRANSFER_CACHE", str(tmp_path_factory.getbasetemp() / "reliability-cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("temp")))


def one_plain_line(err: str) -> str:
    """The error line; a traceback or a multi-line dump fails the test."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(("error:", "interrupted:"))]
    assert len(lines) == 1, err
    return lines[0]


def run_args(out: Path, *extra: object, image: Path = IMAGE) -> list[object]:
    return ["run", VIDEO, "--onto", image, "--pipeline", PRESET, "--out", out, *extra]


def flo_bytes(values: np.ndarray) -> bytes:
    """A .flo file for ``values`` ``(H, W, 2)``, written by hand (not by the code under test)."""
    height, width, _ = values.shape
    return struct.pack("<fii", FLO_MAGIC, width, height) + values.astype("<f4").tobytes()


# --- wrong results with exit 0 ---------------------------------------------------------------------------


def test_16_bit_grey_png_loads_at_its_depth(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 16 * 24).reshape(16, 24).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    image = load_image(tmp_path / "deep.png")
    expected = torch.from_numpy(ramp.astype(np.float32) / 65535.0)
    assert image.shape == (3, 16, 24)
    assert torch.allclose(image, expected.expand(3, -1, -1), atol=1e-6)
    resized = load_image(tmp_path / "deep.png", size=(8, 12))
    assert 0.4 < float(resized.mean()) < 0.6  # a ramp stays a ramp (not all white)


def test_16_bit_png_in_a_run_gives_a_grey_source_not_white(tmp_path, monkeypatch, capsys) -> None:
    ramp = np.linspace(0, 65535, 32 * 48).reshape(32, 48).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    code, err = cli(monkeypatch, capsys, *run_args(tmp_path / "run", "--flow-only", image=tmp_path / "deep.png"))
    assert code == 0, err
    source = np.asarray(Image.open(tmp_path / "run" / "source.png"), dtype=np.float32) / 255
    assert abs(source.mean() - 0.5) < 0.05


def test_ctrl_c_during_guide_exits_130_and_says_what_is_kept(tmp_path, monkeypatch, capsys) -> None:
    import mtransfer.pipeline.runner as runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "guide_stage", interrupted)
    code, err = cli(monkeypatch, capsys, *run_args(tmp_path / "run"))
    line = one_plain_line(err)
    assert code == 130
    assert line.startswith("interrupted:") and "align done" in line and "run the same command again" in line
    assert not (tmp_path / "run" / ".lock").exists() and not list((tmp_path / "run").glob("*.lock"))
    record = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert "align done" in record["interrupted"]["kept"]  # the manifest says the run stopped, not "running"
    monkeypatch.undo()
    code, err = cli(monkeypatch, capsys, *run_args(tmp_path / "run"))
    record = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert code == 0, err
    assert "interrupted" not in record and record["stages"]["guide"]["status"] == "done"


def _ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["mtransfer.app.editor.load_backend", "mtransfer.app.editor.edit_image"])
def test_ctrl_c_during_an_edit_exits_130_and_leaves_the_folder_as_it_was(tmp_path, monkeypatch, capsys, where) -> None:
    save_image(tmp_path / "p.png", torch.rand(3, 32, 32))
    out = tmp_path / "e"
    out.mkdir()
    (out / "edited.png").write_bytes(b"an earlier edit")
    (out / "run.json").write_text('{"status": "ok"}')
    monkeypatch.setattr(where, _ctrl_c)
    code, err = cli(monkeypatch, capsys, "edit", tmp_path / "p.png", "--flow", "translate(2, 0)", *TINY_EDIT,
                    "--out", out, "--restart")  # --restart moves the earlier edit aside only once the new one is made
    line = one_plain_line(err)
    assert code == 130 and line.startswith("interrupted:") and str(out) in line
    assert "nothing new" in line and "run the same command again" in line
    assert (out / "edited.png").read_bytes() == b"an earlier edit"
    assert sorted(p.name for p in out.iterdir()) == ["edited.png", "run.json"]


def test_ctrl_c_while_an_edit_writes_leaves_no_half_set(tmp_path, monkeypatch, capsys) -> None:
    import mtransfer.app.edit_folder as outputs

    save_image(tmp_path / "p.png", torch.rand(3, 32, 32))
    monkeypatch.setattr(outputs, "write_json", _ctrl_c)  # after the pictures, before run.json
    code, err = cli(monkeypatch, capsys, "edit", tmp_path / "p.png", "--flow", "translate(2, 0)", *TINY_EDIT,
                    "--out", tmp_path / "e")
    assert code == 130 and "nothing new" in one_plain_line(err)
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").iterdir())


def test_ctrl_c_during_flow_exits_130_and_says_how_to_resume(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "f"
    flow = ["flow", VIDEO, "--estimator", "pyramid", "--size", "16", "--max-frames", "3", "--out", out]
    with monkeypatch.context() as stopped:
        stopped.setattr("mtransfer.pipeline.runner.flow_stage", _ctrl_c)
        code, err = cli(monkeypatch, capsys, *flow)
    line = one_plain_line(err)
    assert code == 130 and line.startswith("interrupted:") and "decode done" in line and "resume" in line
    decoded = {p.name: p.stat().st_ino for p in (out / "driving").iterdir()}
    code, err = cli(monkeypatch, capsys, *flow)  # resumes: the decoded frames are kept, not written again
    assert code == 0, err
    assert sorted(decoded) == ["0000.png", "0001.png", "0002.png"]
    assert {p.name: p.stat().st_ino for p in (out / "driving").iterdir()} == decoded
    assert (out / "driving_flow" / "0002.flo").is_file()


def test_bench_with_an_unknown_flag_exits_2(monkeypatch, capsys) -> None:
    code, err = cli(monkeypatch, capsys, "bench", "--nosuchflag")
    assert code == 2 and "--nosuchflag" in err


@pytest.mark.parametrize("value, says", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"),
                                         (1e30, "holds no flow")])
def test_a_flo_of_nan_or_unknowns_is_refused(tmp_path, monkeypatch, capsys, value, says) -> None:
    (tmp_path / "bad.flo").write_bytes(flo_bytes(np.full((16, 16, 2), value, np.float32)))
    code, err = cli(monkeypatch, capsys, "motion", tmp_path / "bad.flo", "--size", "16x16", "--out", tmp_path / "m.flo")
    line = one_plain_line(err)
    assert code == 2 and "bad.flo" in line and says in line
    assert not (tmp_path / "m.flo").exists()


def test_a_flo_far_beyond_the_image_is_refused(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "far.flo").write_bytes(flo_bytes(np.full((16, 16, 2), 5000.0, np.float32)))
    code, err = cli(monkeypatch, capsys, "motion", tmp_path / "far.flo", "--size", "16x16", "--out", tmp_path / "m.flo")
    assert code == 2 and "far beyond" in one_plain_line(err)


def test_a_motion_far_beyond_the_image_is_refused_at_once(tmp_path, monkeypatch, capsys) -> None:
    save_image(tmp_path / "p.png", torch.rand(3, 32, 32))
    code, err = cli(monkeypatch, capsys, "edit", tmp_path / "p.png", "--flow", "translate(1e9, 0)", *TINY_EDIT,
                    "--out", tmp_path / "e")
    line = one_plain_line(err)
    assert code == 2 and "translate(1e9, 0)" in line and "far beyond" in line
    assert not (tmp_path / "e").exists()


def test_new_output_settings_re_encode_and_keep_the_old_videos(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    assert cli(monkeypatch, capsys, *run_args(out, "--flow-only"))[0] == 0
    first = (out / "flow.mp4").read_bytes()
    code, err = cli(monkeypatch, capsys, *run_args(out, "--flow-only", "--set", "output.crf=45"))
    assert code == 0, err
    assert "re-encoding" in err and "computed nothing" not in err and "encode" in err
    kept = list((out / "superseded").glob("*/flow.mp4"))
    assert len(kept) == 1 and kept[0].read_bytes() == first
    assert (out / "flow.mp4").read_bytes() != first
    code, err = cli(monkeypatch, capsys, *run_args(out, "--flow-only", "--set", "output.crf=45"))
    assert code == 0 and "computed nothing" in err  # nothing changed: nothing is re-encoded


# --- write faults ----------------------------------------------------------------------------------------


def _disk_full_under(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Every rename of a finished temporary into ``folder`` fails as on a full disk."""
    replace = os.replace

    def full(src, dst, *args, **kwargs):
        if Path(dst).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(files.os, "replace", full)


def test_disk_full_during_a_run_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    _disk_full_under(monkeypatch, out / "driving")
    code, err = cli(monkeypatch, capsys, *run_args(out, "--flow-only"))
    line = one_plain_line(err)
    assert code == 2 and "driving" in line and "disk is full" in line
    assert not [p for p in out.rglob(".*") if p.is_file() and files.is_temporary(p)]  # no half-written files


def test_disk_full_after_an_edit_keeps_the_result_elsewhere(tmp_path, monkeypatch, capsys) -> None:
    save_image(tmp_path / "p.png", torch.rand(3, 32, 32))
    out = tmp_path / "e"
    _disk_full_under(monkeypatch, out)
    code, err = cli(monkeypatch, capsys, "edit", tmp_path / "p.png", "--flow", "translate(2, 0)", *TINY_EDIT,
                    "--out", out)
    line = one_plain_line(err)
    assert code == 2 and "disk is full" in line and "saved to" in line
    rescued = rescued_folder(line)
    assert (rescued / "edited.png").is_file() and (rescued / "run.json").is_file()


def test_a_failed_edit_write_leaves_no_edited_png_without_run_json(tmp_path, monkeypatch, capsys) -> None:
    """The last file of an edit (run.json) fails to write: the output folder must not hold the new edited.png
    without its run.json (the rescue folder gets the whole set)."""
    import mtransfer.app.edit_folder as outputs

    save_image(tmp_path / "p.png", torch.rand(3, 32, 32))
    out = tmp_path / "e"
    write_json = outputs.write_json
    failures = []

    def full_once(path, record):
        if Path(path).name == "run.json" and not failures:
            failures.append(path)
            raise OutputError(f"{path}: cannot write: the disk is full")
        return write_json(path, record)

    monkeypatch.setattr(outputs, "write_json", full_once)
    code, err = cli(monkeypatch, capsys, "edit", tmp_path / "p.png", "--flow", "translate(2, 0)", *TINY_EDIT,
                    "--out", out)
    assert code == 2 and failures and "saved to" in one_plain_line(err)
    assert not (out / "edited.png").exists() and not (out / "run.json").exists()
    assert not list(tmp_path.glob(".e.staging-*"))  # the staging folder is cleaned up


def test_disk_full_after_generate_keeps_the_trajectory_elsewhere(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "g"
    _disk_full_under(monkeypatch, out)
    code, err = cli(monkeypatch, capsys, "generate", "a cat", "--model", "tiny", "--size", "32x32", "--steps", "2",
                    "--device", "cpu", "--out", out)
    line = one_plain_line(err)
    assert code == 2 and "saved to" in line
    rescued = rescued_folder(line)
    assert (rescued / "trajectory.pt").is_file() and (rescued / "image.png").is_file()


def rescued_folder(line: str) -> Path:
    """The folder an error line says the results were saved to."""
    return Path(line.split("saved to ", 1)[1].split(": run the same command again")[0])


def _fail_if_called(what: str):
    def called(*args, **kwargs):
        pytest.fail(f"{what} ran: the rescued results should have been written without recomputing")

    return called


def _edit_that_ran_out_of_disk(tmp_path, monkeypatch, capsys) -> tuple[list, Path, Path]:
    """A tiny edit whose final write hit a full disk: its command, its output folder and its rescue folder."""
    save_image(tmp_path / "p.png", torch.rand(3, 32, 32))
    out = tmp_path / "e"
    edit = ["edit", tmp_path / "p.png", "--flow", "translate(2, 0)", *TINY_EDIT, "--out", out]
    with monkeypatch.context() as full:
        _disk_full_under(full, out)
        code, err = cli(monkeypatch, capsys, *edit)
    line = one_plain_line(err)
    assert code == 2 and "run the same command again" in line
    return edit, out, rescued_folder(line)


def test_a_rerun_after_disk_full_writes_the_rescued_edit_without_recomputing(tmp_path, monkeypatch, capsys) -> None:
    edit, out, rescued = _edit_that_ran_out_of_disk(tmp_path, monkeypatch, capsys)
    assert not (out / "edited.png").exists()

    with monkeypatch.context() as no_work:
        no_work.setattr("mtransfer.app.editor.load_backend", _fail_if_called("loading the model"))
        no_work.setattr("mtransfer.app.editor.edit_image", _fail_if_called("the edit"))
        code, err = cli(monkeypatch, capsys, *edit)
    assert code == 0, err
    assert "nothing was recomputed" in err and "Traceback" not in err
    assert not rescued.exists()  # the rescue is gone once its results are in place
    # the files are those of an uninterrupted edit with the same settings
    assert cli(monkeypatch, capsys, *edit[:-1], tmp_path / "fresh")[0] == 0
    for name in ("edited.png", "source.png", "target_flow.flo", "losses.json"):
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name
    assert json.loads((out / "run.json").read_text())["status"] == "ok"


def test_rescued_results_of_other_settings_are_named_but_not_used(tmp_path, monkeypatch, capsys) -> None:
    import mtransfer.app.editor as editor

    edit, out, rescued = _edit_that_ran_out_of_disk(tmp_path, monkeypatch, capsys)
    edits = []
    real_edit = editor.edit_image
    monkeypatch.setattr(editor, "edit_image", lambda *a, **k: edits.append(1) or real_edit(*a, **k))
    # (the second edit replaces the first in the folder: --restart)
    for changed, difference in ((["--seed", "7"], "guidance.seed"),
                                (["--flow", "translate(3, 0)", "--restart"], "inputs.flow")):
        code, err = cli(monkeypatch, capsys, *edit, *changed)
        assert code == 0, err
        assert "nothing was recomputed" not in err and str(rescued) in err and "not used" in err
        assert difference in err
    assert len(edits) == 2 and rescued.is_dir()  # both recomputed; the rescue is left alone


def test_a_rerun_after_disk_full_writes_the_rescued_generation(tmp_path, monkeypatch, capsys) -> None:
    import mtransfer.guidance.edit as generation

    out = tmp_path / "g"
    command = ["generate", "a cat", "--model", "tiny", "--size", "32x32", "--steps", "2", "--device", "cpu",
               "--out", out]
    with monkeypatch.context() as full:
        _disk_full_under(full, out)
        rescued = rescued_folder(one_plain_line(cli(monkeypatch, capsys, *command)[1]))
    trajectory = (rescued / "trajectory.pt").read_bytes()
    with monkeypatch.context() as no_work:
        no_work.setattr(generation, "generate", _fail_if_called("generation"))  # imported when the command runs
        code, err = cli(monkeypatch, capsys, *command)
    assert code == 0 and "nothing was recomputed" in err
    assert (out / "trajectory.pt").read_bytes() == trajectory and (out / "image.png").is_file()
    assert (out / "run.json").is_file() and not rescued.exists()


def test_torch_unexpected_pos_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="latent.pt"):
        with atomic_path(tmp_path / "latent.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")
    assert list(tmp_path.iterdir()) == []


def _refuse_probe(monkeypatch: pytest.MonkeyPatch, folder: Path, code: int) -> None:
    """``folder`` refuses new files (as a read-only mount would, which root cannot simulate with chmod)."""
    mkstemp = files.tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise OSError(code, os.strerror(code))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)


@pytest.mark.parametrize("code, says", [(errno.EROFS, "read-only"), (errno.EACCES, "permission denied")])
def test_a_read_only_output_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys, code, says) -> None:
    save_image(tmp_path / "p.png", torch.rand(3, 32, 32))
    (tmp_path / "ro").mkdir()
    _refuse_probe(monkeypatch, tmp_path / "ro", code)
    monkeypatch.setattr("mtransfer.app.editor.load_backend", lambda *a, **k: pytest.fail("the model was loaded"))
    status, err = cli(monkeypatch, capsys, "edit", tmp_path / "p.png", "--flow", "translate(2, 0)", *TINY_EDIT,
                      "--out", tmp_path / "ro" / "e")
    assert status == 2 and says in one_plain_line(err)
    status, err = cli(monkeypatch, capsys, *run_args(tmp_path / "ro" / "run", "--flow-only"))
    assert status == 2 and says in one_plain_line(err)


@pytest.mark.parametrize("command", ["run", "edit", "flow", "motion", "generate"])
@pytest.mark.parametrize("where", ["equal", "under"])
def test_out_on_a_regular_file_is_refused(tmp_path, monkeypatch, capsys, command, where) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("mine")
    out = blocker if where == "equal" else blocker / "sub"
    save_image(tmp_path / "p.png", torch.rand(3, 32, 32))
    arguments = {
        "run": run_args(out, "--flow-only"),
        "edit": ["edit", tmp_path / "p.png", "--flow", "translate(2, 0)", *TINY_EDIT, "--out", out],
        "flow": ["flow", VIDEO, "--estimator", "pyramid", "--size", "16", "--max-frames", "2", "--out", out],
        "motion": ["motion", "translate(2, 0)", "--size", "16x16", "--out", out / "m.flo"],
        "generate": ["generate", "a cat", "--model", "tiny", "--size", "32x32", "--steps", "2", "--out", out],
    }[command]
    code, err = cli(monkeypatch, capsys, *arguments)
    assert code == 2 and "file.txt" in one_plain_line(err) and "file" in one_plain_line(err)
    assert blocker.read_text() == "mine"


def test_stale_temporaries_of_a_killed_encode_are_cleaned(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    assert cli(monkeypatch, capsys, *run_args(out, "--flow-only"))[0] == 0
    stale = [out / ".result.k2j3h4g5.mp4", out / "frames" / ".0001.ab_cd123.png"]
    stale[1].parent.mkdir(exist_ok=True)
    for path in stale:
        path.write_bytes(b"half")
    mine = out / ".notes"
    mine.write_text("user file")
    assert cli(monkeypatch, capsys, *run_args(out, "--flow-only"))[0] == 0
    assert not any(path.exists() for path in stale)
    assert mine.read_text() == "user file"


# --- bad input that ended in a traceback -----------------------------------------------------------------


def test_a_non_utf8_image_name_gives_a_report(tmp_path, monkeypatch, capsys) -> None:
    name = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name on a UTF-8 system: a surrogate in Python
    (tmp_path / name).write_bytes(IMAGE.read_bytes())
    for _ in range(2):  # the rerun reads and rewrites the same records
        code, err = cli(monkeypatch, capsys, *run_args(tmp_path / "run", "--flow-only", image=tmp_path / name))
        assert code == 0, err
    assert "caf" in (tmp_path / "run" / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["a[/b].png", "[draft].png", "x[bold]y.png"])
def test_bracketed_paths_are_printed_as_they_are(tmp_path, monkeypatch, capsys, name) -> None:
    code, err = cli(monkeypatch, capsys, "edit", tmp_path / name, "--flow", "translate(2, 0)", *TINY_EDIT)
    line = one_plain_line(err)
    assert code == 2 and str(tmp_path / name) in line


def test_bracketed_parts_of_messages_survive(tmp_path, monkeypatch, capsys) -> None:
    code, err = cli(monkeypatch, capsys, *run_args(tmp_path / "run", "--set", "nosection.x=1"))
    assert code == 2 and "[nosection]" in one_plain_line(err)


def test_a_successful_run_into_a_bracketed_folder_prints_it(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "[/b]" / "[draft]"
    code, err = cli(monkeypatch, capsys, *run_args(out, "--flow-only"))
    assert code == 0, err
    assert str(out / "report.html") in err.replace("\n", "")


@pytest.mark.parametrize("region", ["nan,0,1,1", "0,0,inf,1"])
def test_a_non_finite_region_is_refused(tmp_path, monkeypatch, capsys, region) -> None:
    code, err = cli(monkeypatch, capsys, *run_args(tmp_path / "run", "--flow-only", "--region", region))
    assert code == 2 and "finite" in one_plain_line(err)
    assert not (tmp_path / "run").exists()


def test_flow_size_1_is_refused(tmp_path, monkeypatch, capsys) -> None:
    code, err = cli(monkeypatch, capsys, "flow", VIDEO, "--size", "1", "--estimator", "tvl1", "--out", tmp_path / "f")
    assert code == 2 and "at least 8" in one_plain_line(err)


def test_run_video_size_1_is_refused_before_the_folder(tmp_path, monkeypatch, capsys) -> None:
    code, err = cli(monkeypatch, capsys, *run_args(tmp_path / "run", "--flow-only", "--set", "video.size=1"))
    assert code == 2 and "too small" in one_plain_line(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["flow", "bench", "run", "edit"])
def test_a_nonsense_device_is_refused(tmp_path, monkeypatch, capsys, command) -> None:
    save_image(tmp_path / "p.png", torch.rand(3, 32, 32))
    arguments = {
        "flow": ["flow", VIDEO, "--device", "nonsense", "--out", tmp_path / "f"],
        "bench": ["bench", "--device", "nonsense"],
        "run": [*run_args(tmp_path / "run"), "--device", "nonsense"],
        "edit": ["edit", tmp_path / "p.png", "--flow", "translate(2, 0)", *TINY_EDIT, "--device", "nonsense",
                 "--out", tmp_path / "e"],
    }[command]
    code, err = cli(monkeypatch, capsys, *arguments)
    assert code == 2 and "nonsense" in one_plain_line(err) and "not a device name" in one_plain_line(err)
    assert not any((tmp_path / name).exists() for name in ("f", "run", "e"))


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_without_mps_is_refused_before_the_run_folder(tmp_path, monkeypatch, capsys) -> None:
    code, err = cli(monkeypatch, capsys, *run_args(tmp_path / "run"), "--device", "mps")
    assert code == 2 and "MPS is not available" in one_plain_line(err)
    assert not (tmp_path / "run").exists()


def test_parse_device_reads_names_once_for_everyone() -> None:
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("nonsense", "meta", "cuda:99" if torch.cuda.is_available() else "cuda"):
        with pytest.raises(DeviceError, match="--device"):
            parse_device(bad)


def test_an_image_over_the_pixel_limit_is_refused_in_one_line(tmp_path, monkeypatch) -> None:
    save_image(tmp_path / "big.png", torch.rand(3, 40, 30))
    monkeypatch.setattr(files, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError, match=r"big.png: is 30x40 .* over mtransfer's limit"):
        load_image(tmp_path / "big.png")


def test_pillows_bomb_warning_and_error_are_replaced_by_the_stated_limit(tmp_path, monkeypatch) -> None:
    save_image(tmp_path / "wide.png", torch.rand(3, 40, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow would warn at 100 px and fail at 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(tmp_path / "wide.png").shape == (3, 40, 30)
    assert Image.MAX_IMAGE_PIXELS == 100


def cli_with_broken_motion_reading(tmp_path, monkeypatch, capsys, failure: Exception) -> tuple[int, str]:
    """``mtransfer motion`` with its flow reading raising ``failure``: the exit code and the one line it prints."""
    import mtransfer.flows as flows

    def broken(*args, **kwargs):
        raise failure

    monkeypatch.setattr(flows, "load_flow", broken)  # the command imports it from the package when it runs
    code, err = cli(monkeypatch, capsys, "motion", "translate(2, 0)", "--size", "16x16", "--out", tmp_path / "m.flo")
    return code, one_plain_line(err)


def test_an_unexpected_error_is_one_line_and_a_log(tmp_path, monkeypatch, capsys) -> None:
    code, line = cli_with_broken_motion_reading(tmp_path, monkeypatch, capsys, ZeroDivisionError("a bug"))
    assert code == 1 and "ZeroDivisionError" in line
    log = Path(line.split("the traceback is in ")[1].rstrip(")"))
    assert "Traceback" in log.read_text() and "a bug" in log.read_text()


def test_an_infinite_npy_flow_is_refused_as_non_finite(tmp_path, monkeypatch, capsys) -> None:
    flow = np.zeros((2, 16, 16), np.float32)
    flow[0, 3, 3] = np.inf
    flow[1, 4, 4] = np.nan  # NaN is the .npy mark for "unknown": allowed
    np.save(tmp_path / "inf.npy", flow)
    code, err = cli(monkeypatch, capsys, "motion", tmp_path / "inf.npy", "--size", "16x16", "--out", tmp_path / "m.flo")
    line = one_plain_line(err)
    assert code == 2 and "inf.npy" in line and "1 NaN or infinite" in line


def test_a_strength_that_throws_the_motion_off_the_image_is_refused(tmp_path, monkeypatch, capsys) -> None:
    code, err = cli(monkeypatch, capsys, *run_args(tmp_path / "run", "--flow-only", "--strength", "1e12"))
    assert code == 2 and "far beyond" in one_plain_line(err)
    assert not (tmp_path / "run" / "flow").exists()


# --- large clips: a working size by default -------------------------------------------------------------


def test_large_clips_are_measured_at_a_longest_side_of_1024_by_default() -> None:
    from mtransfer.app.settings import VideoSettings

    video = VideoSettings()
    for height, width in [(8000, 8000), (2160, 3840), (1080, 1920), (3000, 1000)]:
        capped = video.frame_size(height, width)
        assert max(capped) == 1024  # the longer side is the cap ...
        assert abs(capped[0] / capped[1] - height / width) < 0.01  # ... and the aspect is kept
        assert video.capped(height, width)
    assert video.frame_size(720, 1024) == (720, 1024) and not video.capped(720, 1024)  # small clips as recorded
    assert VideoSettings(max_side=0).frame_size(8000, 8000) == (8000, 8000)
    assert VideoSettings(size=[32, 40]).frame_size(8000, 8000) == (32, 40)  # an explicit size wins
    assert VideoSettings(size=256).frame_size(8000, 4000) == (512, 256)


def test_a_clip_over_the_cap_is_decoded_smaller_said_and_recorded(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    capped = ["--flow-only", "--set", "video.size=0", "--set", "video.max_side=24"]
    code, err = cli(monkeypatch, capsys, *run_args(out, *capped))
    assert code == 0, err
    assert "128x160" in err and "19x24" in err and "video.max_side=0" in err  # pan.mp4 is 160x128 (w x h)
    assert Image.open(out / "driving" / "0000.png").size == (24, 19)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["decode"]["settings"]["video"]["size"] == [19, 24]
    # the cap shapes the frames: lifting it is a change of settings, not a silent mix of sizes
    code, err = cli(monkeypatch, capsys, *run_args(out, "--flow-only", "--set", "video.size=0",
                                                   "--set", "video.max_side=0"))
    assert code == 2 and "video.size" in one_plain_line(err) and "--restart" in one_plain_line(err)


def test_flow_command_caps_too_and_max_side_0_keeps_the_recorded_size(tmp_path, monkeypatch, capsys) -> None:
    flow = ["flow", VIDEO, "--estimator", "pyramid", "--max-frames", "2"]
    assert cli(monkeypatch, capsys, *flow, "--max-side", "40", "--out", tmp_path / "a")[0] == 0
    assert Image.open(tmp_path / "a" / "driving" / "0000.png").size == (40, 32)
    assert cli(monkeypatch, capsys, *flow, "--max-side", "0", "--out", tmp_path / "b")[0] == 0
    assert Image.open(tmp_path / "b" / "driving" / "0000.png").size == (160, 128)


# --- classes found by the wider probe --------------------------------------------------------------------


def test_motion_onto_an_image_too_small_to_move_is_refused(tmp_path, monkeypatch, capsys) -> None:
    save_image(tmp_path / "dot.png", torch.rand(3, 1, 1))
    code, err = cli(monkeypatch, capsys, "motion", "translate(1, 0)", "--onto", tmp_path / "dot.png",
                    "--out", tmp_path / "m.flo")
    line = one_plain_line(err)
    assert code == 2 and "dot.png" in line and "at least 8 px" in line


@pytest.mark.parametrize("override, says", [
    ("guidance.cfg_scale=inf", "finite"), ("output.fps=nan", "finite"), ("align.strength=-inf", "finite"),
    ("guidance.seed=99999999999999999999", "64 bits"), ("model.family_rotations=[nan]", "finite"),
    ("output.fps=1e300", "frames per second"), ("output.fps=1e-300", "frames per second"),
])
def test_settings_must_be_finite_and_fit_in_64_bits(tmp_path, monkeypatch, capsys, override, says) -> None:
    code, err = cli(monkeypatch, capsys, *run_args(tmp_path / "run", "--flow-only", "--set", override))
    line = one_plain_line(err)
    assert code == 2 and override.split("=")[0] in line and says in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arguments, says", [
    (["edit", "IMAGE", "--flow", "translate(1, 0)", "--size", "100000x100000"], "limit of 120 megapixels"),
    (["run", VIDEO, "--onto", "IMAGE", "--pipeline", PRESET, "--set", "model.size=[10000, 10000]"],
     "largest working size"),
    (["run", VIDEO, "--onto", "IMAGE", "--pipeline", PRESET, "--set", "video.size=100000"], "limit of 120 megapixels"),
    (["motion", "translate(1, 0)", "--size", "100000x100000"], "limit of 120 megapixels"),
    (["generate", "a cat", "--model", "tiny", "--set", "model.size=[8192, 8192]"], "largest working size"),
])
def test_absurd_sizes_are_refused_before_any_allocation(tmp_path, monkeypatch, capsys, arguments, says) -> None:
    arguments = [IMAGE if a == "IMAGE" else a for a in arguments]
    code, err = cli(monkeypatch, capsys, *arguments, "--out", tmp_path / "out" / "x.flo")
    assert code == 2 and says in one_plain_line(err)
    assert not (tmp_path / "out").exists()


def test_an_allocator_failure_is_an_out_of_memory_line(tmp_path, monkeypatch, capsys) -> None:
    failure = RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: 1e11 bytes")
    code, line = cli_with_broken_motion_reading(tmp_path, monkeypatch, capsys, failure)
    assert code == 2 and line.startswith("error: out of memory") and "--size" in line


@pytest.mark.parametrize("command", ["flow", "edit"])
def test_raft_weights_with_another_estimator_are_refused(tmp_path, monkeypatch, capsys, command) -> None:
    weights = tmp_path / "raft.pth"
    weights.write_bytes(b"weights")
    arguments = {
        "flow": ["flow", VIDEO, "--estimator", "pyramid", "--weights", weights, "--out", tmp_path / "f"],
        "edit": ["edit", IMAGE, "--flow", "translate(2, 0)", *TINY_EDIT, "--raft-weights", weights, "--out", tmp_path / "e"],
    }[command]
    code, err = cli(monkeypatch, capsys, *arguments)
    line = one_plain_line(err)
    assert code == 2 and "raft.pth" in line and "only raft-large and raft-small" in line
    assert not (tmp_path / "f").exists() and not (tmp_path / "e").exists()


def test_motion_out_on_a_folder_is_refused(tmp_path, monkeypatch, capsys) -> None:
    code, err = cli(monkeypatch, capsys, "motion", "translate(1, 0)", "--size", "16x16", "--out", tmp_path)
    line = one_plain_line(err)
    assert code == 2 and "is a folder" in line and "flow.flo" in line
    assert list(tmp_path.iterdir()) == []


def test_motion_preview_length_is_bounded(tmp_path, monkeypatch, capsys) -> None:
    code, err = cli(monkeypatch, capsys, "motion", "translate(1, 0)", "--onto", IMAGE, "--frames", "100000",
                    "--out", tmp_path / "m.flo")
    assert code == 2 and "--frames" in err and "240" in err
    assert not (tmp_path / "m.flo").exists()


def test_bench_size_0_is_refused_not_read_as_the_default(monkeypatch, capsys) -> None:
    code, err = cli(monkeypatch, capsys, "bench", "--device", "cpu", "--model", "tiny", "--size", "0")
    assert code == 2 and "got 0" in one_plain_line(err)


def test_an_empty_region_mask_is_named(tmp_path, monkeypatch, capsys) -> None:
    Image.new("L", (48, 32), 0).save(tmp_path / "black.png")
    code, err = cli(monkeypatch, capsys, *run_args(tmp_path / "run", "--flow-only", "--region", tmp_path / "black.png"))
    line = one_plain_line(err)
    assert code == 2 and "black.png" in line and "empty" in line


def test_every_problem_raised_in_the_package_names_its_kind() -> None:
    """Each raise says whether it is a usage, input, output or device problem (or an interrupt), so that it
    prints its kind of message; a bare ``MtransferError(...)`` would hide which it is."""
    import ast

    def names(node: ast.AST) -> set[str]:
        return {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node) if isinstance(n, (ast.Name, ast.Attribute))}

    bare = []
    for path in sorted((ROOT / "mtransfer").rglob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and "MtransferError" in names(node.exc.func):
                bare.append(f"{path.relative_to(ROOT)}:{node.lineno}: raise MtransferError(...)")
            if isinstance(node, ast.ClassDef) and any("MtransferError" in names(base) for base in node.bases):
                bare.append(f"{path.relative_to(ROOT)}:{node.lineno}: class {node.name}(MtransferError)")
    assert bare == []

    def kinds(cls: type) -> set[type]:
        return {kind for kind in (UsageError, InputError, OutputError, DeviceError, Interrupted) if issubclass(cls, kind)}

    from mtransfer.guidance import GuidanceDiverged
    from mtransfer.ui.jobs import Busy

    assert kinds(Busy) == {DeviceError} and kinds(GuidanceDiverged) == {UsageError}  # the two that once had none


def _foreign_folder(folder: Path) -> None:
    folder.mkdir()
    (folder / "mine.txt").write_text("not mtransfer's")
    Manifest.open(folder)


@pytest.mark.parametrize("make, kind", [
    (lambda path: parse_override("nonsense"), UsageError),
    (lambda path: load_settings("paper", ["guidance.steps=0"]), UsageError),
    (lambda path: load_image(path), InputError),
    (lambda path: parse_device("cuda:77"), DeviceError),
    (_foreign_folder, OutputError),
])
def test_problems_are_classified(tmp_path, make, kind) -> None:
    with pytest.raises(MtransferError) as raised:
        make(tmp_path / "thing")
    assert type(raised.value) is kind and raised.value.exit_code == 2


@pytest.mark.parametrize("override, says", [("align.spatial_sigma=1e9", "spatial_sigma"),
                                            ("align.temporal_amount=1e9", "temporal_amount")])
def test_blurs_wider_than_any_clip_are_refused(tmp_path, monkeypatch, capsys, override, says) -> None:
    code, err = cli(monkeypatch, capsys, *run_args(tmp_path / "run", "--flow-only", "--set", override))
    line = one_plain_line(err)
    assert code == 2 and says in line and "at most 1000" in line


def test_feather_and_margin_wider_than_the_image_cost_no_more_than_the_image() -> None:
    """A margin or feather beyond the image's size changes nothing more (the rule: dilating by the image's
    larger side already reaches every pixel, and eroding that far leaves nothing to add), so a huge value
    gives the same mask as one equal to the image size, at once."""
    from mtransfer.flows.align import feather_mask, motion_mask

    flow = torch.zeros(2, 12, 20)
    flow[0, 5:7, 8:10] = 3.0
    assert torch.equal(motion_mask(flow, 0.5, 10**9), motion_mask(flow, 0.5, 20))
    assert motion_mask(flow, 0.5, 10**9).min() == 1  # the whole image
    box = torch.zeros(1, 12, 20)
    box[:, 2:10, 4:16] = 1.0
    wide = feather_mask(box, 10**9)
    assert torch.allclose(wide * 10**9, feather_mask(box, 20) * 20)  # the same sum of erosions, spread wider
    whole = torch.ones(1, 12, 20)  # no edge inside the image (the border is no edge): nothing fades
    assert torch.equal(feather_mask(whole, 10**9), whole)
