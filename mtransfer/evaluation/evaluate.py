"""Evaluating a folder written by ``mtransfer run`` or ``mtransfer edit``: ``evaluate_run(folder)``.

A run folder has ``manifest.json``, ``source.png``, ``frames/NNNN.png``, ``flow/NNNN.flo`` and
``edit_mask/NNNN.png`` (see ``mtransfer.layouts``). An edit folder (``mtransfer.layouts.EditFolder``)
has ``run.json``, ``source.png``, ``edited.png`` and ``target_flow.flo``; it keeps no edit mask, so the moving
region of the target (``motion_mask``: what moves, where it lands, an 8 px margin) stands in for it. The
figures are written to ``evaluation.json`` in the folder (atomically) and returned. ``mtransfer run`` calls
``evaluate_run`` as its ``evaluate`` stage, keeping each judged frame's figures in its manifest so that
an interrupted evaluation resumes (``known``, ``on_frame``). Each judged frame gets the judge's
``verdict`` (``motion_verdict``: reached / partial / missed); ``verdicts`` counts them over the moving frames.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from mtransfer.errors import UsageError, input_error
from mtransfer.evaluation.figures import FIGURES, MOTION_KEY
from mtransfer.evaluation.judge import judge_estimator_name, judge_motion
from mtransfer.evaluation.metrics import fidelity, preservation, temporal_consistency
from mtransfer.evaluation.verdict import VERDICTS, motion_verdict
from mtransfer.estimators import load_named_estimator
from mtransfer.devices import parse_device
from mtransfer.files import load_image, read_json, read_json_object, with_infinities, write_json
from mtransfer.flows.io import read_flow, read_mask
from mtransfer.flows.align import motion_mask
from mtransfer.layouts import EDIT_MASK, EVALUATION, FLOW, FRAMES, RUN_MANIFEST, EditFolder, frame_file

MOTIONLESS_PX = 0.5
"""Frames whose target moves no pixel further than this are left out of the summary (they are the source)."""


def _same_size(path: Path, tensor: torch.Tensor, size: tuple[int, int], what: str) -> torch.Tensor:
    if tuple(tensor.shape[-2:]) != size:
        raise input_error(path, f"{what} is {tensor.shape[-2]}x{tensor.shape[-1]}, the source is {size[0]}x{size[1]}")
    return tensor


def _load_run(folder: Path) -> tuple[str, dict, list[tuple[int, Path, Path, Path | None]]]:
    """The folder's kind, the record naming the guidance estimator, and (index, result, flow, mask) per frame."""
    if (folder / RUN_MANIFEST).is_file() and (folder / FRAMES).is_dir():
        manifest = read_json_object(folder / RUN_MANIFEST, "a run manifest")
        frames = sorted(p for p in (folder / FRAMES).glob("*.png") if p.stem.isdigit())
        if not frames:
            raise input_error(folder / FRAMES, "no result frames yet; run the guide stage first")
        _check_frames_complete(folder, manifest, frames)
        return "run", manifest.get("config", {}), [
            (int(p.stem), p, folder / frame_file(FLOW, int(p.stem)), folder / frame_file(EDIT_MASK, int(p.stem)))
            for p in frames
        ]
    edit = EditFolder
    if (folder / edit.RECORD).is_file() and (folder / edit.EDITED).is_file():
        if not (folder / edit.TARGET_FLOW).is_file():
            raise input_error(folder / edit.TARGET_FLOW,
                              "missing; edits written by older versions lack it, rerun the edit")
        return "edit", read_json_object(folder / edit.RECORD, "an edit record"), [
            (0, folder / edit.EDITED, folder / edit.TARGET_FLOW, None)
        ]
    raise input_error(
        folder, f"not a run folder ({RUN_MANIFEST} and frames/) nor an edit folder ({edit.RECORD} and {edit.EDITED})"
    )


def _check_frames_complete(folder: Path, manifest: dict, frames: list[Path]) -> None:
    """Refuse a run whose result frames have a hole: a frame the manifest says is done but whose PNG is
    gone, or a gap in the numbering. Judging the rest would fold the hole silently into the means and
    measure temporal consistency across it."""
    stages = manifest.get("stages")
    guide = stages.get("guide") if isinstance(stages, dict) else None
    done = guide.get("frames") if isinstance(guide, dict) else None
    present = {int(p.stem) for p in frames}
    expected = set(range(max(present) + 1))
    if isinstance(done, dict):
        expected |= {int(key) for key in done if str(key).isdigit()}
    missing = sorted(expected - present)
    if missing:
        name = f"{missing[0]:0{len(frames[0].stem)}d}.png"
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise input_error(folder / FRAMES / name, f"missing{more}; run the same `mtransfer run` command again "
                          "to remake it, then evaluate")


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if any(v is not None and math.isinf(v) for v in values) and not finite:
        return math.inf
    return statistics.fmean(finite) if finite else None


def read_evaluation(folder: str | Path) -> dict[str, Any]:
    """The ``evaluation.json`` that ``evaluate_run`` wrote in ``folder``, infinities restored."""
    return with_infinities(read_json(Path(folder) / EVALUATION))


def evaluate_run(
    folder: str | Path,
    *,
    device: str | torch.device = "cpu",
    estimator: str | None = None,
    max_side: int = 256,
    progress: Callable[[int], None] | None = None,
    known: Mapping[int, Mapping[str, Any]] | None = None,
    on_frame: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Fidelity (by the judge), preservation and temporal consistency of every frame in ``folder``.

    ``estimator`` overrides the judge's choice (``judge_estimator_name``), ``max_side`` caps the size it
    measures at (``judge_motion``); ``progress(total)`` is called once with the number of frames to judge
    and then ``progress(0)`` after each one. ``known`` holds the fidelity and preservation figures of
    frames judged before (by index; "inf" read as infinity), which are not judged again; ``on_frame(index,
    figures)`` is called after each frame judged now. Writes ``evaluation.json``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise input_error(folder, "is a file, expected a run or edit folder" if folder.exists() else "no such run folder")
    if not isinstance(device, torch.device):
        device = parse_device(device, "--device")
    kind, record, frames = _load_run(folder)
    guidance = (record.get("estimator") or {}).get("name")
    name = estimator or judge_estimator_name(guidance)
    if name == guidance:
        raise UsageError(f"the judge must not be the estimator that guided the edit ({name}); pick another")
    known = {index: with_infinities(dict(row)) for index, row in (known or {}).items()}
    judge = load_named_estimator(name, device=device) if any(index not in known for index, *_ in frames) else None
    source = load_image(folder / EditFolder.SOURCE)  # a run folder's source has the same name
    size = tuple(source.shape[-2:])
    if progress:
        progress(sum(index not in known for index, *_ in frames))
    rows, results, targets = [], [], []
    for index, result_path, flow_path, mask_path in frames:
        result = _same_size(result_path, load_image(result_path), size, "result")
        target = _same_size(flow_path, read_flow(flow_path), size, "target flow")
        results.append(result)
        targets.append(target)
        if index in known:
            rows.append({**known[index], "frame": index})
            continue
        mask = motion_mask(target)[0] if mask_path is None else _same_size(mask_path, read_mask(mask_path), size, "edit mask")
        measured = judge_motion(judge, source[None].to(device), result[None].to(device), target.to(device),
                                max_side=max_side).flow[0]
        motion = float(target.norm(dim=0).max())
        rows.append({
            "frame": index,
            MOTION_KEY: motion,
            **fidelity(measured, target, mask),
            **preservation(source, result, mask),
            "verdict": motion_verdict(measured, target, mask, measured_by=f"the judge {name}").label
            if motion > MOTIONLESS_PX else None,  # a still frame is the source: nothing to reach
        })
        if on_frame:
            on_frame(index, rows[-1])
        if progress:
            progress(0)
    temporal = temporal_consistency(torch.stack(results), torch.stack(targets), source)
    for row, error, baseline in zip(rows[1:], temporal["warping_error"], temporal["baseline_warping_error"]):
        row.update(warping_error=error, baseline_warping_error=baseline)
    moving = [row for row in rows if row[MOTION_KEY] > MOTIONLESS_PX]  # frame 0 is the source itself
    evaluation = {
        "folder": str(folder),
        "kind": kind,
        "judge": {"estimator": name, "guidance_estimator": guidance, "max_side": max_side},
        "summary": {key: _mean([row.get(key) for row in moving or rows]) for key in FIGURES},
        "verdicts": {label: sum(row.get("verdict") == label for row in moving) for label in VERDICTS},
        "frames": rows,
    }
    write_json(folder / EVALUATION, evaluation)
    return evaluation
