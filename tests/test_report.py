"""The report's pieces without a browser: error heat map colours and scale, figure names, page structure.

``test_report_browser.py`` renders real reports in Chromium.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from mtransfer.flows.viz import HEAT_STOPS, error_scale, error_to_color
from mtransfer.pipeline.report import Report, ReportFrame, figure_label, figure_values, render_report


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
