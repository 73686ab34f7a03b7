"""The report's pieces without a browser: error heat map colours and scale, figure names, page structure.

``test_report_browser.py`` renders real reports in Chromium.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from mtransfer.flows.viz import HEAT_STOPS, error_scale, error_to_color
from mtransfer.app.report import Plot, Report, ReportFrame, figure_label, figure_values, render_report


def test_error_heat_map_interpolates_its_stops_and_clips_at_the_top():
    # Rule: an error e maps to position p = min(e / top, 1) * (n - 1) along the n stops, linearly between them.
    stops = torch.tensor(HEAT_STOPS, dtype=torch.float32) / 255
    n, top = len(stops), 7.0
    errors = torch.tensor([[0.0, top * 2 / (n - 1), top * 2.5 / (n - 1), top, 3 * top]])
    colours = error_to_color(errors, top)
    assert colours.shape == (3, 1, 5)
    expected = [stops[0], stops[2], (stops[2] + stops[3]) / 2, stops[-1], stops[-1]]
    for column, colour in enumerate(expected):
        assert torch.allclose(colours[:, 0, column], colour, atol=1e-6), column
    with pytest.raises(ValueError):
        error_to_color(errors, 0.0)


def test_error_scale_is_the_target_motion_unless_the_errors_are_worse():
    small = torch.full((4, 4), 0.5)
    assert error_scale([small], 3.0) == 3.0
    ramp = torch.arange(101, dtype=torch.float32)  # its 99th percentile is 99
    assert error_scale([small, ramp], 3.0) == pytest.approx(99.0)
    assert error_scale([], 0.0) == 1.0


def test_figures_are_flattened_numbers_with_readable_names():
    record = {"seconds": 2.5, "still": False, "diverged": True, "note": "x", "pid": 8556,
              "final_energy": {"flow": 1.0, "total": 3}, "flow_error_px": 0.25}
    assert figure_values(record) == {"seconds": 2.5, "final_energy.flow": 1.0, "final_energy.total": 3.0,
                                     "flow_error_px": 0.25}
    assert figure_label("flow_error_px") == "flow error (px)"
    assert figure_label("final_energy.flow") == "final energy flow"
    assert figure_label("sampling_s") == "sampling (s)"
    assert figure_label("seconds") == "seconds"
    # JSON spells infinity "inf" (an untouched background's PSNR); the frame number names, it does not measure
    assert figure_values({"frame": 3, "psnr": "inf", "ssim": 1.0}) == {"psnr": math.inf, "ssim": 1.0}
    assert figure_label("psnr", {"psnr": "PSNR outside mask (dB)"}) == "PSNR outside mask (dB)"


def report(frames: list[ReportFrame], **extra) -> Report:
    return Report(title="t", summary=["s"], source="source.png", frames=frames, flow_scale_px=2.0,
                  error_scale_px=3.0, settings={"guidance": {"steps": 3}}, fps=5.0, **extra)


def page_data(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page).group(1))


def test_flow_only_report_shows_edit_masks_and_no_result_controls():
    frames = [ReportFrame(index=i, target_flow=f"flow_color/{i:04d}.png", motion_px=float(i), still=i == 0,
                          driving=f"driving/{i:04d}.png", edit_mask=f"edit_mask/{i:04d}.png") for i in range(3)]
    page = render_report(report(frames))
    data = page_data(page)
    assert data["start"] == 2  # the viewer opens on the largest motion
    assert [set(f["panels"]) for f in data["frames"]] == [{"first", "target", "mask"}] * 3
    assert data["frames"][0]["panels"]["target"]["note"] == "no motion"
    assert 'id="errmap"' not in page and 'id="slider"' in page
    assert "http://" not in page and "https://" not in page


def test_page_data_cannot_close_its_script_element():
    hostile = "</script><script>alert(1)</script>"
    frame = ReportFrame(index=0, target_flow="t.png", motion_px=1.0, result="r.png", figures={hostile: 1.0})
    page = render_report(report([frame]))
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert hostile in json.dumps(page_data(page))  # the name survives, escaped


def test_a_plot_draws_its_reference_dashed_on_the_same_axis_and_table_only_figures_are_not_plotted():
    figures = [{"seconds": 1.0, "psnr": math.inf},
               {"seconds": 2.0, "psnr": math.inf, "warping_error": 0.02, "baseline_warping_error": 0.01},
               {"seconds": 3.0, "psnr": 30.0, "warping_error": 0.04, "baseline_warping_error": 0.01}]
    frames = [ReportFrame(index=i, target_flow="t.png", motion_px=float(i), result="r.png", figures=f)
              for i, f in enumerate(figures)]
    page = render_report(report(frames, plots=[Plot("warping_error", "warping (dashed: naive)", "baseline_warping_error")],
                                table_only=("psnr",), labels={"psnr": "PSNR outside mask (dB)"}))
    plots = dict(re.findall(r'<svg class="plot"[^>]*data-key="([^"]+)"[^>]*>(.*?)</svg>', page))
    assert set(plots) == {"warping_error", "seconds"}  # the reference and table-only figures get no plot alone
    warping = plots["warping_error"]
    lines = dict(re.findall(r'<polyline class="([^"]*)" points="([^"]+)"/>', warping))
    assert set(lines) == {"", "reference"} and all(len(points.split()) == 2 for points in lines.values())
    # one axis for both: it spans the lowest reference value and the highest figure value
    assert re.findall(r'text-anchor="end">([^<]+)</text>', warping)[:2] == ["0.04", "0.01"]
    # the reference is flat at the bottom of the axis; the figure's points select their frames
    assert len({point.split(",")[1] for point in lines["reference"].split()}) == 1
    assert re.findall(r'<circle[^>]*data-frame="(\d+)"', warping) == ["1", "2"]
    assert "PSNR outside mask (dB)</button>" in page and "warping (dashed: naive)" in page
    assert re.findall(r'<td data-value="([^"]*)">inf</td>', page) == ["Infinity", "Infinity"]  # sorts as a number


def test_table_columns_keep_each_frames_order_when_later_frames_add_figures():
    frames = [ReportFrame(index=0, target_flow="t.png", motion_px=0.0, figures={"motion": 0.0, "psnr": 1.0}),
              ReportFrame(index=1, target_flow="t.png", motion_px=1.0,
                          figures={"motion": 1.0, "seconds": 2.0, "epe": 0.5, "psnr": 3.0, "warp": 0.1})]
    heads = re.findall(r'<th scope="col"><button type="button">([^<]+)</button>', render_report(report(frames)))
    assert heads == ["frame", "status", "motion", "seconds", "epe", "psnr", "warp"]


def test_the_page_embeds_the_report_assets_byte_for_byte_and_the_package_ships_them():
    """The CSS and script are package data files (``mtransfer/app/report_assets``), copied into each page
    unchanged so it opens offline; pyproject's package data names them, so a wheel carries them."""
    import fnmatch
    import tomllib
    from pathlib import Path

    import mtransfer.app

    folder = Path(mtransfer.app.__file__).parent / "report_assets"
    css, js = ((folder / name).read_bytes().decode() for name in ("report.css", "report.js"))
    page = render_report(Report(title="t", summary=[], source="s.png", settings={}, flow_scale_px=1.0,
                                error_scale_px=1.0, frames=[ReportFrame(index=0, target_flow="t.png", motion_px=0.0)]))
    assert f"<style>{css}</style>" in page and f"<script>{js}</script>" in page
    assert "const frames" in js and ".plots" in css  # the real assets, not empty files
    root = Path(mtransfer.app.__file__).parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mtransfer.app"]
    for name in ("report.css", "report.js"):
        assert any(fnmatch.fnmatch(f"report_assets/{name}", pattern) for pattern in patterns), name
