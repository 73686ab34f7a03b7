"""Round 3 of the hostile-user probe: each class of failure that once crashed (exit 1) or gave a wrong
result with exit 0 is now a one-line error with exit 2, before any expensive work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mtransfer.app.settings import ray_address_ok
from mtransfer.files import save_image
from test_reliability import PRESET, TINY_EDIT, one_plain_line, private_cache, run_args  # noqa: F401
from in_process import run_main as cli


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished run folder made with the test preset (copied by each test that damages it)."""
    out = tmp_path_factory.mktemp("r3") / "run"
    with pytest.MonkeyPatch.context() as patch:
        import sys

        from mtransfer.cli import main

        patch.setattr(sys, "argv", ["mtransfer", *map(str, run_args(out))])
        main()
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    return copy


@pytest.mark.parametrize("device, problem", [("cuda:7", "no CUDA GPU"), ("nonsense", "not a device name")])
def test_eval_reads_its_device_like_every_command(finished_run, tmp_path, monkeypatch, capsys, device, problem) -> None:
    run = _copy(finished_run, tmp_path)
    before = (run / "evaluation.json").read_bytes()
    code, err = cli(monkeypatch, capsys, "eval", run, "--device", device)
    assert code == 2 and problem in one_plain_line(err) and device in one_plain_line(err)
    assert (run / "evaluation.json").read_bytes() == before


@pytest.mark.parametrize("content", ["[]", "null", "3"])
def test_eval_refuses_a_manifest_that_is_not_an_object(finished_run, tmp_path, monkeypatch, capsys, content) -> None:
    run = _copy(finished_run, tmp_path)
    (run / "manifest.json").write_text(content)
    code, err = cli(monkeypatch, capsys, "eval", run)
    assert code == 2 and "manifest.json" in one_plain_line(err) and "JSON object" in one_plain_line(err)


def test_eval_names_a_missing_frame_instead_of_judging_around_it(finished_run, tmp_path, monkeypatch, capsys) -> None:
    run = _copy(finished_run, tmp_path)
    before = (run / "evaluation.json").read_bytes()
    (run / "frames" / "0001.png").unlink()
    code, err = cli(monkeypatch, capsys, "eval", run)
    assert code == 2 and "0001.png: missing" in one_plain_line(err)
    assert (run / "evaluation.json").read_bytes() == before  # nothing overwritten


def test_edit_refuses_to_write_into_a_run_folder(finished_run, tmp_path, monkeypatch, capsys) -> None:
    run = _copy(finished_run, tmp_path)
    report = (run / "report.html").read_bytes()
    save_image(tmp_path / "p.png", torch.rand(3, 32, 32))
    code, err = cli(monkeypatch, capsys, "edit", tmp_path / "p.png", "--flow", "translate(2, 0)", *TINY_EDIT, "--out", run)
    assert code == 2 and "is a `mtransfer run` folder" in one_plain_line(err)
    assert (run / "report.html").read_bytes() == report and not (run / "edited.png").exists()


@pytest.mark.parametrize("address", ['"not an address"', '"ray://"', '"host:99999"', '"ray:// host:1"'])
def test_a_malformed_ray_address_is_refused_before_the_run_folder(tmp_path, monkeypatch, capsys, address) -> None:
    out = tmp_path / "run"
    code, err = cli(monkeypatch, capsys, *run_args(out, "--set", f"execution.address={address}",
                                                    "--set", 'execution.executor="ray"'))
    assert code == 2 and "execution.address" in one_plain_line(err)
    assert not out.exists()


def test_a_malformed_ray_address_in_a_preset_file_is_refused(tmp_path, monkeypatch, capsys) -> None:
    preset = tmp_path / "p.toml"
    preset.write_text(Path(PRESET).read_text() + '\n[execution]\nexecutor = "ray"\naddress = "not an address"\n')
    code, err = cli(monkeypatch, capsys, "run", run_args(tmp_path)[1], "--onto", run_args(tmp_path)[3],
                    "--pipeline", preset, "--out", tmp_path / "run")
    assert code == 2 and "execution.address" in one_plain_line(err)


def test_ray_address_forms() -> None:
    """The forms ``ray.init`` takes: empty, auto, local, ray://HOST:PORT, HOST:PORT."""
    assert all(map(ray_address_ok, ["", "auto", "local", "ray://10.0.0.1:10001", "127.0.0.1:6379", "head:6379"]))
    assert not any(map(ray_address_ok, ["not an address", "ray://", "host", "host:0", "host:x", ":6379"]))


def test_an_unreachable_ray_cluster_is_refused_before_the_source_is_inverted(tmp_path, monkeypatch, capsys) -> None:
    """Once, the error came after the source's DDIM inversion (the expensive part) as exit 1."""
    out = tmp_path / "run"
    code, err = cli(monkeypatch, capsys, *run_args(out, "--set", 'execution.executor="ray"',
                                                    "--set", 'execution.address="ray://127.0.0.1:1"'))
    assert code == 2 and "cannot reach a Ray cluster" in one_plain_line(err)
    assert "inversion" not in err and not list((out / "frames").glob("0001.png"))


@pytest.mark.parametrize("size", ["[1024, 8]", "[8, 1024]"])
def test_the_evaluate_stage_judges_very_thin_frames(tmp_path, monkeypatch, capsys, size) -> None:
    """``model.size=[4104, 8]`` once crashed the evaluate stage after the guide stage (the judge's 256 px cap
    made the frame 1 px wide), and every rerun crashed again."""
    out = tmp_path / "run"
    code, err = cli(monkeypatch, capsys, *run_args(out, "--set", f"model.size={size}"))
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["evaluate"]["status"] == "done"
    frames = json.loads((out / "evaluation.json").read_text())["frames"]
    # judged where something stays in view (a 15-40 px motion carries an 8 px wide frame out of it)
    assert len(frames) == 4 and all("epe_all" in row and "psnr" in row for row in frames)


def test_judge_and_preservation_take_frames_thinner_than_their_windows() -> None:
    from mtransfer.estimators import load_named_estimator
    from mtransfer.evaluation.judge import judge_motion
    from mtransfer.evaluation.metrics import preservation

    for height, width in ((4104, 8), (3, 5), (2, 2)):
        source, result = torch.rand(1, 3, height, width), torch.rand(1, 3, height, width)
        flow = judge_motion(load_named_estimator("tvl1"), source, result, torch.zeros(2, height, width)).flow
        assert flow.shape == (1, 2, height, width) and torch.isfinite(flow).all()
        figures = preservation(source[0], result[0], torch.zeros(1, height, width))
        assert (figures["ssim"] is None) == (min(height, width) < 3)


def _picture(tmp_path: Path, size: tuple[int, int] = (32, 32)) -> Path:
    save_image(tmp_path / "p.png", torch.rand(3, *size))
    return tmp_path / "p.png"


def _mask(path: Path, size: tuple[int, int], value: int = 255) -> Path:
    from PIL import Image

    Image.new("L", (size[1], size[0]), value).save(path)
    return path


@pytest.mark.parametrize("where", ["--mask", "spec"])
def test_every_mask_follows_one_rule_size_and_not_all_black(tmp_path, monkeypatch, capsys, where) -> None:
    """A spec's ``mask=`` once stretched a mask of another size silently, and an all-black one gave zero
    motion with exit 0; ``edit --mask`` refused the same files. Now both refuse both."""
    image = _picture(tmp_path)
    for mask, problem in ((_mask(tmp_path / "big.png", (48, 40)), "is 48x40, expected 32x32"),
                          (_mask(tmp_path / "black.png", (32, 32), 0), "all black")):
        if where == "--mask":
            arguments = ["--flow", "translate(2, 0)", "--mask", mask]
        else:
            arguments = ["--flow", f"translate(2, 0, mask={mask})"]
        code, err = cli(monkeypatch, capsys, "edit", image, *arguments, *TINY_EDIT, "--out", tmp_path / "e")
        assert code == 2 and problem in one_plain_line(err) and mask.name in one_plain_line(err)
        assert not (tmp_path / "e").exists()


def test_a_spec_mask_drawn_on_the_image_is_taken_at_the_working_size(tmp_path, monkeypatch, capsys) -> None:
    image = _picture(tmp_path, (64, 64))  # edited at 32x32 (TINY_EDIT)
    mask = _mask(tmp_path / "m.png", (64, 64))
    code, err = cli(monkeypatch, capsys, "edit", image, "--flow", f"translate(2, 0, mask={mask})", *TINY_EDIT,
                    "--out", tmp_path / "e")
    assert code == 0, err


def test_edit_with_a_motionless_flow_is_refused_not_returned_changed(tmp_path, monkeypatch, capsys) -> None:
    """``run`` keeps motionless frames as the source; ``edit`` once guided anyway and returned a changed
    picture with status ok."""
    code, err = cli(monkeypatch, capsys, "edit", _picture(tmp_path), "--flow", "translate(0, 0)", *TINY_EDIT,
                    "--out", tmp_path / "e")
    assert code == 2 and "moves no pixel" in one_plain_line(err)
    assert not (tmp_path / "e").exists()
