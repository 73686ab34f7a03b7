"""Evaluation metrics on constructed cases with known answers, the judge on large motions, ``mtransfer eval``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mtransfer.estimators import load_named_estimator
from mtransfer.evaluation import (
    evaluate_run, fidelity, judge_estimator_name, judge_motion, preservation, read_evaluation, temporal_consistency,
)
from mtransfer.files import save_image, write_json
from mtransfer.flows import splat_image, translation, write_flow
from mtransfer.flows.align import motion_mask


def textured(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth random colour texture (3, H, W) in [0, 1]: every window has structure to match."""
    noise = torch.rand(1, 3, height // 4, width // 4, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False)[0].clamp(0, 1)


def object_motion(size: int, box: tuple[int, int, int, int], dx: float, dy: float) -> torch.Tensor:
    """A translation by (dx, dy) of the pixels inside ``box`` (x0, y0, x1, y1); zero elsewhere."""
    flow = torch.zeros(2, size, size)
    x0, y0, x1, y1 = box
    flow[0, y0:y1, x0:x1], flow[1, y0:y1, x0:x1] = dx, dy
    return flow


def test_splat_moves_an_object_by_whole_pixels() -> None:
    image = textured(48, 48)
    flow = object_motion(48, (8, 8, 24, 24), 12, 4)
    moved = splat_image(image[None], flow)[0]
    # rule: the object's pixel (x, y) now shows at (x + 12, y + 4)
    assert torch.equal(moved[:, 12:28, 20:36], image[:, 8:24, 8:24])


def test_result_moved_exactly_by_the_target_has_near_zero_fidelity_and_warping_error() -> None:
    source = textured(96, 96)
    targets = torch.stack([translation(96, 96, 2.0 * t, 1.0 * t) for t in range(3)])
    results = splat_image(source[None].expand(3, -1, -1, -1), targets)
    judge = load_named_estimator("tvl1")
    for result, target in zip(results[1:], targets[1:]):
        measured = judge_motion(judge, source[None], result[None], target).flow[0]
        figures = fidelity(measured, target)
        assert figures["epe_all"] < 0.3
        assert figures["within_1px_all"] > 0.95
    temporal = temporal_consistency(results, targets, source)
    assert max(temporal["warping_error"]) < 1e-4  # whole-pixel moves: the same colours, exactly


def test_a_flickering_sequence_has_a_larger_warping_error_than_a_steady_one() -> None:
    source = textured(64, 64) * 0.8 + 0.1
    targets = torch.stack([translation(64, 64, float(t), 0.0) for t in range(4)])
    steady = splat_image(source[None].expand(4, -1, -1, -1), targets)
    flicker = steady + torch.tensor([0.0, 0.05, -0.05, 0.05]).view(4, 1, 1, 1)  # brightness jumps of 0.05-0.1
    steady_error = temporal_consistency(steady, targets, source)["warping_error"]
    flicker_error = temporal_consistency(flicker, targets, source)["warping_error"]
    # rule: a uniform jump of b between two frames adds |b| to the mean absolute difference
    assert all(e < 1e-4 for e in steady_error)
    assert flicker_error == pytest.approx([0.05, 0.1, 0.1], abs=1e-4)


def test_preservation_of_an_untouched_background_is_infinite_psnr_and_ssim_one() -> None:
    source = textured(64, 64)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:40, 16:40] = 1
    edited = source.clone()
    edited[:, 20:36, 20:36] = 1 - edited[:, 20:36, 20:36]  # changes only well inside the mask
    assert preservation(source, source, mask) == {"psnr": math.inf, "ssim": 1.0}
    assert preservation(source, edited, mask) == {"psnr": math.inf, "ssim": 1.0}
    # rule: a background off by 0.1 everywhere has MSE 0.01, so PSNR = 10 log10(1 / 0.01) = 20 dB
    shifted = torch.where(mask.bool(), source, source + 0.1)
    assert preservation(source, shifted, mask)["psnr"] == pytest.approx(20.0, abs=1e-3)
    assert preservation(source, edited, None) == {"psnr": None, "ssim": None}  # all editable: nothing outside


def test_judge_ranks_an_exact_60px_move_far_ahead_of_no_motion_and_the_reversed_motion() -> None:
    background, thing = textured(224, 224, seed=1), textured(224, 224, seed=2)
    source = background.clone()
    source[:, 80:140, 82:142] = thing[:, 80:140, 82:142]  # a textured object on a textured background
    target = object_motion(224, (82, 80, 142, 140), 60, 0)  # both 60 px moves stay inside the frame
    judge = load_named_estimator("tvl1")
    epe = {}
    for case, result in {"exact": splat_image(source[None], target), "none": source[None],
                         "reversed": splat_image(source[None], -target)}.items():
        measured = judge_motion(judge, source[None], result, target).flow[0]
        epe[case] = fidelity(measured, target, (target.norm(dim=0) > 0)[None].float())["epe_edit"]
    assert epe["exact"] < 5
    assert epe["none"] > 40 and epe["reversed"] > 40


def test_judge_is_never_the_guidance_estimator(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-cache"))
    monkeypatch.delenv("MTRANSFER_RAFT_WEIGHTS", raising=False)
    assert judge_estimator_name("pyramid") == "tvl1"  # no RAFT weights here: the weight-free judge
    weights = tmp_path / "raft.pth"
    weights.write_bytes(b"")
    monkeypatch.setenv("MTRANSFER_RAFT_WEIGHTS", str(weights))
    assert judge_estimator_name("pyramid") == "raft-large"
    assert judge_estimator_name("raft-large") == "raft-small"


def _run_folder(folder, source, targets, results) -> None:
    """A folder laid out as ``mtransfer run`` writes it (see mtransfer.pipeline.stages)."""
    save_image(folder / "source.png", source)
    for index, (target, result) in enumerate(zip(targets, results)):
        write_flow(folder / "flow" / f"{index:04d}.flo", target)
        save_image(folder / "edit_mask" / f"{index:04d}.png", motion_mask(target)[0])
        save_image(folder / "frames" / f"{index:04d}.png", result)
    write_json(folder / "manifest.json", {"config": {"estimator": {"name": "pyramid"}}})


def _mtransfer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtransfer", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "160"}, timeout=300)


def test_mtransfer_eval_on_a_run_folder(tmp_path) -> None:
    source = textured(64, 64)
    targets = torch.stack([object_motion(64, (16, 16, 40, 40), 2.0 * t, 0.0) for t in range(3)])
    _run_folder(tmp_path, source, targets, splat_image(source[None].expand(3, -1, -1, -1), targets))
    done = _mtransfer("eval", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "mean" in done.stdout and "tvl1" in done.stdout
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert [row["frame"] for row in evaluation["frames"]] == [0, 1, 2]
    assert evaluation["judge"] == {"estimator": "tvl1", "guidance_estimator": "pyramid", "max_side": 256}
    assert evaluation["summary"]["epe_edit"] < 1.0
    assert evaluation["summary"]["psnr"] == "inf"  # outside the masks the frames are the source
    assert evaluation["summary"]["warping_error"] < 0.01
    direct = evaluate_run(tmp_path)  # the function the report can call; JSON spells infinity "inf"
    assert direct["summary"]["psnr"] == math.inf and read_evaluation(tmp_path)["summary"]["psnr"] == math.inf
    assert direct["frames"][1]["epe_edit"] == evaluation["frames"][1]["epe_edit"]
    # the judge's verdict per moving frame: moved as asked, so reached (frame 0 is the source: none)
    assert [row["verdict"] for row in evaluation["frames"]] == [None, "reached", "reached"]
    assert evaluation["verdicts"] == {"reached": 2, "partial": 0, "missed": 0}
    assert "judge's verdicts on the moving frames: 2 reached" in done.stdout


def test_a_run_that_did_not_move_is_missed_by_the_judge(tmp_path) -> None:
    source = textured(64, 64)
    targets = torch.stack([object_motion(64, (16, 16, 40, 40), 6.0 * t, 0.0) for t in range(3)])
    _run_folder(tmp_path, source, targets, source[None].expand(3, -1, -1, -1))  # every result is the source
    evaluation = evaluate_run(tmp_path, estimator="tvl1")
    assert [row["verdict"] for row in evaluation["frames"]] == [None, "missed", "missed"]


def test_mtransfer_eval_refuses_a_folder_that_is_no_run_in_one_line(tmp_path) -> None:
    done = _mtransfer("eval", str(tmp_path))
    assert done.returncode == 2
    assert "not a run folder" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    (tmp_path / "run.json").write_text("{}")
    save_image(tmp_path / "edited.png", textured(32, 32))
    done = _mtransfer("eval", str(tmp_path))
    assert done.returncode == 2 and "target_flow.flo" in done.stderr


def test_every_figure_the_metrics_compute_is_named_once_in_the_figure_table() -> None:
    """A figure the metrics add without an entry in ``FIGURE_TABLE`` would be averaged nowhere and shown
    nowhere; the run report's plots and summary line are the table's."""
    from mtransfer.evaluation import FIGURE_TABLE, FIGURES, summary_line
    from mtransfer.pipeline.stages import encode

    image, flow = textured(16, 16), object_motion(16, (4, 4, 10, 10), 2, 1)
    computed = {**fidelity(flow, flow), **preservation(image, image, None),
                **temporal_consistency(torch.stack((image, image)), torch.stack((flow, flow)), image)}
    assert set(computed) == set(FIGURES) == {figure.key for figure in FIGURE_TABLE}
    plotted = [(p.key, p.reference) for p in encode.EVALUATION_PLOTS]
    assert plotted == [("epe_edit", "epe_all"), ("ssim", None), ("warping_error", "baseline_warping_error")]
    evaluation = {"judge": {"estimator": "tvl1", "guidance_estimator": "pyramid"},
                  "summary": {**dict.fromkeys(FIGURES, 0.5), "psnr": math.inf, "ssim": None}}
    assert "PSNR ∞ dB, SSIM –" in summary_line(evaluation)
