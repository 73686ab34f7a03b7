"""One command for the few minutes a GPU is available: everything the CUDA path needs measured or checked.

``python -m benchmarks.gpu_acceptance`` on a CUDA machine (no weights needed) runs, each step on its own
so one failure does not lose the rest:

1. the guided-step benchmark (``mtransfer.bench.guided_step``) at 512² over the speed switches;
2. its measured peak memory per switch set against ``mtransfer bench --memory`` (fake tensors);
3. ``mtransfer run --pipeline tiny`` on CUDA twice: both finish and give the same frames;
4. the same run on the Ray executor over all GPUs (one worker per GPU): the same frames again;
5. flow extraction frames/s (``benchmarks.flow_fps``) on the sample clips.

It writes one JSON report and the Markdown rows for BENCHMARKS.md. ``--dry-run`` runs the same code on
the CPU at tiny sizes (CI runs it, so the script cannot rot); its figures only show that it works.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from mtransfer.bench.guided_step import GPU_VARIANTS, BenchSettings, run_benchmark
from mtransfer.bench.measure import device_info
from mtransfer.bench.memory import GIB, memory_report
from mtransfer.files import atomic_path, write_json

ROOT = Path(__file__).resolve().parent.parent
CLIP, PICTURE = ROOT / "sample_videos" / "pan.mp4", ROOT / "sample_videos" / "cat.png"
DRY_VARIANTS = ("baseline", "checkpoint")
DRY_RUN = ("--frames", "2", "--steps", "1", "--set", "execution.workers=1")
"""The dry run's clip: two frames (one edit), one step, one Ray worker: the same code in seconds."""


def _step(report: dict[str, Any], name: str, work: Callable[[], dict[str, Any]], console: Console) -> None:
    """Run one step, recording its result or its failure and its wall time."""
    console.print(f"[bold]{name}[/] ...", highlight=False)
    started = time.perf_counter()
    try:
        result = {"status": "ok", **work()}
    except Exception as exc:  # noqa: BLE001 - one failed step must not lose the others' figures
        result = {"status": "failed", "error": " ".join(str(exc).split())[:400] or type(exc).__name__}
        console.print(f"[red]{name} failed:[/] {result['error']}", highlight=False)
    result["wall_s"] = time.perf_counter() - started
    report["steps"][name] = result


def guided_step(device: str, dry: bool) -> dict[str, Any]:
    settings = BenchSettings(
        device=device, size=64 if dry else 512, variants=DRY_VARIANTS if dry else GPU_VARIANTS,
        repeats=1 if dry else 2, warmup=0 if dry else 1, model="tiny" if dry else "real",
        raft="raft-small" if dry else "raft-large", run_steps=1, run_recursions=1,
    )
    return {"report": run_benchmark(settings, Console(stderr=True, quiet=True))}


def memory_check(guided: dict[str, Any], dry: bool) -> dict[str, Any]:
    """Measured peaks of the timed variants against the fake-tensor figure of the same pass.

    On CUDA the measurement is ``max_memory_allocated`` (weights included) against the whole peak; on the
    CPU it is the resident set's rise (weights excluded) against what the pass itself adds."""
    bench = guided["report"]
    size, model = bench["settings"]["size"], bench["settings"]["model"]
    variants = [v for v in bench["variants"] if v.get("status") == "ok"]
    figures = memory_report(size, [1], [v["variant"] for v in variants], model=model, raft=bench["settings"]["raft"])
    cuda = bench["device"]["type"] == "cuda"
    rows = []
    for variant, figure in zip(variants, figures["rows"]):
        predicted = figure["peak"] if cuda else figure["saved_for_backward"] + figure["transient"]
        measured = variant["peak_memory_bytes"]
        rows.append({"variant": variant["variant"], "measured_bytes": measured, "predicted_bytes": predicted,
                     "ratio": None if not measured else measured / predicted, "metric": variant["memory_metric"]})
    return {"rows": rows}


def _frames(folder: Path) -> dict[str, str]:
    """SHA-256 of every PNG a run folder holds, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.png"))}


def _mtransfer_run(out: Path, device: str, *extra: str) -> float:
    started = time.perf_counter()
    dry = DRY_RUN if device == "cpu" else ()
    done = subprocess.run(
        [sys.executable, "-m", "mtransfer", "run", str(CLIP), "--onto", str(PICTURE), "--pipeline", "tiny",
         "--device", device, "--out", str(out), "--set", "evaluation.enabled=false", *dry, *extra],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    if done.returncode:
        raise RuntimeError(f"mtransfer run exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - started


def run_twice(device: str, work: Path) -> dict[str, Any]:
    first, second = work / "first", work / "second"
    seconds = [_mtransfer_run(first, device), _mtransfer_run(second, device)]
    frames = _frames(first)
    if not frames:
        raise RuntimeError(f"{first}: the run wrote no PNG frames")
    return {"seconds": seconds, "frames": len(frames), "same_frames": frames == _frames(second)}


def ray_run(device: str, work: Path) -> dict[str, Any]:
    """The tiny run on Ray (one worker per GPU on CUDA); its frames against the local run's."""
    out = work / "ray"
    seconds = _mtransfer_run(out, device, "--executor", "ray")
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    return {"seconds": seconds, "gpus": gpus, "same_frames_as_local": _frames(out) == _frames(work / "first")}


def flow_fps(device: str, dry: bool) -> dict[str, Any]:
    from benchmarks import flow_fps as fps

    videos = [CLIP] if dry else sorted((ROOT / "sample_videos").glob("*.mp4"))
    estimators = ("raft-small",) if dry else ("raft-large", "raft-small")
    report = fps.run(videos, estimators, torch.device(device), max_frames=4 if dry else None,
                     short_side=64 if dry else None, console=Console(stderr=True, quiet=True))
    return {"results": report["results"]}


def _gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / GIB:.2f}"


def markdown(report: dict[str, Any]) -> str:
    """The rows to paste into BENCHMARKS.md."""
    steps = report["steps"]
    lines = [f"Device: {report['device']['name']} ({report['device']['type']}), torch {report['device']['torch']}, "
             f"CUDA {report['device']['cuda']}; command: `{report['command']}`", ""]
    guided = steps.get("guided_step", {})
    memory = {row["variant"]: row for row in steps.get("memory", {}).get("rows", [])}
    if guided.get("status") == "ok":
        lines += ["| variant | step s | speed-up | measured peak GiB | --memory GiB | measured / --memory |",
                  "|---|---|---|---|---|---|"]
        for v in guided["report"]["variants"]:
            if v.get("status") != "ok":
                lines.append(f"| {v['variant']} | failed: {v['error'][:80]} | | | | |")
                continue
            row = memory.get(v["variant"], {})
            cells = [_gib(row.get("measured_bytes")), _gib(row.get("predicted_bytes")),
                     "n/a" if row.get("ratio") is None else f"{row['ratio']:.2f}"]
            lines.append(f"| {v['variant']} | {v['step_s']:.3g} | {v['speedup']:.2f} | {' | '.join(cells)} |")
        lines.append("")
    for name, label in (("run_twice", "`mtransfer run --pipeline tiny` twice"), ("ray", "Ray executor")):
        step = steps.get(name, {})
        if step.get("status") != "ok":
            lines.append(f"- {label}: {step.get('status', 'not run')} {step.get('error', '')}".rstrip())
        elif name == "run_twice":
            lines.append(f"- {label}: {step['frames']} PNGs, {step['seconds'][0]:.1f} s and {step['seconds'][1]:.1f} s, "
                         f"same frames: {'yes' if step['same_frames'] else 'NO'}")
        else:
            lines.append(f"- {label} on {step['gpus']} GPU(s): {step['seconds']:.1f} s, same frames as the local run: "
                         f"{'yes' if step['same_frames_as_local'] else 'NO'}")
    for row in steps.get("flow_fps", {}).get("results", []):
        lines.append(f"- flow {row['estimator']} on {row['video']} ({row['size'][0]}x{row['size'][1]}, "
                     f"{row['frames']} frames): {row['fps']:.2f} frames/s")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_acceptance", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes (CI)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/gpu-acceptance.json"))
    parser.add_argument("--markdown", type=Path, default=Path("benchmarks/results/gpu-acceptance.md"))
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    if not args.dry_run and not torch.cuda.is_available():
        console.print("[red]error:[/] no CUDA GPU is visible to torch; use --dry-run to check the script on the CPU")
        raise SystemExit(2)
    device = "cpu" if args.dry_run else "cuda"
    report: dict[str, Any] = {
        "benchmark": "gpu_acceptance", "dry_run": args.dry_run, "device": device_info(torch.device(device)),
        "command": " ".join(["python -m benchmarks.gpu_acceptance", *(argv if argv is not None else sys.argv[1:])]),
        "steps": {},
    }
    with tempfile.TemporaryDirectory(prefix="mtransfer-acceptance-") as folder:
        work = Path(folder)
        _step(report, "guided_step", lambda: guided_step(device, args.dry_run), console)
        if report["steps"]["guided_step"]["status"] == "ok":
            _step(report, "memory", lambda: memory_check(report["steps"]["guided_step"], args.dry_run), console)
        _step(report, "run_twice", lambda: run_twice(device, work), console)
        _step(report, "ray", lambda: ray_run(device, work), console)
        _step(report, "flow_fps", lambda: flow_fps(device, args.dry_run), console)
    write_json(args.json, report)
    text = markdown(report)
    with atomic_path(args.markdown) as path:
        Path(path).write_text(text)
    Console().print(text, highlight=False, markup=False)
    failed = [name for name, step in report["steps"].items() if step["status"] != "ok"]
    if failed:
        console.print(f"[red]failed steps:[/] {', '.join(failed)} (see {args.json})", highlight=False)
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
