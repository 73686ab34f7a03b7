"""What spreading a clip's frames over Ray workers costs and what it buys.

Measures, on the same clip and the same aligned flows (one ``--flow-only`` run copied per executor), the
guide + encode wall time of ``mtransfer run`` with the local executor and with the Ray executor (1 and
``--workers`` actors), and from the run manifests each frame's edit time and *dispatch* time (from the
driver handing a frame out to holding its result, minus the worker's own time). A worker's first frame
also waits for its process to start, so the per-frame figure is the median. Ray's fixed cost (start,
actor processes, each worker loading its models) is what is left of the wall-time difference.

Then it projects a 48-frame clip at the paper's settings (47 edits, frame 0 is the source; 5,000 guided
passes each) on 1, 8 and 64 GPUs::

    wall(N) = fixed + inversion + ceil(47 / N) * (5000 * seconds_per_pass + dispatch)

``--seconds-per-pass`` should be a GPU's measured ``step_s`` (``python -m benchmarks.guided_step``); its
default is an assumption derived from the FLOP count in BENCHMARKS.md, and the output says so. Usage::

    python -m benchmarks.scaling [--frames 5] [--workers 2] [--seconds-per-pass S] [--json out.json]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from statistics import mean, median
from typing import Any

from rich.console import Console

from mtransfer.bench.measure import run_script
from mtransfer.files import write_json
from mtransfer.pipeline.manifest import Manifest
from mtransfer.pipeline.runner import RunRequest, run_pipeline

ROOT = Path(__file__).resolve().parent.parent
VIDEO = ROOT / "sample_videos" / "pan.mp4"
IMAGE = ROOT / "sample_videos" / "cat.png"

PAPER_EDITS = 47  # a 48-frame clip; frame 0 is the source image itself
PAPER_PASSES = 5000  # 500 DDIM steps x 10 recursions
PASS_TFLOP = 8.1  # one guided pass at 512x512, counted with FlopCounterMode (BENCHMARKS.md)
INVERSION_TFLOP = 500 * PASS_TFLOP * 0.33 / 2 / 3  # 500 UNet forwards, batch 1 (UNet: 33 % of a CFG pass, fwd+bwd)
ASSUMED_TFLOPS = 40.0  # assumed sustained fp32/TF32 throughput of one H100 on the pass; NOT a measurement
GPU_COUNTS = (1, 8, 64)


def timed_run(folder: Path, overrides: tuple[str, ...], quiet: Console) -> tuple[float, dict[str, dict]]:
    started = time.perf_counter()
    run_pipeline(RunRequest(VIDEO, IMAGE, "tiny", overrides, folder), quiet)
    wall = time.perf_counter() - started
    frames = Manifest.open(folder).stage("guide")["frames"]
    return wall, {name: record for name, record in frames.items() if not record.get("still")}


def measure(frames: int, workers: int, work: Path) -> dict[str, Any]:
    """Wall times and per-frame figures of local, Ray with 1 worker and Ray with ``workers``."""
    quiet = Console(file=open(os.devnull, "w"))
    base = ("video.max_frames=%d" % frames,)
    aligned = work / "aligned"
    run_pipeline(RunRequest(VIDEO, IMAGE, "tiny", base, aligned, flow_only=True), quiet)
    runs: dict[str, Any] = {}
    for name, extra in (
        ("local", ()),
        ("ray-1", ('execution.executor="ray"', "execution.workers=1")),
        (f"ray-{workers}", ('execution.executor="ray"', f"execution.workers={workers}")),
    ):
        folder = Path(shutil.copytree(aligned, work / name))
        wall, records = timed_run(folder, base + extra, quiet)
        runs[name] = {
            "wall_s": round(wall, 2),
            "edits": len(records),
            "edit_s_mean": round(mean(r["seconds"] for r in records.values()), 3),
            "dispatch_s_median": round(median(r.get("dispatch_s", 0.0) for r in records.values()), 4),
            "workers_used": sorted({r.get("worker", "local") for r in records.values()}),
        }
    local, one = runs["local"], runs["ray-1"]
    fixed = one["wall_s"] - local["wall_s"] - one["edits"] * one["dispatch_s_median"]
    return {"runs": runs, "ray_fixed_overhead_s": round(fixed, 2), "dispatch_s_per_frame": one["dispatch_s_median"]}


def project(seconds_per_pass: float, fixed: float, dispatch: float) -> list[dict[str, Any]]:
    """Wall time of the paper-setting clip on each GPU count; the inversion runs at the pass's FLOP rate."""
    inversion = INVERSION_TFLOP * seconds_per_pass / PASS_TFLOP
    edit = PAPER_PASSES * seconds_per_pass
    walls = {gpus: fixed + inversion + math.ceil(PAPER_EDITS / gpus) * (edit + dispatch) for gpus in GPU_COUNTS}
    return [
        {"gpus": gpus, "rounds": math.ceil(PAPER_EDITS / gpus), "wall_s": round(wall, 1), "hours": round(wall / 3600, 3),
         "speedup": round(walls[1] / wall, 2), "efficiency": round(walls[1] / wall / gpus, 3)}
        for gpus, wall in walls.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5, help="clip frames (frame 0 is not edited)")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers for the second Ray run")
    parser.add_argument("--seconds-per-pass", type=float, default=None,
                        help="measured GPU step_s of one guided pass at the paper's settings")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="mtransfer-scaling-") as work:
        measured = measure(args.frames, args.workers, Path(work))
    for name, run in measured["runs"].items():
        console.print(f"{name:>6}: {run['wall_s']:7.1f} s wall for {run['edits']} edits, edit {run['edit_s_mean']:.2f} s "
                      f"mean, dispatch {run['dispatch_s_median'] * 1000:.1f} ms/frame (median), workers {run['workers_used']}")
    console.print(f"Ray fixed overhead: {measured['ray_fixed_overhead_s']:.1f} s; dispatch "
                  f"{measured['dispatch_s_per_frame'] * 1000:.1f} ms per frame")
    assumed = args.seconds_per_pass is None
    seconds_per_pass = PASS_TFLOP / ASSUMED_TFLOPS if assumed else args.seconds_per_pass
    source = (f"ASSUMED {seconds_per_pass:.3f} s/pass ({PASS_TFLOP} TFLOP at {ASSUMED_TFLOPS:g} TFLOP/s; no GPU measured)"
              if assumed else f"measured {seconds_per_pass:.3f} s/pass")
    rows = project(seconds_per_pass, max(measured["ray_fixed_overhead_s"], 0.0), measured["dispatch_s_per_frame"])
    console.print(f"48-frame clip at the paper's settings, {source}:")
    for row in rows:
        console.print(f"  {row['gpus']:>3} GPU(s): {row['rounds']:>2} rounds, {row['hours']:.2f} h, "
                      f"speed-up {row['speedup']:.1f}x, efficiency {row['efficiency']:.0%}")
    if args.json:
        write_json(args.json, {**measured, "seconds_per_pass": seconds_per_pass, "seconds_per_pass_assumed": assumed,
                               "projection": rows})


if __name__ == "__main__":
    run_script(main)
