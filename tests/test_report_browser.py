"""``report.html`` of ``mtransfer run`` and ``mtransfer edit`` in a real headless Chromium.

The run uses the test preset (the exact model at 32x48, seconds per run; the tiny SD preset takes over a
minute per run on a shared 2-core CPU and would draw the same page). Screenshots at 1280x800 and 390x844
go to ``outputs/report-test/`` for a person to look at.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRESET = str(Path(__file__).resolve().parent / "data" / "run-test.toml")
SHOTS = ROOT / "outputs" / "report-test"
VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}
MIN_WIDTH = 256


def mtransfer(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "mtransfer", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def run_report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    mtransfer("run", "sample_videos/pan.mp4", "--onto", "sample_videos/cat.png", "--pipeline", PRESET, "--out", str(out))
    return out / "report.html"


@pytest.fixture(scope="module")
def edit_report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "edit"
    mtransfer("edit", "sample_videos/cat.png", "--flow", "translate(2, 0)", "--pipeline", PRESET, "--out", str(out))
    return out / "report.html"


def open_page(browser_page, report: Path, viewport: str = "desktop"):
    page = browser_page.page
    width, height = VIEWPORTS[viewport]
    page.set_viewport_size({"width": width, "height": height})
    page.goto(report.as_uri())
    page.wait_for_function("[...document.images].every(img => img.complete)")
    return page


def viewer_widths(page) -> list[float]:
    return page.eval_on_selector_all(".panel img.main", "images => images.map(img => img.getBoundingClientRect().width)")


def screenshots(page, name: str, viewport: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    width, height = VIEWPORTS[viewport]
    page.screenshot(path=SHOTS / f"{name}-{width}x{height}.png")
    page.screenshot(path=SHOTS / f"{name}-{width}x{height}-full.png", full_page=True)


def assert_stayed_local(browser_page) -> None:
    assert browser_page.blocked == [], f"the page asked for external URLs: {browser_page.blocked}"
    assert browser_page.requests and all(url.startswith("file://") for url in browser_page.requests)
    assert browser_page.errors == []


def shown(page, panel: str) -> str:
    return page.get_attribute(f'.panel[data-panel="{panel}"] img.main', "src")


def open_viewer(browser_page, report, viewport: str, name: str):
    """Open a report at ``viewport``, save its screenshots, and check the layout every report shares: four
    viewer panels at least ``MIN_WIDTH`` wide, and nothing sticking out sideways."""
    page = open_page(browser_page, report, viewport)
    screenshots(page, name, viewport)
    widths = viewer_widths(page)
    assert len(widths) == 4 and min(widths) >= MIN_WIDTH, widths
    assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORTS[viewport][0]
    return page


def test_the_browser_fixture_blocks_and_records_external_requests(browser_page, tmp_path):
    page = tmp_path / "page.html"
    page.write_text('<img src="https://example.com/pixel.png"><img src="pixel.png">')
    browser_page.page.goto(page.as_uri())
    browser_page.page.wait_for_load_state("load")
    assert browser_page.blocked == ["https://example.com/pixel.png"]


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_run_report_viewer_is_large_local_and_fits_the_screen(browser_page, run_report, viewport):
    page = open_viewer(browser_page, run_report, viewport, "run")  # driving | target | result | achieved
    # 48x32 pictures shown at 256 px and more are scaled with crisp pixels, not blurred
    rendering = page.eval_on_selector('.panel[data-panel="result"] img.main', "img => getComputedStyle(img).imageRendering")
    assert rendering == "pixelated"
    assert_stayed_local(browser_page)


def test_run_report_slider_keys_and_toggles_change_the_shown_frame(browser_page, run_report):
    page = open_page(browser_page, run_report)
    frames = json.loads(page.text_content("#report-data"))["frames"]
    assert len(frames) == 4
    slider = page.locator("#slider")
    slider.fill("1")
    assert shown(page, "result") == "frames/0001.png" and shown(page, "first") == "driving/0001.png"
    picture_1 = page.locator('.panel[data-panel="result"] .pic').screenshot()
    slider.fill("3")
    assert shown(page, "result") == "frames/0003.png" and shown(page, "target") == "flow_color/0003.png"
    assert shown(page, "achieved") == "achieved_color/0003.png"
    assert page.text_content("#frame-label") == "frame 3 / 3"
    assert page.locator('.panel[data-panel="result"] .pic').screenshot() != picture_1
    page.keyboard.press("ArrowLeft")
    assert page.input_value("#slider") == "2" and shown(page, "result") == "frames/0002.png"

    # frame 0 has no motion: the target flow says so instead of showing a white box, and no edit exists
    slider.fill("0")
    target_note = page.locator('.panel[data-panel="target"] .note')
    assert target_note.is_visible() and target_note.text_content() == "no motion"
    assert page.locator('.panel[data-panel="achieved"] .note').is_visible()

    slider.fill("2")
    page.click("#play")  # plays on from frame 2, wrapping around
    page.wait_for_function("document.getElementById('frame-label').textContent !== 'frame 2 / 3'")
    page.click("#play")
    slider.fill("2")
    page.check("#errmap")
    assert shown(page, "achieved") == "flow_error/0002.png"
    assert page.locator(".errorbar").is_visible()
    alternative = page.locator('.panel[data-panel="result"] img.alt')
    assert alternative.evaluate("img => getComputedStyle(img).opacity") == "0"
    page.check("#flip")
    assert alternative.evaluate("img => getComputedStyle(img).opacity") == "1"
    assert alternative.get_attribute("src") == "source.png"
    assert_stayed_local(browser_page)


def test_run_report_table_sorts_and_selects_frames(browser_page, run_report):
    page = open_page(browser_page, run_report)
    page.click("th:has-text('flow error (px)') button")
    column = page.eval_on_selector_all("thead th", "heads => heads.map(h => h.textContent)").index("flow error (px)")
    values = page.eval_on_selector_all(f"tbody tr td:nth-child({column + 1})", "cells => cells.map(c => c.dataset.value)")
    present = [float(v) for v in values if v != ""]
    assert len(present) == 3 and present == sorted(present)
    assert values[-1] == ""  # frame 0 made no edit: its missing value sorts last
    page.click("th:has-text('flow error (px)') button")
    values = page.eval_on_selector_all(f"tbody tr td:nth-child({column + 1})", "cells => cells.map(c => c.dataset.value)")
    assert [float(v) for v in values if v != ""] == sorted(present, reverse=True)
    page.click('tbody tr[data-frame="1"]')
    assert page.input_value("#slider") == "1" and shown(page, "result") == "frames/0001.png"
    assert page.locator("details").get_attribute("open") is None  # the settings are folded away
    assert_stayed_local(browser_page)


def test_run_report_plots_the_evaluation_with_reference_lines_and_tabulates_it(browser_page, run_report):
    page = open_page(browser_page, run_report)
    evaluation = json.loads((run_report.parent / "evaluation.json").read_text())
    assert f"Evaluation by {evaluation['judge']['estimator']}" in page.text_content(".summary")
    for key in ("epe_edit", "ssim", "warping_error"):  # fidelity, preservation, temporal consistency
        assert page.locator(f'svg.plot[data-key="{key}"]').is_visible(), key
    temporal = page.locator('svg.plot[data-key="warping_error"]')
    naive = temporal.locator("polyline.reference")
    assert naive.count() == 1 and naive.evaluate("line => getComputedStyle(line).strokeDasharray") != "none"
    assert "naive" not in " ".join(page.eval_on_selector_all("svg.plot", "plots => plots.map(p => p.dataset.key)"))
    page.locator(".plots").scroll_into_view_if_needed()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator(".plots").screenshot(path=SHOTS / "run-evaluation-plots.png")
    temporal.locator('circle[data-frame="2"]').click()  # a point of the plot shows its frame
    assert page.input_value("#slider") == "2" and shown(page, "result") == "frames/0002.png"
    heads = page.eval_on_selector_all("thead th", "heads => heads.map(h => h.textContent)")
    assert {"EPE in mask (px)", "PSNR outside mask (dB)", "warping error", "naive warping error"} <= set(heads)
    column = heads.index("warping error") + 1
    values = page.eval_on_selector_all(f"tbody tr td:nth-child({column})", "cells => cells.map(c => c.dataset.value)")
    assert values == [""] + [repr(row["warping_error"]) for row in evaluation["frames"][1:]]
    assert_stayed_local(browser_page)


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_edit_report_shows_one_frame_in_the_same_layout(browser_page, edit_report, viewport):
    page = open_viewer(browser_page, edit_report, viewport, "edit")  # source | target | edit | achieved
    assert page.locator("#slider").count() == 0  # one frame: nothing to scrub
    assert [shown(page, p) for p in ("first", "target", "result", "achieved")] == [
        "source.png", "target_flow.png", "edited.png", "achieved_flow.png"]
    page.check("#errmap")
    assert shown(page, "achieved") == "flow_error.png"
    assert_stayed_local(browser_page)
