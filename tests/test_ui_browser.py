"""The web app in a real headless Chromium: motion → preview, an edit to completion, a flow-only clip, a bad upload.

The app runs in this process on a free loopback port with the test preset (exact model at 32x48, 3 steps),
so the edit and the clip finish in seconds. Screenshots of each state go to outputs/ui-test/.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="browser test of the web app skipped: gradio not installed (pip install '.[ui]')")

SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"
PRESET = str(Path(__file__).resolve().parent / "data" / "run-test.toml")
SHOTS = Path("outputs/ui-test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from mtransfer.ui.app import launch

    demo, (_, url, share_url) = launch(PRESET, "127.0.0.1", free_port(), tmp_path_factory.mktemp("ui"),
                                        prevent_thread_lock=True, quiet=True)
    assert share_url is None
    yield url
    demo.close()


def image_src(page, selector: str) -> str | None:
    images = page.locator(f"{selector} img")
    return images.first.get_attribute("src") if images.count() else None


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def wait_for_new_src(page, selector: str, old: str | None, timeout_ms: int = 30_000) -> str:
    page.wait_for_function(
        """([sel, old]) => { const img = document.querySelector(sel + ' img');
                              return img && img.src && img.src !== old; }""",
        arg=[selector, old or ""], timeout=timeout_ms,
    )
    return image_src(page, selector)


def test_web_app_motion_edit_video_and_bad_upload(browser_page, app_url, tmp_path):
    page = browser_page.page
    page.set_default_timeout(30_000)
    page.goto(app_url)
    page.wait_for_selector("#image-upload")

    # Motion: upload the cat, add translate(10, 0) with the controls, see the flow preview appear.
    page.set_input_files("#image-upload input[type=file]", str(SAMPLES / "cat.png"))
    canvas = wait_for_new_src(page, "#canvas", None)
    assert canvas
    page.click("#add-motion")
    page.wait_for_function("() => document.querySelector('#spec textarea').value.startsWith('translate(10')")
    color = wait_for_new_src(page, "#flow-color", None)
    warped = wait_for_new_src(page, "#flow-warp", None)
    assert page.input_value("#spec textarea") == "translate(10, dy=0)"
    shot(page, "1-motion-translate")

    # A control moved: the last term is edited and the preview changes.
    number = page.locator("#slider-0 input[type=number]")
    number.fill("40")
    number.press("Enter")
    page.locator("#slider-0 input[type=range]").dispatch_event("pointerup")
    page.wait_for_function("() => document.querySelector('#spec textarea').value.startsWith('translate(40')")
    # (the colour of a uniform translation does not depend on its length: the warp preview does)
    changed = wait_for_new_src(page, "#flow-warp", warped)
    assert changed != warped
    shot(page, "2-motion-changed")

    # Edit: run the test preset to completion and see the result and the flow comparison.
    page.get_by_role("tab", name="Edit").click()
    page.click("#run-edit")
    page.wait_for_selector("#edit-result img", timeout=90_000)
    assert "done in" in page.inner_text("#edit-status")
    assert "flow error mean" in page.inner_text("#edit-status")
    shot(page, "3-edit-done")

    # Video: flow-only on a sample clip, per-frame previews with a frame slider.
    page.get_by_role("tab", name="Video").click()
    page.set_input_files("#clip-upload input[type=file]", str(SAMPLES / "pan.mp4"))
    page.wait_for_timeout(500)
    page.click("#flow-only")
    first = wait_for_new_src(page, "#frame-panel", None, 60_000)
    assert "4 frames" in page.inner_text("#video-status")
    shot(page, "4-video-flow-only")
    page.locator("#frame-slider input[type=number]").fill("2")
    page.locator("#frame-slider input[type=number]").press("Enter")
    page.locator("#frame-slider input[type=range]").dispatch_event("pointerup")
    assert wait_for_new_src(page, "#frame-panel", first) != first
    shot(page, "5-video-frame-2")

    # A text file as the image: a visible message, and the page keeps working afterwards.
    page.get_by_role("tab", name="Motion").click()
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    page.locator("#image-upload button[aria-label='Clear']").click()
    page.set_input_files("#image-upload input[type=file]", str(text))
    message = page.get_by_text("upload 'notes.txt'", exact=False)
    message.first.wait_for(timeout=20_000)
    assert "not a readable image" in message.first.inner_text()
    shot(page, "6-bad-upload")
    page.fill("#spec textarea", "rotate(20)")
    page.click("#apply-spec")
    assert wait_for_new_src(page, "#flow-color", color) != color
    shot(page, "7-still-serving")
    assert browser_page.blocked == []
