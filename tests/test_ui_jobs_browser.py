"""The web app's jobs in a real headless Chromium: an edit with the one-step estimate refreshing, its zip,
cancelling it, an SD preset without weights; a clip's alignment region, flow-only, and resuming an
interrupted run folder. One app start (preset ``tiny``) serves the module; screenshots go to outputs/ui-test/.
"""

from __future__ import annotations

import zipfile

import pytest

pytest.importorskip("gradio", reason="browser test of the web app skipped: gradio not installed (pip install '.[ui]')")

from test_ui_browser import SAMPLES, free_port, image_src, shot, wait_for_new_src, wait_for_upload  # noqa: E402
from test_ui_jobs import interrupted_run  # noqa: E402


@pytest.fixture(scope="module")
def jobs_app(tmp_path_factory):
    """The app on a free loopback port with ``tiny`` selected; yields its address and outputs folder."""
    from mtransfer.ui.app import launch

    root = tmp_path_factory.mktemp("ui-jobs")
    demo, (_, url, _) = launch("tiny", "127.0.0.1", free_port(), root, prevent_thread_lock=True, quiet=True)
    yield url, root
    demo.close()


def open_with_motion(page, url: str, spec: str = "translate(6, 0)") -> None:
    """A fresh page with the cat uploaded and ``spec`` typed as the motion."""
    page.set_default_timeout(30_000)
    page.goto(url)
    page.set_input_files("#image-upload input[type=file]", str(SAMPLES / "cat.png"))
    wait_for_new_src(page, "#canvas", None)
    page.fill("#spec textarea", spec)
    page.click("#apply-spec")
    wait_for_new_src(page, "#flow-color", None)


def set_steps(page, steps: int) -> None:
    page.fill("#edit-steps input", str(steps))
    page.press("#edit-steps input", "Tab")


def status(page, selector: str = "#edit-status") -> str:
    return page.inner_text(selector)


def test_edit_previews_result_zip_kept_models_cancel_and_missing_weights(browser_page, jobs_app, tmp_path):
    page = browser_page.page
    url, _ = jobs_app
    open_with_motion(page, url)
    page.get_by_role("tab", name="Edit").click()

    assert "tiny random SD" in page.inner_text("#edit-preset")  # the chosen preset's description
    # A tiny edit: the progress bar and the one-step estimate appear while it runs, then the results.
    set_steps(page, 12)
    page.click("#run-edit")
    page.wait_for_selector("#edit-status progress", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#edit-preview').innerText.includes('at step')",
                           timeout=90_000)
    shot(page, "jobs-1-edit-running")
    page.wait_for_selector("#edit-result img", timeout=90_000)
    assert "finished in" in status(page) and "models loaded" in status(page) and "target motion" in status(page)
    assert status(page).split(":")[0] in ("reached", "partial", "missed")  # the verdict leads, never "done" alone
    assert image_src(page, "#edit-loss")
    shot(page, "jobs-2-edit-done")

    # The run folder as a zip: what the edit wrote.
    with page.expect_download() as download:
        page.locator("#edit-zip a").first.click()
    archive = tmp_path / "edit.zip"
    download.value.save_as(archive)
    names = set(zipfile.ZipFile(archive).namelist())
    assert {"edited.png", "target_flow.png", "achieved_flow.png", "flow_error.png", "loss.png", "run.json",
            "report.html"} <= names
    assert any(name.startswith("previews/step_") for name in names)

    # The same preset again: the models stay loaded. Cancel it while it guides: it stops and says so.
    set_steps(page, 400)
    page.click("#run-edit")
    page.wait_for_selector("#edit-result img", state="detached")  # the last edit's results go when one starts
    assert page.locator("#edit-zip a").count() == 0 and image_src(page, "#edit-loss") is None
    page.wait_for_function("() => document.querySelector('#edit-status').innerText.includes('models kept loaded')"
                           " || document.querySelector('#edit-status').innerText.includes('guiding: pass')",
                           timeout=60_000)
    page.click("#cancel-edit")
    page.wait_for_function("() => document.querySelector('#edit-status').innerText.includes('cancelled')",
                           timeout=60_000)
    assert "the worker stopped" in status(page)
    shot(page, "jobs-3-edit-cancelled")

    # The worker is free again: a short edit runs to the end, on the models kept from before.
    set_steps(page, 3)
    page.click("#run-edit")
    page.wait_for_function("() => document.querySelector('#edit-status').innerText.includes('finished in')",
                           timeout=90_000)
    assert "models kept loaded from the last edit" in status(page)

    # An SD preset without weights here: a clear message in the page, and the app keeps working.
    page.locator("#edit-preset input").fill("paper")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('#edit-preset').innerText.includes('Motion Guidance paper')")
    page.click("#run-edit")
    page.wait_for_function("() => document.querySelector('#edit-status').innerText.includes('cannot start')",
                           timeout=30_000)
    assert "raft-large weights" in status(page) and "missing" in status(page)
    page.wait_for_function(  # the same message as a toast, faded in
        """() => [...document.querySelectorAll('.toast-body')].some(t => t.innerText.includes('raft-large weights')
              && getComputedStyle(t).opacity === '1' && !t.getAnimations().some(a => a.playState === 'running'))"""
    )
    shot(page, "jobs-4-paper-missing-weights")
    page.get_by_role("tab", name="Motion").click()
    before = image_src(page, "#flow-color")
    page.fill("#spec textarea", "rotate(15)")
    page.click("#apply-spec")
    assert wait_for_new_src(page, "#flow-color", before) != before
    assert browser_page.blocked == []


def test_video_region_flow_only_and_resume_an_interrupted_run(browser_page, jobs_app):
    from mtransfer.files import read_json

    page = browser_page.page
    url, root = jobs_app
    open_with_motion(page, url)
    page.get_by_role("tab", name="Video").click()

    # The region: two clicks on opposite corners of the image, shown as a box and as align.region.
    page.wait_for_selector("#region-image img")
    before = image_src(page, "#region-image")
    picture = page.locator("#region-image img")
    box = picture.bounding_box()
    picture.click(position={"x": box["width"] * 0.2, "y": box["height"] * 0.25})
    page.wait_for_function("() => document.querySelector('#region-image').innerText.includes('First corner')")
    marked = wait_for_new_src(page, "#region-image", before)  # the first corner is marked
    page.locator("#region-image img").click(position={"x": box["width"] * 0.7, "y": box["height"] * 0.8})
    page.wait_for_function("() => document.querySelector('#align-region textarea').value.split(',').length == 4")
    assert wait_for_new_src(page, "#region-image", marked) != marked
    region = [float(v) for v in page.input_value("#align-region textarea").split(",")]
    assert 0.1 < region[0] < region[2] < 0.8 and 0.15 < region[1] < region[3] < 0.9
    page.locator("#align-temporal input").click()
    page.get_by_role("option", name="ema", exact=True).click()
    page.wait_for_function("() => document.querySelector('#align-temporal input').value == 'ema'")
    page.fill("#align-temporal-amount input", "0.5")

    # Flow-only with those settings: per-frame previews, and the run records them as [align].
    page.set_input_files("#clip-upload input[type=file]", str(SAMPLES / "pan.mp4"))
    wait_for_upload(page, "#clip-upload", "pan.mp4")
    assert page.input_value("#video-frames input") == "3"  # the preset's video.max_frames
    page.fill("#video-frames input", "2")
    page.click("#flow-only")
    wait_for_new_src(page, "#frame-panel", None, 60_000)
    assert "2 frames" in status(page, "#video-status")
    shot(page, "jobs-5-video-region-flow-only")
    (manifest,) = root.glob("session-*/video/manifest.json")
    align = read_json(manifest)["config"]["align"]
    assert align["region"] == region and align["temporal"] == "ema" and align["temporal_amount"] == 0.5
    assert read_json(manifest)["config"]["video"]["max_frames"] == 2

    # An interrupted run folder is listed; Resume finishes it: result, side by side, report.
    folder = interrupted_run(root / "session-interrupted" / "video")
    page.click("#resume-refresh")
    page.locator("#resume-choice input").click()
    page.get_by_role("option", name=str(folder)).click()
    page.click("#resume")
    page.wait_for_function("() => document.querySelector('#video-status').innerText.includes('done in')",
                           timeout=90_000)
    page.wait_for_selector("#video-result video")
    page.wait_for_selector("#video-side video")
    assert page.locator("#video-links a", has_text="report.html").count() == 1
    shot(page, "jobs-6-video-resumed")
    finished = read_json(folder / "manifest.json")["stages"]
    assert finished["encode"]["status"] == "done" and len(finished["guide"]["frames"]) == 4
    assert browser_page.blocked == []
