"""Flow-extraction speed: frames per second of each estimator on the sample clips.

Extraction is the pipeline's "flow" stage: the flow from frame 0 to every later frame
(``mtransfer.video_flow.video_flows``, reference "first"). Each estimator gets one untimed warm-up pair,
then the whole clip is timed between two device synchronisations; frames/s counts estimated pairs.
RAFT runs with random weights (speed does not depend on them; its end-point error then means nothing,
and the report marks it so). Where a clip has ground truth (``<clip>_flow.npz``) the mean end-point
error is reported too. Usage::

    python -m benchmarks.flow_fps [VIDEO ...] [--estimators raft-large,raft-small,tvl1] [--device cuda]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from mtransfer.bench.measure import device_info, run_script, timed
from mtransfer.errors import MtransferError
from mtransfer.estimators import ESTIMATORS, load_named_estimator
from mtransfer.files import write_json
from mtransfer.flows import resize_flow
from mtransfer.video import read_video
from mtransfer.video_flow import video_flows

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_videos"
DEFAULT_ESTIMATORS = ("raft-large", "raft-small", "tvl1")


def ground_truth(video: Path, size: tuple[int, int], count: int) -> torch.Tensor | None:
    """The clip's true flows from frame 0 to frames 1..count-1, resized to ``size``; None without a file."""
    path = video.with_name(f"{video.stem}_flow.npz")
    if not path.is_file():
        return None
    flows = torch.from_numpy(np.load(path)["flows"][: count - 1])
    return flows if tuple(flows.shape[-2:]) == size else resize_flow(flows, size)


def measure_clip(
    video: Path,
    estimator_name: str,
    device: torch.device,
    *,
    max_frames: int | None = None,
    short_side: int | None = None,
    batch_size: int = 4,
    iterations: int | None = None,
) -> dict[str, Any]:
    """Frames/s (and end-point error where known) of one estimator on one clip."""
    frames, info = read_video(video, max_frames=max_frames, size=short_side)
    if frames.shape[0] < 3:
        raise MtransferError(
            f"{video}: needs at least 3 frames (one warm-up pair, then timed pairs), has {frames.shape[0]}"
        )
    weights = "random" if estimator_name.startswith("raft") else None
    estimator = load_named_estimator(estimator_name, device=device, weights=weights, iterations=iterations)
    frames = frames.to(device)
    with torch.no_grad():
        estimator(frames[:1], frames[1:2])  # warm-up: kernel selection, allocator, lazy imports
    flows, seconds = timed(
        lambda: torch.stack([flow for _, flow in video_flows(frames, estimator, batch_size=batch_size)]), device
    )
    truth = ground_truth(video, tuple(frames.shape[-2:]), frames.shape[0])
    epe = None if truth is None else float((flows.cpu() - truth).norm(dim=1).mean())
    return {
        "video": video.name,
        "estimator": estimator_name,
        "random_weights": weights == "random",
        "frames": int(frames.shape[0]),
        "size": [info.height, info.width],
        "seconds": seconds,
        "fps": (frames.shape[0] - 1) / seconds,
        "epe": epe,
    }


def run(
    videos: Sequence[Path],
    estimators: Sequence[str],
    device: torch.device,
    *,
    max_frames: int | None = None,
    short_side: int | None = None,
    batch_size: int = 4,
    iterations: int | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    console = console or Console(stderr=True)
    rows = []
    for video in videos:
        for name in estimators:
            console.print(f"{video.name}: {name}", highlight=False)
            rows.append(
                measure_clip(
                    video,
                    name,
                    device,
                    max_frames=max_frames,
                    short_side=short_side,
                    batch_size=batch_size,
                    iterations=iterations,
                )
            )
    return {
        "benchmark": "flow_fps",
        "device": device_info(device),
        "batch_size": batch_size,
        "iterations": iterations,
        "results": rows,
    }


def report_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"flow extraction on {report['device']['name']} ({report['device']['type']})")
    for column in ("video", "estimator", "frames", "size", "frames/s", "EPE px"):
        table.add_column(column, justify="left" if column in ("video", "estimator") else "right")
    for row in report["results"]:
        epe = (
            "n/a"
            if row["epe"] is None
            else f"{row['epe']:.2f}" + (" (random weights)" if row["random_weights"] else "")
        )
        table.add_row(
            row["video"],
            row["estimator"],
            str(row["frames"]),
            "x".join(map(str, row["size"])),
            f"{row['fps']:.3g}",
            epe,
        )
    return table


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flow_fps", description=__doc__.split("\n")[0])
    parser.add_argument("videos", nargs="*", type=Path, help="clips to time (default: sample_videos/*.mp4)")
    parser.add_argument(
        "--estimators", default=",".join(DEFAULT_ESTIMATORS), help=f"comma-separated, from {', '.join(ESTIMATORS)}"
    )
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto")
    parser.add_argument("--max-frames", type=int, help="read at most this many frames per clip")
    parser.add_argument("--short-side", type=int, help="resize frames so the short side has this many pixels")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--iterations", type=int, help="each estimator's refinement steps (default: its own)")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    videos = args.videos or sorted(SAMPLE_DIR.glob("*.mp4"))
    if not videos:
        raise MtransferError(f"{SAMPLE_DIR}: no .mp4 clips; pass VIDEO paths or run sample_videos/make_samples.py")
    estimators = [name.strip() for name in args.estimators.split(",") if name.strip()]
    for name in estimators:
        if name not in ESTIMATORS:
            raise MtransferError(f"unknown flow estimator {name!r}; choose from {', '.join(ESTIMATORS)}")
    report = run(
        videos,
        estimators,
        device,
        max_frames=args.max_frames,
        short_side=args.short_side,
        batch_size=args.batch_size,
        iterations=args.iterations,
    )
    Console(width=max(Console().width, 100)).print(report_table(report))
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    run_script(main)
