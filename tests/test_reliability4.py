"""Round 4 of the hostile-user probe (the rest of issue #21): the web app's address and Ctrl-C, SIGTERM like
Ctrl-C for every command, ``--set`` checked under a flag, folders where files go, presets read like files
(BOM, relative paths), tiny source regions, over-long names; and presets that inherit (issue #24)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from mtransfer.files import is_temporary
from test_reliability import IMAGE, PRESET, ROOT, VIDEO, one_plain_line, private_cache, run_args  # noqa: F401
from in_process import run_main as cli


def _mtransfer(*arguments: object, cwd: Path) -> subprocess.Popen:
    """``mtransfer ARGUMENTS`` as its own process (a signal must reach a real main thread)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # SIGINT as a terminal delivers it: a suite started in the background (`pytest &`) passes SIGINT on as
    # ignored, and Python then installs no Ctrl-C handler in the child.
    return subprocess.Popen([sys.executable, "-m", "mtransfer", *map(str, arguments)], cwd=cwd, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(condition, process: subprocess.Popen, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the command ended ({process.returncode}) before {what}: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {seconds} s")
        time.sleep(0.1)


def _stopped_within(process: subprocess.Popen, seconds: float) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"still running {seconds} s after the signal")
    return process.returncode, err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- mtransfer ui: its address and Ctrl-C ------------------------------------------------------------------


def test_ui_on_a_busy_port_names_the_port(monkeypatch, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = cli(monkeypatch, capsys, "ui", "--port", port)
    assert code == 2 and f"--port {port}: already in use" in one_plain_line(err)


def test_ui_accepts_the_hosts_a_server_listens_on() -> None:
    from mtransfer.cli.ui import check_address

    for host in ("127.0.0.1", "localhost", "0.0.0.0"):
        check_address(host, _free_port())  # no error


@pytest.mark.parametrize("host", ["256.1.1.1", "not a host", "192.0.2.1"])  # 192.0.2.0/24: documentation only
def test_ui_on_an_invalid_host_names_the_host(monkeypatch, capsys, host) -> None:
    code, err = cli(monkeypatch, capsys, "ui", "--host", host, "--port", _free_port())
    assert code == 2 and f"--host {host}:" in one_plain_line(err) and "port" not in one_plain_line(err)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ui_stops_promptly_on_ctrl_c_and_sigterm(tmp_path, signum, status) -> None:
    pytest.importorskip("gradio")
    port = _free_port()
    server = _mtransfer("ui", "--port", port, cwd=tmp_path)

    def serving() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).status == 200
        except OSError:
            return False

    _wait_for(serving, server, 120, "page served")
    server.send_signal(signum)
    # A bound for "it stops at all", not a speed figure: 6 s failed once with four CPU-bound jobs on 2 cores.
    code, err = _stopped_within(server, 30)
    assert code == status and "the web app stopped" in one_plain_line(err)


# --- SIGTERM is Ctrl-C for every command -------------------------------------------------------------------


def test_sigterm_during_a_run_is_an_interrupt_that_cleans_up(tmp_path) -> None:
    out = tmp_path / "run"
    run = _mtransfer(*run_args(out, "--frames", "12", "--stride", "1", "--steps", "60",
                               "--set", "evaluation.enabled=false"), cwd=tmp_path)

    def a_frame_guided() -> bool:
        try:
            record = json.loads((out / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        return len(record.get("stages", {}).get("guide", {}).get("frames", {})) >= 2

    _wait_for(a_frame_guided, run, 240, "guided frame")
    run.send_signal(signal.SIGTERM)
    code, err = _stopped_within(run, 30)
    assert code == 143 and "kept" in one_plain_line(err) and one_plain_line(err).startswith("interrupted:")
    assert not (out / "run.lock").exists()
    assert [path for path in out.rglob(".*") if is_temporary(path)] == []
    record = json.loads((out / "manifest.json").read_text())
    assert record["stages"]["guide"]["status"] == "interrupted"  # stopped mid-run, and the manifest says so
    assert "guide" in record["interrupted"]["kept"]


def test_sigterm_stops_a_command_without_a_run_folder(tmp_path) -> None:
    """`mtransfer flow` on a long clip: SIGTERM mid-way gives the same one line and 143."""
    out = tmp_path / "flow"
    flow = _mtransfer("flow", VIDEO, "--out", out, "--estimator", "tvl1", "--size", "96x128", cwd=tmp_path)
    _wait_for(lambda: (out / "manifest.json").exists(), flow, 240, "flow manifest")
    flow.send_signal(signal.SIGTERM)
    code, err = _stopped_within(flow, 30)
    assert code == 143 and one_plain_line(err).startswith("interrupted:")
    assert not (out / "run.lock").exists()


# --- a --set that a flag replaces is still checked ---------------------------------------------------------


@pytest.mark.parametrize("setting, flag", [
    ("guidance.steps=abc", ["--steps", "2"]),
    ("model.size=[7]", ["--size", "32x48"]),
    ("align.strength=[1, 2]", ["--strength", "1"]),
    ("align.region=[0.5, 0.5]", ["--region", "0,0,1,1"]),
])
def test_run_refuses_a_malformed_set_that_a_flag_replaces(tmp_path, monkeypatch, capsys, setting, flag) -> None:
    out = tmp_path / "run"
    code, err = cli(monkeypatch, capsys, *run_args(out, "--set", setting, *flag))
    assert code == 2 and setting.split("=")[0] in one_plain_line(err)
    assert not out.exists()


@pytest.mark.parametrize("command", [
    ["edit", IMAGE, "--flow", "translate(2, 0)", "--model", "tiny", "--size", "32x32", "--device", "cpu"],
    ["generate", "a cat", "--model", "tiny", "--size", "32x32", "--device", "cpu"],
])
def test_edit_and_generate_refuse_a_malformed_set_under_steps(tmp_path, monkeypatch, capsys, command) -> None:
    code, err = cli(monkeypatch, capsys, *command, "--out", tmp_path / "out", "--set", "guidance.steps=abc",
                    "--steps", "2")
    assert code == 2 and "guidance.steps" in one_plain_line(err)
    assert not (tmp_path / "out").exists()


# --- a folder where a file goes ----------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["folder.toml", "sub/presets", "bare"])
def test_a_folder_given_as_a_preset_is_named_a_folder(tmp_path, monkeypatch, capsys, given) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / given).mkdir(parents=True)
    code, err = cli(monkeypatch, capsys, *run_args(tmp_path / "run")[:4], "--pipeline", given, "--out", tmp_path / "run")
    assert code == 2 and f"{given}: is a folder, expected a pipeline file" in one_plain_line(err)


@pytest.mark.parametrize("command", [
    ["flow", VIDEO, "--estimator", "raft-small", "--weights", "{folder}", "--max-frames", "2"],
    ["edit", IMAGE, "--flow", "translate(2, 0)", "--model", "tiny", "--size", "32x32", "--device", "cpu",
     "--estimator", "raft-small", "--raft-weights", "{folder}"],
    [*run_args(Path("{out}")), "--set", 'estimator.name="raft-small"', "--set", 'estimator.weights="{folder}"'],
])
def test_a_folder_given_as_weights_is_named_a_folder(tmp_path, monkeypatch, capsys, command) -> None:
    folder = tmp_path / "weights.pth"
    folder.mkdir()
    arguments = [str(part).replace("{folder}", str(folder)).replace("{out}", str(tmp_path / "out")) for part in command]
    if "--out" not in arguments:
        arguments += ["--out", str(tmp_path / "out")]
    code, err = cli(monkeypatch, capsys, *arguments)
    assert code == 2 and f"{folder}: is a folder, expected a raft-small weights file" in one_plain_line(err)


def test_a_folder_in_the_weights_variable_is_named_a_folder(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MTRANSFER_RAFT_WEIGHTS", str(tmp_path))
    code, err = cli(monkeypatch, capsys, "flow", VIDEO, "--estimator", "raft-small", "--max-frames", "2",
                    "--out", tmp_path / "out")
    assert code == 2 and f"{tmp_path}: is a folder, expected a raft-small weights file" in one_plain_line(err)


# --- a source region too small to hold motion ---------------------------------------------------------------


@pytest.mark.parametrize("box", ["[0.5, 0.5, 0.52, 0.52]", "[10, 10, 13, 30]", "[0.1, 0.0, 0.9, 0.05]"])
def test_a_tiny_source_region_is_refused_before_any_work(tmp_path, monkeypatch, capsys, box) -> None:
    out = tmp_path / "run"
    code, err = cli(monkeypatch, capsys, *run_args(out, "--set", f"align.source_region={box}"))
    assert code == 2 and "align.source_region" in one_plain_line(err) and "at least 8 px" in one_plain_line(err)
    assert not out.exists()


def test_a_source_region_of_eight_pixels_is_taken() -> None:
    from mtransfer.app.settings import AlignSettings

    flow = torch.zeros(2, 32, 40)
    flow[0, 8:16, 8:16] = 0.5
    aligned = AlignSettings(fit="stretch", source_region=(8, 8, 16, 16)).align_flow(flow, (32, 32))
    assert torch.allclose(aligned[0], torch.full((32, 32), 2.0))  # 8 px onto 32: vectors scaled by 4


# --- a name over the file system's limit ------------------------------------------------------------------

LONG = "n" * 300


@pytest.mark.parametrize("command", [
    [*run_args(Path(LONG))],
    ["flow", VIDEO, "--estimator", "tvl1", "--max-frames", "2", "--out", LONG],
    ["motion", "translate(2, 0)", "--size", "32x32", "--out", f"{LONG}.flo"],
    ["edit", IMAGE, "--flow", "translate(2, 0)", "--model", "tiny", "--size", "32x32", "--device", "cpu",
     "--estimator", "pyramid", "--steps", "1", "--recursions", "1", "--out", f"sub/{LONG}"],
    ["generate", "a cat", "--model", "tiny", "--size", "32x32", "--device", "cpu", "--steps", "1", "--out", LONG],
])
def test_a_name_too_long_is_one_line_naming_it(tmp_path, monkeypatch, capsys, command) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = cli(monkeypatch, capsys, *command)
    line = one_plain_line(err)
    assert code == 2 and "nnnnnnnnnnnnnnnnnnnnnnnn..." in line and "bytes long" in line and "traceback" not in line


def test_a_default_folder_made_too_long_by_the_input_name_is_named(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    video = tmp_path / ("v" * 251 + ".mp4")  # a name the file system takes; "<stem>-flow" is one byte too many
    video.write_bytes(VIDEO.read_bytes())
    code, err = cli(monkeypatch, capsys, "flow", video, "--estimator", "tvl1", "--max-frames", "2")
    line = one_plain_line(err)
    assert code == 2 and "-flow' is 256 bytes long" in line and "traceback" not in line


# --- preset files: a byte-order mark, relative paths ------------------------------------------------------


def test_a_preset_with_a_byte_order_mark_reads_like_one_without(tmp_path) -> None:
    from mtransfer.presets import load_pipeline

    text = Path(PRESET).read_text()
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "plain.toml").write_text(text)
    with_mark, without = load_pipeline(tmp_path / "bom.toml"), load_pipeline(tmp_path / "plain.toml")
    assert with_mark.pop("name") == "bom" and without.pop("name") == "plain"
    assert with_mark == without and with_mark["guidance"]["steps"] == 3


def _preset_beside(folder: Path, section: str, lines: str) -> Path:
    """The test preset copied into ``folder`` with ``lines`` added to its ``[section]``."""
    folder.mkdir(parents=True, exist_ok=True)
    preset = folder / "mine.toml"
    text = Path(PRESET).read_text()
    preset.write_text(text.replace(f"[{section}]\n", f"[{section}]\n{lines}") if f"[{section}]" in text
                      else f"{text}\n[{section}]\n{lines}")
    return preset


def test_a_relative_region_mask_in_a_preset_is_found_beside_the_preset(tmp_path, monkeypatch, capsys) -> None:
    from mtransfer.files import save_image

    presets = tmp_path / "presets"
    preset = _preset_beside(presets, "align", 'region = "masks/moving.png"\n')
    mask = torch.zeros(3, 32, 48)
    mask[:, 8:24, 10:40] = 1.0
    save_image(presets / "masks" / "moving.png", mask)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, err = cli(monkeypatch, capsys, "run", VIDEO, "--onto", IMAGE, "--pipeline", preset, "--out", "run",
                    "--flow-only")
    assert code == 0, err
    record = json.loads((elsewhere / "run" / "manifest.json").read_text())
    assert Path(record["config"]["align"]["region"]).resolve() == (presets / "masks" / "moving.png").resolve()
    assert "region_mask" in record["inputs"]


def test_paths_in_a_preset_resolve_against_its_folder_names_and_ids_do_not(tmp_path) -> None:
    from mtransfer.presets import load_pipeline

    (tmp_path / "p" / "local-model").mkdir(parents=True)
    preset = _preset_beside(tmp_path / "p", "estimator", 'weights = "w/raft.pth"\n')
    preset.write_text(preset.read_text().replace("[video]\n", '[video]\nweights = "C_T_V1"\n')
                      .replace('model = "exact"', 'model = "local-model"'))
    config = load_pipeline(preset)
    assert config["estimator"]["weights"] == str(tmp_path / "p" / "w" / "raft.pth")
    assert config["video"]["weights"] == "C_T_V1"  # a torchvision name, not a file
    assert config["model"]["model"] == str(tmp_path / "p" / "local-model")
    (tmp_path / "p" / "local-model").rmdir()
    assert load_pipeline(preset)["model"]["model"] == "local-model"  # no such folder there: a Hugging Face id
    # --set values are the command line's: relative to the working directory, as any flag.
    assert load_pipeline(preset, ['align.region="m.png"'])["align"]["region"] == "m.png"


# --- presets that inherit (issue #24) ---------------------------------------------------------------------


def _record(name_or_path) -> dict:
    from mtransfer.app.settings import load_settings

    record = load_settings(name_or_path).as_record()
    record.pop("name")
    return record


def test_preview_is_paper_with_exactly_its_step_counts_changed() -> None:
    from mtransfer.presets import PRESETS_DIR

    paper, preview = _record("paper"), _record("preview")
    assert (preview["guidance"].pop("steps"), preview["guidance"].pop("recursions")) == (100, 3)
    del paper["guidance"]["steps"], paper["guidance"]["recursions"]
    assert preview == paper
    text = (PRESETS_DIR / "preview.toml").read_text()
    assert 'extends = "paper"' in text and "[model]" not in text  # inherits, does not copy


def test_a_user_preset_extends_a_shipped_one_and_keeps_its_own_paths(tmp_path) -> None:
    (tmp_path / "mine.toml").write_text('extends = "preview"\n[guidance]\nsteps = 40\n[align]\nregion = "m.png"\n')
    mine = _record(tmp_path / "mine.toml")
    preview = _record("preview")
    assert mine["guidance"]["steps"] == 40 and mine["guidance"]["recursions"] == 3
    assert mine["align"]["region"] == str(tmp_path / "m.png")
    mine["guidance"]["steps"], mine["align"]["region"] = preview["guidance"]["steps"], preview["align"]["region"]
    assert mine == preview


def test_a_base_given_as_a_path_is_relative_to_the_preset_and_may_extend_further(tmp_path) -> None:
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "middle.toml").write_text('extends = "paper"\n[guidance]\nrecursions = 2\n')
    (tmp_path / "top.toml").write_text('extends = "bases/middle.toml"\n[guidance]\nsteps = 20\n')
    top = _record(tmp_path / "top.toml")
    assert (top["guidance"]["steps"], top["guidance"]["recursions"]) == (20, 2)
    assert top["model"] == _record("paper")["model"]


@pytest.mark.parametrize("files, loop", [
    ({"a.toml": 'extends = "a.toml"'}, ["a.toml", "a.toml"]),
    ({"a.toml": 'extends = "b.toml"', "b.toml": 'extends = "c.toml"', "c.toml": 'extends = "a.toml"'},
     ["a.toml", "b.toml", "c.toml", "a.toml"]),
])
def test_a_cycle_of_bases_is_refused_naming_the_chain(tmp_path, monkeypatch, capsys, files, loop) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text + "\n")
    code, err = cli(monkeypatch, capsys, *run_args(tmp_path / "run")[:4], "--pipeline", tmp_path / "a.toml",
                    "--out", tmp_path / "run")
    line = one_plain_line(err)
    assert code == 2 and "makes a cycle" in line
    assert " -> ".join(str((tmp_path / name).resolve()) for name in loop) in line


@pytest.mark.parametrize("base, problem", [("3", "must name a preset"), ('"nope"', "unknown pipeline 'nope'"),
                                           ('"gone.toml"', "gone.toml: no such pipeline file")])
def test_a_bad_base_is_named(tmp_path, monkeypatch, capsys, base, problem) -> None:
    (tmp_path / "mine.toml").write_text(f"extends = {base}\n")
    code, err = cli(monkeypatch, capsys, *run_args(tmp_path / "run")[:4], "--pipeline", tmp_path / "mine.toml",
                    "--out", tmp_path / "run")
    assert code == 2 and problem in one_plain_line(err)


def test_presets_lists_base_changes_and_math(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "mine.toml").write_text('description = "mine"\nextends = "paper"\n[model]\nspeed = "sdpa"\n')
    from mtransfer.cli import main

    monkeypatch.setattr(sys, "argv", ["mtransfer", "presets", str(tmp_path / "mine.toml")])
    main()  # exits only on failure
    listing = capsys.readouterr().out
    blocks = {}
    for line in listing.splitlines():
        if not line.startswith(" "):
            name = line.split()[0]
        blocks.setdefault(name, []).append(line.strip())
    assert set(blocks) == {"paper", "preview", "sd2", "tiny", "offline-demo", "mine"}
    assert blocks["paper"][1:] == ["base: none (a complete preset)", "math: the paper's"]
    assert blocks["preview"][1:] == ["base: paper", "guidance.steps = 100 (paper: 500)",
                                     "guidance.recursions = 3 (paper: 10)",
                                     "math: CHANGED from paper's: guidance.steps, guidance.recursions"]
    assert blocks["mine"][2:] == ["base: paper", 'model.speed = "sdpa" (paper: "")', "math: the paper's"]
    assert "model.model" in blocks["tiny"][-1]


# --- the sweep: the other file and folder options ---------------------------------------------------------


def test_a_folder_given_as_an_image_reads_as_english(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "photo.png").mkdir()
    code, err = cli(monkeypatch, capsys, "motion", "translate(2, 0)", "--onto", tmp_path / "photo.png")
    assert code == 2 and "photo.png: is a folder, expected an image" in one_plain_line(err)


def test_eval_given_a_file_says_it_is_a_file(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "run.json").write_text("{}")
    code, err = cli(monkeypatch, capsys, "eval", tmp_path / "run.json")
    assert code == 2 and "run.json: is a file, expected a run or edit folder" in one_plain_line(err)


def test_a_file_given_as_the_model_folder_says_it_is_a_file(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)  # not a checkpoint suffix: read as a folder
    code, err = cli(monkeypatch, capsys, "edit", IMAGE, "--flow", "translate(2, 0)", "--model",
                    tmp_path / "model.bin", "--estimator", "pyramid", "--size", "32x32", "--device", "cpu",
                    "--out", tmp_path / "out")
    assert code == 2 and "model.bin: is a file, expected a model folder" in one_plain_line(err)


@pytest.mark.parametrize("command", [
    ["run", f"{LONG}.mp4", "--onto", IMAGE],
    ["motion", f"scale(1.2, mask={LONG}.png)", "--size", "32x32"],
])
def test_an_input_name_too_long_is_no_such_file_naming_it(tmp_path, monkeypatch, capsys, command) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = cli(monkeypatch, capsys, *command)
    line = one_plain_line(err)
    assert code == 2 and "no such" in line and "bytes long" in line and "traceback" not in line
