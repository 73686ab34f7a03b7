"""Exact-world sweep: does guidance land on the requested member of the offline demo's family?

The ``offline-demo`` preset's model knows one picture under every whole-pixel shift within its
``family_radius``, so an edit by ``translate(dx, dy)`` succeeds only by ending on the member shifted by
exactly ``(dx, dy)``. For each picture (textured ones from ``skimage.data`` and the bundled cat) and
each of the eight directions at magnitudes 1..6 px, the edit is run as ``mtransfer edit IMAGE --flow
'translate(dx, dy)' --pipeline offline-demo`` would run it (same preset, same code path; the source is
prepared once per picture), the result is matched to the nearest family member (mean absolute
difference), and the report gives the share landing exactly, the mean miss in pixels (mean distance
between where the landed and the requested motion send each pixel), the guided passes and seconds per
edit. The preset's family holds only shifts; ``--turns``/``--zooms`` add turns about the centre and zooms
to the family (``model.family_rotations``/``family_scales``, every combination with the shifts) and
sweep them too. With ``--compare``, each candidate of ``CANDIDATES`` (the preset's guidance values and variations of
them) edits the same pictures and shifts instead, one line per candidate, to choose the preset's values.
Usage::

    python -m benchmarks.exact_world [--pictures astronaut,cat] [--magnitudes 1,3,6] [--size 48x64]
        [--set guidance.steps=20] [--workers 2] [--write-benchmarks] [--json report.json]
    python -m benchmarks.exact_world --compare --pictures rocket,chelsea,astronaut --magnitudes 6
    python -m benchmarks.exact_world --turns 3 --zooms 0.95,1.05 --magnitudes 2 --set model.family_radius=2
"""

from __future__ import annotations

import argparse
import itertools
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
from mtransfer.diffusion.exact import similarity_matrix
from mtransfer.errors import MtransferError
from mtransfer.files import load_image, write_bytes, write_json
from mtransfer.flows.elementary import homography
from mtransfer.flows.spec import load_flow

ROOT = Path(__file__).resolve().parent.parent
SKIMAGE_PICTURES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
PICTURES = (*SKIMAGE_PICTURES, "cat")
DIRECTIONS = [(ux, uy) for uy in (-1, 0, 1) for ux in (-1, 0, 1) if (ux, uy) != (0, 0)]
SECTION = "## Exact-world sweep"
SETTINGS_SECTION = "## Exact-world settings"
# Candidate guidance settings for the settings comparison: the preset's values ("preset") and one or two
# changes each to what decides whether the walk from member to member reaches the requested shift (see
# BENCHMARKS.md): recursions per step, the clip, the guidance weight, and the family's extent.
# The preset's clip was 200 when BENCHMARKS.md's table was measured ("clip 200" here), and 100 after it.
CANDIDATES = {
    "preset": [],
    "clip 200": ["guidance.clip_grad=200"],
    "clip 200, 3 recursions": ["guidance.clip_grad=200", "guidance.recursions=3"],
    "clip 200, 34 steps x 3 rec.": ["guidance.clip_grad=200", "guidance.steps=34", "guidance.recursions=3"],
    "clip 400": ["guidance.clip_grad=400"],
    "clip 200, weight 30000": ["guidance.clip_grad=200", "guidance.guidance_weight=30000"],
    "clip 200, family radius 8": ["guidance.clip_grad=200", "model.family_radius=8"],
}


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


Motion = tuple[float, float, float, float]
"""A member of the exact model's family: ``(zoom factor, degrees, dx, dy)``, composed as ``motion_family`` does."""


def shift(dx: float, dy: float) -> Motion:
    return (1.0, 0.0, dx, dy)


def family_motions(height: int, width: int, model: Any) -> list[Motion]:
    """The motions of the exact model's members, in ``motion_family``'s order."""
    return [(scale, degrees, dx, dy) for scale, degrees, (dx, dy) in itertools.product(
        model.family_scales, model.family_rotations, family_translations(height, width, model))]


def motion_label(motion: Motion) -> str:
    """The ``--flow`` text of a motion: its zoom, turn and shift, each only when it moves something."""
    scale, degrees, dx, dy = motion
    parts = ([f"scale({scale:g})"] if scale != 1 else []) + ([f"rotate({degrees:g})"] if degrees else []) \
        + ([f"translate({dx:g}, {dy:g})"] if dx or dy else [])
    return " + ".join(parts) or "identity"


def motion_flow(motion: Motion, height: int, width: int) -> torch.Tensor:
    """The displacement ``(2, H, W)`` the member with this motion has against the source."""
    return homography(height, width, similarity_matrix(height, width, *motion))


def sweep_picture(job: tuple[str, Path, list[Motion], list[str]]) -> list[dict[str, Any]]:
    """Every requested motion of one picture, edited with the preset (the flow as ``motion_label`` writes
    it, as ``mtransfer edit --flow`` reads it), each matched to its nearest member."""
    name, path, motions, overrides = job
    run = load_settings("offline-demo", overrides)
    source = load_image(path, size=run.model.size)
    height, width = source.shape[-2:]
    editor = Editor.load(run, source, torch.device("cpu"))
    members = family_motions(height, width, run.model)
    state = editor.prepare(source)
    rows = []
    for motion in motions:
        if motion not in members:
            raise MtransferError(f"{motion_label(motion)} is not a member of the family (radius "
                                 f"{run.model.family_radius}, turns {run.model.family_rotations}, zooms {run.model.family_scales})")
        started = time.perf_counter()
        result = editor.edit(state, load_flow(motion_label(motion), height, width))
        seconds = time.perf_counter() - started
        distance = (editor.backend.images - result.image[None]).abs().flatten(1).mean(1)
        landed = members[int(distance.argmin())]
        miss = (motion_flow(landed, height, width) - motion_flow(motion, height, width)).norm(dim=0).mean()
        rows.append({
            "picture": name, "requested": list(motion), "landed": list(landed),
            "miss_px": float(miss), "residual": float(distance.min()),
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


def requested_motions(magnitudes: Sequence[int], turns: Sequence[float] = (), zooms: Sequence[float] = ()) -> list[Motion]:
    """Shifts in the eight directions at each magnitude, then turns both ways by each angle, then each zoom."""
    return ([shift(m * ux, m * uy) for m in magnitudes for ux, uy in DIRECTIONS]
            + [(1.0, sign * degrees, 0, 0) for degrees in turns for sign in (1, -1)]
            + [(zoom, 0.0, 0, 0) for zoom in zooms])


def family_overrides(turns: Sequence[float], zooms: Sequence[float]) -> list[str]:
    """Preset overrides that put the requested turns and zooms (and the identity) into the family."""
    overrides = []
    if turns:
        overrides.append(f"model.family_rotations={sorted({0.0, *turns, *(-t for t in turns)})}")
    if zooms:
        overrides.append(f"model.family_scales={sorted({1.0, *zooms})}")
    return overrides


def describe(magnitudes: Sequence[int], turns: Sequence[float], zooms: Sequence[float]) -> str:
    parts = [f"shifts of {', '.join(map(str, magnitudes))} px in the eight directions"] if magnitudes else []
    parts += [f"turns of ±{', ±'.join(f'{t:g}' for t in turns)}°"] if turns else []
    parts += [f"zooms by {', '.join(f'{z:g}' for z in zooms)}"] if zooms else []
    return "; ".join(parts)


def edit_all(pictures: Sequence[str], motions: list[Motion], variants: list[list[str]],
             workers: int) -> list[list[dict[str, Any]]]:
    """Every picture under every motion, once per list of overrides: one list of rows per variant."""
    with tempfile.TemporaryDirectory() as folder:
        paths = {name: picture_path(name, Path(folder)) for name in pictures}
        jobs = [(name, paths[name], motions, overrides) for overrides in variants for name in pictures]
        if workers > 1:
            # one thread per worker: these tiny tensors run fastest that way
            with multiprocessing.get_context("spawn").Pool(workers, torch.set_num_threads, (1,)) as pool:
                per_job = pool.map(sweep_picture, jobs, chunksize=1)
        else:
            per_job = [sweep_picture(job) for job in jobs]
    return [[row for rows in per_job[i * len(pictures):(i + 1) * len(pictures)] for row in rows]
            for i in range(len(variants))]


def guidance_values(settings: Any) -> dict[str, Any]:
    return {key: getattr(settings.guidance, key) for key in
            ("steps", "recursions", "guidance_weight", "flow_weight", "color_weight", "clip_grad")}


def run(pictures: Sequence[str], magnitudes: Sequence[int], overrides: list[str], workers: int,
        turns: Sequence[float] = (), zooms: Sequence[float] = ()) -> dict[str, Any]:
    overrides = overrides + family_overrides(turns, zooms)
    settings = load_settings("offline-demo", overrides)
    started = time.perf_counter()
    (rows,) = edit_all(pictures, requested_motions(magnitudes, turns, zooms), [overrides], workers)
    return {
        "benchmark": "exact_world",
        "size": list(settings.model.size),
        "family_radius": settings.model.family_radius,
        "overrides": overrides,
        "guidance": guidance_values(settings),
        "magnitudes": list(magnitudes),
        "motions": describe(magnitudes, turns, zooms),
        "wall_s": time.perf_counter() - started,
        "summary": summarise(rows),
        "misses": [r for r in rows if r["miss_px"] > 0],
        "results": rows,
    }


def compare_settings(pictures: Sequence[str], magnitudes: Sequence[int], overrides: list[str],
                     workers: int) -> dict[str, Any]:
    """Each of ``CANDIDATES`` (on top of ``overrides``, e.g. a working size) over the same edits."""
    variants = [overrides + changes for changes in CANDIDATES.values()]
    started = time.perf_counter()
    per_variant = edit_all(pictures, requested_motions(magnitudes), variants, workers)
    lines = []
    for (name, changes), rows in zip(CANDIDATES.items(), per_variant):
        (total,) = [line for line in summarise(rows) if line["picture"] == "all"]
        settings = load_settings("offline-demo", overrides + changes)
        lines.append({"setting": name, "changes": changes, "guidance": guidance_values(settings),
                      "family_radius": settings.model.family_radius, **total,
                      "misses": [r for r in rows if r["miss_px"] > 0]})
    return {
        "benchmark": "exact_world_settings",
        "size": list(load_settings("offline-demo", overrides).model.size),
        "overrides": overrides, "pictures": list(pictures), "magnitudes": list(magnitudes),
        "wall_s": time.perf_counter() - started, "settings": lines,
    }


def settings_table(report: dict[str, Any]) -> Table:
    size = "x".join(map(str, report["size"]))
    table = Table(title=f"guidance settings, exact world at {size}: {', '.join(report['pictures'])}, "
                        f"shifts of {','.join(map(str, report['magnitudes']))} px in 8 directions")
    for column in ("setting", "passes", "exact", "mean miss px", "s/edit"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for line in report["settings"]:
        table.add_row(line["setting"], f"{line['passes']:.0f}", f"{100 * line['exact']:.0f} %",
                      f"{line['mean_miss_px']:.2f}", f"{line['seconds']:.1f}")
    return table


def report_table(report: dict[str, Any]) -> Table:
    size = "x".join(map(str, report["size"]))
    table = Table(title=f"exact world at {size}: {report['motions']}")
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
        f"shifted by exactly (dx, dy). Motions: {report['motions']}. Working size {size}, {g['steps']} steps × "
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
    misses = misses_text(report["misses"])
    lines += ["", f"Misses (requested→landed): {misses}." if misses else "No misses.", ""]
    return "\n".join(lines)


def misses_text(misses: list[dict[str, Any]]) -> str:
    """The misses of a sweep as "picture requested→landed", comma-separated."""
    return ", ".join(f"{r['picture']} {motion_label(r['requested'])}→{motion_label(r['landed'])}" for r in misses)


def settings_markdown(report: dict[str, Any]) -> str:
    """The BENCHMARKS.md section for a settings comparison."""
    size = "x".join(map(str, report["size"]))
    edits = report["settings"][0]["edits"]
    lines = [
        SETTINGS_SECTION, "",
        f"`python -m benchmarks.exact_world --compare --pictures {','.join(report['pictures'])} --magnitudes "
        f"{','.join(map(str, report['magnitudes']))}` runs the sweep once per candidate setting (`CANDIDATES`: the "
        "preset's values as they were when it ran, and one or two changes each) over the same "
        f"{edits} edits: {', '.join(report['pictures'])} shifted by {', '.join(map(str, report['magnitudes']))} px "
        f"in the eight directions, working size {size}, seed 0"
        + (f", overrides {', '.join(report['overrides'])}" if report["overrides"] else "")
        + f". CPU, one thread per job, {report['wall_s'] / 60:.1f} min in all.",
        "",
        "| setting | changes | passes/edit | exact | mean miss (px) | s/edit | misses (requested→landed) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for line in report["settings"]:
        misses = misses_text(line["misses"])
        changes = ", ".join(f"`{c}`" for c in line["changes"]) or "—"
        lines.append(f"| {line['setting']} | {changes} | {line['passes']:.0f} | {100 * line['exact']:.0f} % | "
                     f"{line['mean_miss_px']:.2f} | {line['seconds']:.1f} | {misses or '—'} |")
    return "\n".join(lines + [""])


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


def numbers(option: str, text: str, kind: type) -> list[Any]:
    """A comma-separated list of numbers ("" is none), or a one-line error naming the option."""
    try:
        return [kind(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise MtransferError(f"{option}: expected comma-separated {kind.__name__}s such as 1,2,3, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.exact_world", description=__doc__.split("\n")[0])
    parser.add_argument("--pictures", default=",".join(PICTURES), help=f"comma-separated, from {', '.join(PICTURES)}")
    parser.add_argument("--magnitudes", default="1,2,3,4,5,6", help="shift lengths in px along each direction")
    parser.add_argument("--turns", default="", help="turns in degrees, each swept both ways (adds them to the family)")
    parser.add_argument("--zooms", default="", help="zoom factors such as 0.95,1.05 (adds them to the family)")
    parser.add_argument("--size", help="working size HEIGHTxWIDTH (default: the preset's)")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        help="override a preset value, e.g. guidance.steps=20 (repeatable)")
    parser.add_argument("--workers", type=int, default=2, help="pictures edited in parallel (one thread each)")
    parser.add_argument("--compare", action="store_true",
                        help="compare the candidate guidance settings (CANDIDATES) on these edits instead")
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument("--write-benchmarks", action="store_true", help=f"put the table into BENCHMARKS.md ({SECTION!r})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in each worker: on a shared CPU, more threads per edit only contend
    pictures = [name.strip() for name in args.pictures.split(",") if name.strip()]
    magnitudes = numbers("--magnitudes", args.magnitudes, int)
    turns, zooms = numbers("--turns", args.turns, float), numbers("--zooms", args.zooms, float)
    overrides = list(args.settings)
    if args.size:
        height, _, width = args.size.partition("x")
        overrides.append(f"model.size=[{height}, {width}]")
    if args.compare:
        report = compare_settings(pictures, magnitudes, overrides, max(1, args.workers))
        table, section, heading = settings_table(report), settings_markdown(report), SETTINGS_SECTION
    else:
        report = run(pictures, magnitudes, overrides, max(1, args.workers), turns, zooms)
        table, section, heading = report_table(report), markdown(report), SECTION
    Console(width=max(Console().width, 100)).print(table)
    if args.json:
        write_json(args.json, report)
    if args.write_benchmarks:
        write_section(ROOT / "BENCHMARKS.md", section, heading)
    return report


if __name__ == "__main__":
    run_script(main)
