"""Progress where nobody watches a terminal: plain timestamped lines at an interval, nothing with --quiet."""

from __future__ import annotations

import io
import re

from rich.console import Console

from mtransfer.progress import LogProgress, progress_bar

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def _log() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=60), out  # a file, not a terminal (narrow: lines must not wrap)


def test_a_log_gets_timestamped_lines_for_stage_frame_and_pass():
    console, out = _log()
    with progress_bar(console, interval_s=0) as progress:
        frames = progress.add_task("guide", total=2)
        passes = progress.add_task("  passes", total=4)
        for frame in range(2):
            for _ in range(2):
                progress.advance(passes)
            progress.advance(frames)
    lines = out.getvalue().splitlines()
    assert all(re.match(STAMP + " ", line) for line in lines), lines
    assert re.fullmatch(STAMP + r" guide 1/2 eta \d+:\d\d:\d\d \| passes 2/4 eta \d+:\d\d:\d\d", lines[4]), lines[4]
    assert re.fullmatch(STAMP + r" guide 2/2 finished in \d+:\d\d:\d\d", lines[-1]), lines[-1]
    assert "━" not in out.getvalue()  # no bars


def test_lines_wait_for_the_interval_except_starts_and_finishes():
    console, out = _log()
    with progress_bar(console, interval_s=3600) as progress:
        task = progress.add_task("decode", total=50)
        for _ in range(50):
            progress.advance(task)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith("decode 0/50 eta ?") and "decode 50/50 finished in" in lines[1]


def test_a_terminal_gets_bars_and_quiet_gets_nothing():
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert not isinstance(progress_bar(terminal), LogProgress)
    console, out = _log()
    with progress_bar(console, quiet=True) as progress:
        task = progress.add_task("guide", total=3)
        progress.advance(task, 3)
    assert out.getvalue() == ""


def test_a_resumed_stage_is_said_once_as_done_and_then_left_out():
    console, out = _log()
    with progress_bar(console, interval_s=0) as progress:
        progress.add_task("decode", total=8, completed=8)  # resumed: every frame was decoded before
        guide = progress.add_task("guide", total=2)
        progress.advance(guide)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith(" decode 8/8 already done")
    assert all("decode" not in line for line in lines[1:]), lines
    assert re.search(r" guide 1/2 eta \d+:\d\d:\d\d$", lines[-1]), lines
