"""Frame plans measured on whole clips: guided passes, fidelity, coherence and wall time per ``video.plan``.

Every figure comes from the real pipeline (``run_pipeline``): each sample clip is decoded, its flow
measured and aligned onto each picture once (``--flow-only``), then that run folder is copied and the guide,
evaluate and encode stages run under each plan. The model is the exact world of the ``offline-demo`` preset
(the picture under whole-pixel shifts), made smaller so the grid fits a CPU: 48×64, shifts up to ±3 px,
every other frame of the clip (12 frames, 11 edits), the preset's 50 steps × 2 recursions. The figures are
the run's own independent evaluation (``evaluation.json``): EPE of the judge's flow in the edit mask, and the
warping error between consecutive results beside the naive forward-warp baseline's. Pictures: ``cat`` (one
of the six the offline-demo preset was chosen on) and ``camera`` and ``coins`` (grey, not used for any
choice). With ``--ray`` the keyed plan also runs on Ray with 1 and 2 workers (guide stage wall time).

The projection for a 48-frame clip at the ``paper`` settings schedules each plan's frames (a key runs all
5,000 passes, a warm frame its share) on 1, 8 and 64 GPUs, every frame as soon as its parent is done, at an
*assumed* time per pass (``--seconds-per-pass``, default 0.20 s: 8.1 TFLOP at 40 TFLOP/s, see
"Scaling over workers"); no GPU has been measured.

Usage::

    python -m benchmarks.clip_plan [--clips pan,rotate,scale,translate] [--pictures cat,camera,coins]
        [--plans independent,"keys K=4 s=0.5"] [--ray] [--write-benchmarks] [--json report.json]
"""

from __future__ import annotations

import argparse
import heapq
import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from benchmarks.exact_world import write_section
from mtransfer.app.plan import KEY, STILL, PlannedFrame, frame_plan
from mtransfer.files import read_json, write_json
from mtransfer.guidance.edit import warm_start_step
from mtransfer.pipeline.runner import RunRequest, run_pipeline

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Frame plans (`benchmarks/clip_plan.py`)"
PRESET = "offline-demo"
WORLD = ("model.size=[48,64]", "model.family_radius=3", "video.stride=2", "video.max_frames=12")
CLIPS = ("pan", "rotate", "scale", "translate")
PICTURES = ("cat", "camera", "coins")
CHOSEN_ON = {"cat"}  # pictures the offline-demo preset's settings were chosen on (benchmarks/exact_world.py)


def _plans() -> dict[str, tuple[str, ...]]:
    plans: dict[str, tuple[str, ...]] = {"independent": ()}
    for share in (0.5, 0.3):
        plans[f"chain s={share}"] = ('video.plan="chain"', f"video.warm_start={share}")
    for every in (4, 8):
        for share in (0.5, 0.3):
            plans[f"keys K={every} s={share}"] = ('video.plan="keys"', f"video.key_every={every}",
                                                   f"video.warm_start={share}")
            plans[f"keys K={every} s={share} from key"] = (*plans[f"keys K={every} s={share}"],
                                                            'video.warm_from="key"')
    # Beyond the grid: the shortest warm runs, the only ones whose pass count can reach a third of
    # independent's on a 12-frame clip.
    plans["chain s=0.2"] = ('video.plan="chain"', "video.warm_start=0.2")
    plans["keys K=8 s=0.2"] = ('video.plan="keys"', "video.key_every=8", "video.warm_start=0.2")
    plans["keys K=8 s=0.2 from key"] = (*plans["keys K=8 s=0.2"], 'video.warm_from="key"')
    for name in [name for name in plans if name != "independent"]:
        plans[f"{name} +warp"] = (*plans[name], 'video.warm_warp="image"')
    return plans


PLANS = _plans()
"""Each plan's settings; ``+warp`` moves the parent's result by the motion to the frame before re-noising
(in the exact world the latent is the picture, so ``image`` and ``latent`` warps are the same)."""


def picture(name: str, folder: Path) -> Path:
    """The named picture as an RGB PNG: ``cat`` is the bundled one, others come from ``skimage.data``."""
    if name == "cat":
        return ROOT / "sample_videos" / "cat.png"
    import skimage.data

    path = folder / f"{name}.png"
    Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB").save(path)
    return path


def _seconds(record: dict[str, Any]) -> float:
    started, finished = (datetime.fromisoformat(record[key]) for key in ("started", "finished"))
    return (finished - started).total_seconds()


def run_plan(aligned: Path, folder: Path, video: Path, image: Path, world: tuple[str, ...],
             overrides: tuple[str, ...]) -> dict[str, Any]:
    """One plan on a copy of an aligned run folder: its passes, evaluation and times."""
    shutil.copytree(aligned, folder)
    quiet = Console(file=open(os.devnull, "w"))
    started = time.perf_counter()
    run_pipeline(RunRequest(video, image, PRESET, (*world, *overrides), folder), quiet)
    wall = time.perf_counter() - started
    manifest = read_json(folder / "manifest.json")
    guide = manifest["stages"]["guide"]
    summary = read_json(folder / "evaluation.json")["summary"]
    return {
        "passes": guide["plan"]["passes"], "independent_passes": guide["plan"]["independent_passes"],
        "keys": len(guide["plan"]["keys"]), "epe_edit": summary["epe_edit"],
        "warping_error": summary["warping_error"], "baseline_warping_error": summary["baseline_warping_error"],
        "guide_s": round(_seconds(guide), 1), "wall_s": round(wall, 1),
    }


def measure(clips: list[str], pictures: list[str], plans: list[str], ray: bool, world: tuple[str, ...],
            console: Console) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        quiet = Console(file=open(os.devnull, "w"))
        for picture_name in pictures:
            image = picture(picture_name, work)
            for clip in clips:
                video = ROOT / "sample_videos" / f"{clip}.mp4"
                aligned = work / f"{clip}-{picture_name}" / "aligned"
                run_pipeline(RunRequest(video, image, PRESET, world, aligned, flow_only=True), quiet)
                for plan in plans:
                    row = run_plan(aligned, work / f"{clip}-{picture_name}" / plan.replace(" ", "_"), video,
                                   image, world, PLANS[plan])
                    rows.append({"clip": clip, "picture": picture_name, "plan": plan, **row})
                    console.print(f"{clip} × {picture_name}, {plan}: {row}", highlight=False)
        ray_rows = []
        if ray:
            clip, picture_name = clips[0], pictures[0]
            video, image = ROOT / "sample_videos" / f"{clip}.mp4", picture(picture_name, work)
            aligned = work / f"{clip}-{picture_name}" / "aligned"
            for plan in ("independent", "keys K=4 s=0.5"):
                for workers in (1, 2):
                    settings = (*PLANS[plan], 'execution.executor="ray"', f"execution.workers={workers}")
                    row = run_plan(aligned, work / f"ray-{workers}-{plan.replace(' ', '_')}", video, image, world, settings)
                    ray_rows.append({"clip": clip, "picture": picture_name, "plan": plan, "workers": workers, **row})
                    console.print(f"Ray {workers} worker(s), {plan}: {row}", highlight=False)
    return {"world": list(world), "preset": PRESET, "rows": rows, "ray": ray_rows, "summary": summarise(rows)}


def _mean(values: list[float]) -> float:
    known = [v for v in values if v is not None and v == v]
    return statistics.fmean(known) if known else float("nan")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per plan and picture group (all, the one the preset was chosen on, unseen): means, and the change of
    EPE and warping error against the independent plan on the same clip and picture (mean and worst)."""
    base = {(r["clip"], r["picture"]): r for r in rows if r["plan"] == "independent"}
    out = []
    for plan in dict.fromkeys(r["plan"] for r in rows):
        for group, keep in (("all", lambda p: True), ("chosen-on", lambda p: p in CHOSEN_ON),
                            ("unseen", lambda p: p not in CHOSEN_ON)):
            own = [r for r in rows if r["plan"] == plan and keep(r["picture"]) and (r["clip"], r["picture"]) in base]
            if not own:
                continue
            epe_change = [r["epe_edit"] - base[(r["clip"], r["picture"])]["epe_edit"] for r in own]
            out.append({
                "plan": plan, "group": group, "runs": len(own),
                "pass_share": _mean([r["passes"] / r["independent_passes"] for r in own]),
                "epe_edit": _mean([r["epe_edit"] for r in own]),
                "epe_change": _mean(epe_change), "worst_epe_change": max(epe_change),
                "warping_error": _mean([r["warping_error"] for r in own]),
                "independent_warping_error": _mean([base[(r["clip"], r["picture"])]["warping_error"] for r in own]),
                "baseline_warping_error": _mean([r["baseline_warping_error"] for r in own]),
                "guide_s": _mean([r["guide_s"] for r in own]),
            })
    return out


def combine(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Several reports of one world as one: their rows (the first of each clip, picture and plan) summarised
    together, so a grid can be measured in parts."""
    worlds = {tuple(report["world"]) for report in reports}
    if len(worlds) != 1:
        raise SystemExit(f"--from-json: the reports measured different worlds: {sorted(worlds)}")
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for report in reports:
        for row in report["rows"]:
            rows.setdefault((row["clip"], row["picture"], row["plan"]), row)
    kept = list(rows.values())
    return {"world": reports[0]["world"], "preset": reports[0]["preset"], "rows": kept,
            "ray": [row for report in reports for row in report["ray"]], "summary": summarise(kept)}


def project(planned: list[PlannedFrame], gpus: int, seconds: dict[str, float]) -> float:
    """Wall time of a plan on ``gpus`` workers when every frame starts as soon as its parent is done and a
    worker is free (keys first in frame order): list scheduling over the plan's forest."""
    finish: dict[int, float] = {}
    free = [0.0] * gpus
    pending = [frame for frame in planned if frame.role != STILL]
    while pending:
        ready = [(finish.get(frame.parent, 0.0) if frame.parent is not None else 0.0, frame.index, frame)
                 for frame in pending if frame.parent is None or frame.parent in finish]
        at, _, frame = min(ready)
        worker = heapq.heappop(free)
        start = max(worker, at)
        finish[frame.index] = start + seconds[frame.role]
        heapq.heappush(free, finish[frame.index])
        pending.remove(frame)
    return max(finish.values(), default=0.0)


def projections(seconds_per_pass: float, frames: int = 48) -> list[dict[str, Any]]:
    """Hours for a ``frames``-frame clip at paper settings (500 steps × 10 recursions) per plan and GPU count."""
    steps, recursions = 500, 10
    still = [True] + [False] * (frames - 1)
    out = []
    for name, overrides in PLANS.items():
        if name.endswith("+warp"):
            continue  # the same passes as without the warp
        values = dict(setting.split("=", 1) for setting in overrides)
        plan = values.get("video.plan", '"independent"').strip('"')
        share = float(values.get("video.warm_start", 0))
        planned = frame_plan(still, plan, key_every=int(values.get("video.key_every", 0)),
                             warm_from=values.get("video.warm_from", '"previous"').strip('"'))
        warm_passes = (steps - warm_start_step(steps, share)) * recursions if share else steps * recursions
        seconds = {KEY: steps * recursions * seconds_per_pass, "warm": warm_passes * seconds_per_pass}
        passes = sum(steps * recursions if f.role == KEY else warm_passes for f in planned if f.role != STILL)
        out.append({"plan": name, "passes": passes,
                    **{f"hours_{gpus}": project(planned, gpus, seconds) / 3600 for gpus in (1, 8, 64)}})
    return out


def markdown(report: dict[str, Any], command: str) -> str:
    lines = [SECTION, "", f"Command (from a clean clone, on this 2-core CPU shared with other jobs): `{command}`", "",
             f"Exact world `{report['preset']}` with `{' '.join(report['world'])}`; every figure is the run's own "
             "evaluation, means over the clips × pictures of each group. Δ are against `independent` on the same "
             "clip and picture; warping error is between consecutive results (lower is steadier).", "",
             "| plan | pictures | runs | passes vs independent | EPE in mask (px) | Δ EPE mean / worst | warp err "
             "| independent's | naive baseline | guide s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in report["summary"]:
        lines.append(
            f"| {s['plan']} | {s['group']} | {s['runs']} | {s['pass_share']:.0%} | {s['epe_edit']:.2f} | "
            f"{s['epe_change']:+.2f} / {s['worst_epe_change']:+.2f} | {s['warping_error']:.4f} | "
            f"{s['independent_warping_error']:.4f} | {s['baseline_warping_error']:.4f} | {s['guide_s']:.0f} |")
    if report["ray"]:
        lines += ["", "Ray on the first clip × picture (guide stage wall s, including Ray's start and each "
                  "worker's model load):", "", "| plan | 1 worker | 2 workers | speed-up |", "|---|---|---|---|"]
        for plan in dict.fromkeys(r["plan"] for r in report["ray"]):
            one, two = (next(r["guide_s"] for r in report["ray"] if r["plan"] == plan and r["workers"] == w)
                        for w in (1, 2))
            lines.append(f"| {plan} | {one:.0f} | {two:.0f} | {one / two:.2f}× |")
    lines += ["", f"Projection, 48-frame clip at `paper` settings, **assumed** {report['seconds_per_pass']} s per "
              "guided pass (no GPU measured), each frame scheduled as soon as its parent is done:", "",
              "| plan | guided passes | hours, 1 GPU | 8 GPUs | 64 GPUs |", "|---|---|---|---|---|"]
    for p in report["projection"]:
        lines.append(f"| {p['plan']} | {p['passes']:,} | {p['hours_1']:.1f} | {p['hours_8']:.2f} | {p['hours_64']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", default=",".join(CLIPS))
    parser.add_argument("--pictures", default=",".join(PICTURES))
    parser.add_argument("--plans", default=",".join(PLANS), help="comma-separated names from the plan table")
    parser.add_argument("--ray", action="store_true", help="also time the keyed plan on Ray with 1 and 2 workers")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a further setting of the world, after the defaults (e.g. model.size=[24,32])")
    parser.add_argument("--seconds-per-pass", type=float, default=0.20)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (Ray workers too): small tensors run fastest on one, and "
                             "1 vs 2 Ray workers then compare one core against two")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--from-json", type=Path, nargs="+", metavar="REPORT",
                        help="measure nothing: tabulate the rows of earlier --json reports of the same world "
                             "(a run and plan measured twice keeps its first)")
    parser.add_argument("--write-benchmarks", action="store_true", help="replace this section of BENCHMARKS.md")
    args = parser.parse_args(argv)
    plans = [name.strip() for name in args.plans.split(",") if name.strip()]
    unknown = [name for name in plans if name not in PLANS]
    if unknown:
        parser.error(f"--plans: unknown plan {unknown[0]!r}; choose from {', '.join(PLANS)}")
    if "independent" not in plans:
        plans.insert(0, "independent")  # every change is measured against it
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by Ray's worker processes
    console = Console()
    if args.from_json:
        report = combine([read_json(path) for path in args.from_json])
    else:
        report = measure(args.clips.split(","), args.pictures.split(","), plans, args.ray, (*WORLD, *args.set),
                         console)
    report["seconds_per_pass"] = args.seconds_per_pass
    report["projection"] = projections(args.seconds_per_pass)
    table = Table(title="frame plans")
    for column in ("plan", "pictures", "passes", "EPE", "Δ EPE", "worst Δ", "warp err", "independent's"):
        table.add_column(column)
    for s in report["summary"]:
        table.add_row(s["plan"], s["group"], f"{s['pass_share']:.0%}", f"{s['epe_edit']:.2f}",
                      f"{s['epe_change']:+.2f}", f"{s['worst_epe_change']:+.2f}", f"{s['warping_error']:.4f}",
                      f"{s['independent_warping_error']:.4f}")
    console.print(table)
    command = "python -m benchmarks.clip_plan " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    if args.json:
        write_json(args.json, report)
    if args.write_benchmarks:
        write_section(ROOT / "BENCHMARKS.md", markdown(report, command.strip()), SECTION)


if __name__ == "__main__":
    main()
