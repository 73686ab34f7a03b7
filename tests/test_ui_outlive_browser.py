"""Jobs that outlive the page, in a real headless Chromium: a clip started in one page goes on when that
page is closed, and a page opened later shows it running (progress in words, Cancel) and then finished
with its result video and report. Screenshots go to outputs/ui-test/."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="browser test of the web app skipped: gradio not installed (pip install '.[ui]')")

from test_ui_browser import PRESET, SAMPLES, free_port, shot, wait_for_upload  # noqa: E402
from test_ui_jobs_browser import open_with_motion  # noqa: E402


def wait_text(page, selector: str, text: str, timeout_ms: int = 30_000) -> None:
    page.wait_for_function("([sel, text]) => { const e = document.querySelector(sel); "
                           "return !!e && e.innerText.includes(text); }", arg=[selector, text], timeout=timeout_ms)


@pytest.fixture(scope="module")
def slow_clip_app(tmp_path_factory):
    """The app with the test preset at 400 guidance steps (a clip of some seconds, long enough to close
    the page while it runs); yields its address, outputs folder and the preset's path."""
    from mtransfer.ui.app import launch

    root = tmp_path_factory.mktemp("ui-outlive")
    preset = root / "slow-test.toml"
    text = Path(PRESET).read_text()
    assert tomllib.loads(text)["guidance"]["steps"] == 3
    # long enough to open a page while it runs: ~3,000 passes of ~10 ms (60 steps stopped being enough once
    # the exact world's blur got cheaper)
    preset.write_text(text.replace("steps = 3", "steps = 400"))
    demo, (_, url, _) = launch(str(preset), "127.0.0.1", free_port(), root, prevent_thread_lock=True, quiet=True)
    yield url, root
    demo.close()


def start_pan_clip(page, url: str) -> None:
    """Open the app with a motion, upload the pan clip, wait for its check, and press Run."""
    open_with_motion(page, url)
    page.get_by_role("tab", name="Video").click()
    page.set_input_files("#clip-upload input[type=file]", str(SAMPLES / "pan.mp4"))
    wait_for_upload(page, "#clip-upload", "pan.mp4")
    page.wait_for_function("() => document.querySelector('#clip-status').innerText.includes('frames')")
    page.click("#run-clip")


def test_a_clip_goes_on_when_its_page_closes_and_a_new_page_shows_it_running_then_finished(browser_page,
                                                                                          slow_clip_app):
    url, root = slow_clip_app
    first = browser_page.page
    start_pan_clip(first, url)
    first.wait_for_function("() => document.querySelector('#video-status').innerText.includes('editing the frames')",
                            timeout=120_000)
    assert "guide" not in first.inner_text("#video-status")  # words, not the progress bar's counters
    first.close()  # the page goes; the clip does not

    page = first.context.new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    running = page.locator("#jobs-running")
    running.wait_for()  # a page opened while a job runs opens on the Jobs tab
    assert "running" in running.inner_text() and "clip pan.mp4 onto cat.png" in running.inner_text()
    assert " of 4" in running.inner_text()  # "frame 2 of 4, pass 30 of 150"
    shot(page, "outlive-1-new-page-running")
    page.wait_for_function("() => document.querySelector('#jobs-finished video') !== null", timeout=300_000)
    finished = page.inner_text("#jobs-finished")
    assert "#1 clip pan.mp4 onto cat.png — finished" in finished and "done in" in finished
    assert page.locator("#jobs-finished a", has_text="report.html").count() == 1
    assert "No job is running" in page.inner_text("#jobs-running")
    video = page.locator("#jobs-finished video").get_attribute("src")
    assert page.request.get(page.url.rstrip("/") + video if video.startswith("/") else video).ok
    shot(page, "outlive-2-new-page-finished")
    (manifest,) = root.glob("session-*/video/manifest.json")
    assert "<title>mtransfer: pan onto cat</title>" in (manifest.parent / "report.html").read_text()

    # An edit started in this page, the page closed: a third page opens on it and cancels it.
    open_with_motion(page, url)
    page.get_by_role("tab", name="Edit").click()
    page.fill("#edit-steps input", "400")
    page.click("#run-edit")
    page.wait_for_function("() => document.querySelector('#edit-status').innerText.includes('guiding: pass')",
                           timeout=120_000)
    page.close()
    third = first.context.new_page()
    third.set_default_timeout(30_000)
    third.goto(url)
    wait_text(third, "#jobs-running", "#2 edit of cat.png")
    third.click("#jobs-cancel")
    wait_text(third, "#jobs-finished", "#2 edit of cat.png (translate(6, 0)) — cancelled", 60_000)
    wait_text(third, "#jobs-running", "No job is running")  # both panels refresh on the page's timer
    shot(third, "outlive-3-edit-cancelled-from-another-page")
    assert browser_page.blocked == []


def test_sigterm_to_the_server_stops_its_running_clip_as_the_cli_stops_a_run(browser_page, tmp_path):
    """`mtransfer ui` gets SIGTERM while a clip runs: the clip stops at its next step and its run folder is
    left as SIGTERM leaves a `run` (finished frames in the manifest, the guide stage not done, no lock, no
    temporaries); exit 143 with one `interrupted:` line that says what was kept and how to go on."""
    import json
    import signal
    import urllib.request

    from mtransfer.files import is_temporary
    from test_reliability4 import _mtransfer, _stopped_within, _wait_for

    preset = tmp_path / "slow-test.toml"
    preset.write_text(Path(PRESET).read_text().replace("steps = 3", "steps = 40"))
    port = free_port()
    server = _mtransfer("ui", "--port", port, "--pipeline", preset, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}/"

    def serving() -> bool:
        try:
            return urllib.request.urlopen(url, timeout=1).status == 200
        except OSError:
            return False

    _wait_for(serving, server, 120, "page served")
    page = browser_page.page
    start_pan_clip(page, url)

    def a_frame_guided() -> bool:
        found = list((tmp_path / "outputs" / "ui").glob("session-*/video/manifest.json"))
        try:
            record = json.loads(found[0].read_text()) if found else {}
        except (OSError, ValueError):
            return False
        return len(record.get("stages", {}).get("guide", {}).get("frames", {})) >= 2

    _wait_for(a_frame_guided, server, 240, "guided frame")
    server.send_signal(signal.SIGTERM)
    code, err = _stopped_within(server, 60)
    lines = [line for line in " ".join(err.split()).split("interrupted:")]
    assert code == 143 and len(lines) == 2, err
    said = lines[1].strip()
    assert said.startswith("the web app stopped; 'clip pan.mp4 onto cat.png' stopped: ") and " kept " in said
    assert said.endswith("; Resume in the Video tab continues it; results already written are kept in outputs/ui/")
    assert "stopping: 'clip pan.mp4 onto cat.png' stops at its next step" in " ".join(err.split())
    (manifest,) = (tmp_path / "outputs" / "ui").glob("session-*/video/manifest.json")
    out = manifest.parent
    record = json.loads(manifest.read_text())
    assert record["stages"]["guide"]["status"] != "done" and len(record["stages"]["guide"]["frames"]) >= 2
    assert f"guide {len(record['stages']['guide']['frames'])} of 4 frames" in said
    assert not (out / "run.lock").exists()
    assert [path for path in out.rglob(".*") if is_temporary(path)] == []
