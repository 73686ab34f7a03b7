"""The frame-plan benchmark's own arithmetic: the GPU projection's schedule and the merging of reports."""

from __future__ import annotations

import pytest

from benchmarks.clip_plan import combine, project
from mtransfer.app.plan import frame_plan

SECONDS = {"key": 10.0, "warm": 3.0}


def test_the_projection_schedules_every_frame_after_its_parent_on_the_first_free_worker():
    """Rule: list scheduling — a frame starts at max(its parent's finish, the earliest free worker)."""
    still = [True] + [False] * 8  # frame 0 is the source, 8 moving frames
    independent = frame_plan(still, "independent")
    assert project(independent, 1, SECONDS) == 80.0  # 8 keys one after another
    assert project(independent, 4, SECONDS) == 20.0  # two rounds of four keys
    chain = frame_plan(still, "chain")
    assert project(chain, 1, SECONDS) == project(chain, 64, SECONDS) == 10.0 + 7 * 3.0  # one dependency
    from_previous = frame_plan(still, "keys", key_every=4)
    from_key = frame_plan(still, "keys", key_every=4, warm_from="key")
    # keys at frames 1 and 5: a segment from the previous frame is key + 3 warm in a row; from the key, the
    # three warm frames run side by side once the key is done.
    assert project(from_previous, 2, SECONDS) == 10.0 + 3 * 3.0
    assert project(from_key, 8, SECONDS) == 10.0 + 3.0


def _report(world, rows):
    return {"world": world, "preset": "offline-demo", "rows": rows, "ray": []}


def _row(plan, epe, passes=100):
    return {"clip": "pan", "picture": "cat", "plan": plan, "passes": passes, "independent_passes": 100,
            "epe_edit": epe, "warping_error": 0.02, "baseline_warping_error": 0.01, "guide_s": 1.0}


def test_reports_measured_in_parts_combine_keeping_the_first_of_each_run_and_refuse_other_worlds():
    first = _report(["model.size=[48,64]"], [_row("independent", 0.5), _row("chain s=0.5", 0.7, 55)])
    second = _report(["model.size=[48,64]"], [_row("independent", 0.9), _row("keys K=4 s=0.5 from key", 0.4, 65)])
    combined = combine([first, second])
    assert [(r["plan"], r["epe_edit"]) for r in combined["rows"]] == [
        ("independent", 0.5), ("chain s=0.5", 0.7), ("keys K=4 s=0.5 from key", 0.4)]
    change = {s["plan"]: s["epe_change"] for s in combined["summary"] if s["group"] == "all"}
    assert change["keys K=4 s=0.5 from key"] == pytest.approx(-0.1)  # against the first report's independent
    with pytest.raises(SystemExit, match="different worlds"):
        combine([first, _report(["model.size=[24,32]"], [])])
