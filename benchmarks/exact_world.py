"""Exact-world sweep: does guidance land on the requested member of the offline demo's family?

The ``offline-demo`` preset's model knows one picture under every whole-pixel shift within its
``family_radius``, so an edit by ``translate(dx, dy)`` succeeds only by ending on the member shifted by
exactly ``(dx, dy)``. For each picture (textured ones from ``skimage.data`` and the bundled cat) and
each of the eight directions at magnitudes 1..6 px, the edit is run as ``mtransfer edit IMAGE --flow
'translate(dx, dy)' --pipeline offline-demo`` would run it (same preset, same code path; the source is
prepared once per picture), the result is matched to the nearest family member (mean absolute
difference), and the report gives the share landing exactly, the mean miss in pixels (distance between
the landed and the requested shift), the guided passes and seconds per edit. The family holds only
shifts (the preset's ``family_rotations``/``family_scales`` are the identity), so only shifts are swept.
Usage::

    python -m benchmarks.exact_world [--pictures astronaut,cat] [--magnitudes 1,3,6] [--size 48x64]
        [--set guidance.steps=20] [--workers 2] [--write-benchmarks] [--json report.json]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from mtransfer.app import Editor, load_settings
from mtransfer.app.models import family_translations
from mtransfer.bench.measure import run_script
from mtransfer.errors import MtransferError
from mtransfer.files import load_image, write_bytes, write_json
from mtransfer.flows.spec import load_flow

ROOT = Path(__file__).resolve().parent.parent
SKIMAGE_PICTURES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
PICTURES = (*SKIMAGE_PICTURES, "cat")
DIRECTIONS = [(ux, uy) for uy in (-1, 0, 1) for ux in (-1, 0, 1) if (ux, uy) != (0, 0)]
SECTION = "## Exact-world sweep"


def picture_path(name: str, folder: Path) -> Path:
    """A PNG of the named picture: ``cat`` is the bundled one, others come from ``skimage.data``."""
    if name == "cat":
        return ROOT / "sample_videos" / "cat.png"
    if name not in SKIMAGE_PICTURES:
        raise MtransferError(f"unknown picture {name!r}; choose from {', '.join(PICTURES)}")
    import skimage.data

    path = folder / f"{name}.png"
    Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB").save(path)
    return path


def sweep_picture(job: tuple[str, Path, list[tuple[int, int]], list[str]]) -> list[dict[str, Any]]:
    """Every requested shift of one picture, edited with the preset, each matched to its nearest member."""
    name, path, shifts, overrides = job
    torch.set_num_threads(1)  # one process per picture; tiny tensors run fastest on one thread each
    run = load_settings("offline-demo", overrides)
    source = load_image(path, size=run.model.size)
    editor = Editor.load(run, source, torch.device("cpu"))
    members = family_translations(*source.shape[-2:], run.model)
    state = editor.prepare(source)
    rows = []
    for dx, dy in shifts:
        if (dx, dy) not in members:
            raise MtransferError(f"shift ({dx}, {dy}) is not in the family (radius {run.model.family_radius})")
        started = time.perf_counter()
        result = editor.edit(state, load_flow(f"translate({dx}, {dy})", *source.shape[-2:]))
        seconds = time.perf_counter() - started
        distance = (editor.backend.images - result.image[None]).abs().flatten(1).mean(1)
        landed = members[int(distance.argmin())]
        rows.append({
            "picture": name, "requested": [dx, dy], "landed": list(landed),
            "miss_px": math.dist(landed, (dx, dy)), "residual": float(distance.min()),
            "passes": len(result.losses), "seconds": seconds, "diverged": result.diverged,
        })
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per picture and a total: share landing exactly, mean miss, passes and seconds per edit."""
    groups = {name: [r for r in rows if r["picture"] == name] for name in dict.fromkeys(r["picture"] for r in rows)}
    groups["all"] = rows
    return [{
        "picture": name,
        "edits": len(group),
        "exact": sum(r["miss_px"] == 0 for r in group) / len(group),
        "mean_miss_px": sum(r["miss_px"] for r in group) / len(group),
        "passes": sum(r["passes"] for r in group) / len(group),
        "seconds": sum(r["seconds"] for r in group) / len(group),
    } for name, group in groups.items()]


def run(pictures: Sequence[str], magnitudes: Sequence[int], overrides: list[str], workers: int) -> dict[str, Any]:
    settings = load_settings("offline-demo", overrides)
    shifts = [(m * ux, m * uy) for m in magnitudes for ux, uy in DIRECTIONS]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        jobs = [(name, picture_path(name, Path(folder)), shifts, overrides) for name in pictures]
        if workers > 1:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                per_picture = pool.map(sweep_picture, jobs)
        else:
            per_picture = [sweep_picture(job) for job in jobs]
    rows = [row for picture_rows in per_picture for row in picture_rows]
    return {
        "benchmark": "exact_world",
        "size": list(settings.model.size),
        "family_radius": settings.model.family_radius,
        "overrides": overrides,
        "guidance": {key: getattr(settings.guidance, key) for key in
                     ("steps", "recursions", "guidance_weight", "flow_weight", "color_weight", "clip_grad")},
        "magnitudes": list(magnitudes),
        "wall_s": time.perf_counter() - started,
        "summary": summarise(rows),
        "misses": [r for r in rows if r["miss_px"] > 0],
        "results": rows,
    }


def report_table(report: dict[str, Any]) -> Table:
    size = "x".join(map(str, report["size"]))
    table = Table(title=f"exact world at {size}, shifts of {','.join(map(str, report['magnitudes']))} px in 8 directions")
    for column in ("picture", "edits", "exact", "mean miss px", "passes", "s/edit"):
        table.add_column(column, justify="left" if column == "picture" else "right")
    for line in report["summary"]:
        table.add_row(line["picture"], str(line["edits"]), f"{100 * line['exact']:.0f} %",
                      f"{line['mean_miss_px']:.2f}", f"{line['passes']:.0f}", f"{line['seconds']:.1f}")
    return table


def markdown(report: dict[str, Any]) -> str:
    """The BENCHMARKS.md section for this report."""
    g = report["guidance"]
    size = "x".join(map(str, report["size"]))
    lines = [
        SECTION, "",
        "`python -m benchmarks.exact_world` edits each picture by `translate(dx, dy)` with the `offline-demo` "
        "preset and matches the result to the nearest member of the exact model's family (the picture under "
        f"every whole-pixel shift within ±{report['family_radius']} px); *exact* means it ended on the member "
        "shifted by exactly (dx, dy). Shifts: the eight directions at magnitudes "
        f"{', '.join(map(str, report['magnitudes']))} px. Working size {size}, {g['steps']} steps × "
        f"{g['recursions']} recursions, guidance weight {g['guidance_weight']:g}, flow weight {g['flow_weight']:g}, "
        f"colour weight {g['color_weight']:g}, clip {g['clip_grad']:g}"
        + (f"; overrides {', '.join(report['overrides'])}" if report["overrides"] else "")
        + f". CPU, one thread per picture, {report['wall_s'] / 60:.1f} min in all.",
        "",
        "| picture | edits | exact | mean miss (px) | passes/edit | s/edit |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for line in report["summary"]:
        lines.append(f"| {line['picture']} | {line['edits']} | {100 * line['exact']:.0f} % | "
                     f"{line['mean_miss_px']:.2f} | {line['passes']:.0f} | {line['seconds']:.1f} |")
    misses = ", ".join(f"{r['picture']} {tuple(r['requested'])}→{tuple(r['landed'])}" for r in report["misses"])
    lines += ["", f"Misses (requested→landed): {misses}." if misses else "No misses.", ""]
    return "\n".join(lines)


def write_section(path: Path, section: str, heading: str = SECTION) -> None:
    """Replace a benchmark's section of BENCHMARKS.md (from ``heading`` to the next ``## ``; appended if
    absent), leaving the rest as it was."""
    text = path.read_text()
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("" if end < 0 else text[end:])
    write_bytes(path, text.encode())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.exact_world", description=__doc__.split("\n")[0])
    parser.add_argument("--pictures", default=",".join(PICTURES), help=f"comma-separated, from {', '.join(PICTURES)}")
    parser.add_argument("--magnitudes", default="1,2,3,4,5,6", help="shift lengths in px along each direction")
    parser.add_argument("--size", help="working size HEIGHTxWIDTH (default: the preset's)")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        help="override a preset value, e.g. guidance.steps=20 (repeatable)")
    parser.add_argument("--workers", type=int, default=2, help="pictures edited in parallel (one thread each)")
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument("--write-benchmarks", action="store_true", help=f"put the table into BENCHMARKS.md ({SECTION!r})")
    args = parser.parse_args(argv)
    pictures = [name.strip() for name in args.pictures.split(",") if name.strip()]
    try:
        magnitudes = [int(m) for m in args.magnitudes.split(",")]
    except ValueError:
        raise MtransferError(f"--magnitudes: expected whole pixels such as 1,2,3, got {args.magnitudes!r}") from None
    overrides = list(args.settings)
    if args.size:
        height, _, width = args.size.partition("x")
        overrides.append(f"model.size=[{height}, {width}]")
    report = run(pictures, magnitudes, overrides, max(1, args.workers))
    Console(width=max(Console().width, 100)).print(report_table(report))
    if args.json:
        write_json(args.json, report)
    if args.write_benchmarks:
        write_section(ROOT / "BENCHMARKS.md", markdown(report))
    return report


if __name__ == "__main__":
    run_script(main)
