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


def wait_for_upload(page, selector: str, name: str) -> None:
    """Gradio lists an uploaded file by its name once the upload has reached the server."""
    page.wait_for_function(
        "([sel, name]) => { const e = document.querySelector(sel); return !!e && e.innerText.includes(name); }",
        arg=[selector, name],
    )


def gradio_error_badges(page) -> int:
    """How many of Gradio's red "Error" badges (one per output of a failed event) the page shows."""
    return page.locator(".error", has_text="Error").filter(visible=True).count() + page.get_by_text(
        "Error", exact=True).filter(visible=True).count()


def choose_motion(page, kind: str) -> None:
    page.click("#motion-kind input")
    page.get_by_role("option", name=kind, exact=True).click()
    page.wait_for_function("kind => document.querySelector('#motion-kind input').value === kind", arg=kind)


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

    # A control's number typed and Enter pressed: the last term is edited and the preview changes.
    number = page.locator("#slider-0 input[type=number]")
    number.fill("40")
    number.press("Enter")
    page.wait_for_function("() => document.querySelector('#spec textarea').value.startsWith('translate(40')")
    # (the colour of a uniform translation does not depend on its length: the warp preview does)
    changed = wait_for_new_src(page, "#flow-warp", warped)
    assert changed != warped
    shot(page, "2-motion-changed")

    # Edit: run the test preset to completion and see the result and the flow comparison.
    page.get_by_role("tab", name="Edit").click()
    page.click("#run-edit")
    page.wait_for_selector("#edit-result img", timeout=90_000)
    assert "finished in" in page.inner_text("#edit-status")
    assert "px target motion" in page.inner_text("#edit-status")
    # Source and result side by side at a readable size (the test preset edits at 48x32), and the legend.
    source, result = (page.locator(f"{box} img").bounding_box() for box in ("#edit-source", "#edit-result"))
    assert result["height"] >= 250 and abs(source["y"] - result["y"]) < 5 and source["x"] < result["x"]
    assert image_src(page, "#edit-legend") and "direction of motion" in page.inner_text("#edit-legend-words")
    shot(page, "3-edit-done")

    # Video: flow-only on a sample clip, per-frame previews with a frame slider.
    page.get_by_role("tab", name="Video").click()
    page.set_input_files("#clip-upload input[type=file]", str(SAMPLES / "pan.mp4"))
    wait_for_upload(page, "#clip-upload", "pan.mp4")
    page.click("#flow-only")
    first = wait_for_new_src(page, "#frame-panel", None, 60_000)
    assert "4 frames" in page.inner_text("#video-status")
    assert page.input_value("#frame-slider input[type=number]") == "3"  # it opens on the last frame
    shot(page, "4-video-flow-only")
    page.locator("#frame-slider input[type=number]").fill("2")
    page.locator("#frame-slider input[type=number]").press("Enter")
    assert wait_for_new_src(page, "#frame-panel", first) != first
    shot(page, "5-video-frame-2")
    # Labels in words; the settings key is the line under each.
    # Other alignment settings: a run folder of their own (the runner refuses to mix settings in one).
    page.locator("#align-temporal-amount input").fill("0.3")
    page.click("#flow-only")
    page.wait_for_function("() => document.querySelector('#video-links').innerText.includes('/video-02')",
                           timeout=60_000)
    assert "done in" in page.inner_text("#video-status")
    manifest = Path(page.inner_text("#video-links").split("run folder ")[1].strip()) / "manifest.json"
    first_run = manifest.read_text()
    page.click("#flow-only")  # the same settings again: the same folder (it resumes: nothing to recompute)
    for _ in range(300):
        if manifest.read_text() != first_run:
            break
        page.wait_for_timeout(100)
    page.wait_for_function("() => document.querySelector('#video-links').innerText.includes('/video-02')")
    assert manifest.read_text() != first_run and "done in" in page.inner_text("#video-status")
    smoothing = page.inner_text("#align-temporal-amount")
    assert smoothing.startswith("Smoothing amount") and "align.temporal_amount" in smoothing
    assert "video.max_frames" in page.inner_text("#video-frames")

    # A bad clip is refused when it is uploaded, with one message under the upload.
    page.locator("#clip-upload button[aria-label='Clear']").click()
    fake = tmp_path / "clip.mp4"
    fake.write_bytes(b"not a video")
    page.set_input_files("#clip-upload input[type=file]", str(fake))
    page.wait_for_function("() => document.querySelector('#clip-status').innerText.includes('clip.mp4')")
    assert "not a readable video" in page.inner_text("#clip-status")
    assert gradio_error_badges(page) == 0

    # A text file as the image: a visible message, and the page keeps working afterwards.
    page.get_by_role("tab", name="Motion").click()
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    page.locator("#image-upload button[aria-label='Clear']").click()
    page.set_input_files("#image-upload input[type=file]", str(text))
    message = page.get_by_text("upload 'notes.txt'", exact=False)
    message.first.wait_for(timeout=20_000)
    assert "not a readable image" in message.first.inner_text()
    assert message.count() == 1 and "notes.txt" in page.inner_text("#image-note")  # one message, by the upload
    assert gradio_error_badges(page) == 0
    shot(page, "6-bad-upload")
    page.fill("#spec textarea", "rotate(20)")
    page.click("#apply-spec")
    assert wait_for_new_src(page, "#flow-color", color) != color
    shot(page, "7-still-serving")
    assert browser_page.blocked == []


def test_motion_tab_drag_arrow_painted_mask_and_flow_download(browser_page, app_url, tmp_path):
    """Paint the mask on the image, drag an arrow on the canvas (press, move, release), download the flow."""
    from mtransfer.flows import parse_flow_spec, read_flow, spec_terms

    page = browser_page.page
    page.set_default_timeout(30_000)
    page.goto(app_url)
    page.set_input_files("#image-upload input[type=file]", str(SAMPLES / "cat.png"))
    canvas = wait_for_new_src(page, "#canvas", None)
    page.wait_for_selector("#mask-painter canvas")

    # Paint a stroke over the upper left of the image: the canvas shows it tinted, the status says so.
    page.locator("#mask-painter button[aria-label='Brush']").first.click()
    board = page.locator("#mask-painter canvas").first.bounding_box()
    x, y = board["x"] + board["width"] * 0.3, board["y"] + board["height"] * 0.3
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, 4):  # few moves: the painter redraws in software, about a second each on 2 cores
        page.mouse.move(x + 20 * k, y + 7 * k)
    page.mouse.up()
    painted = wait_for_new_src(page, "#canvas", canvas)
    assert "mask painted" in page.inner_text("#motion-status")
    shot(page, "8-mask-painted")

    # Drag on the canvas picture: a translate term by the drag in picture pixels, kept to the painted mask.
    # (With rotate chosen, a click leaking from the drag would add a rotate term about the clicked point.)
    choose_motion(page, "rotate")
    color = image_src(page, "#flow-color")
    picture = page.locator("#canvas img")
    box = picture.bounding_box()
    natural = picture.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    shown = min(box["width"] / natural[0], box["height"] / natural[1])  # object-fit: contain
    x0, y0 = box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5
    page.mouse.move(x0, y0)
    page.mouse.down()
    for k in range(1, 9):
        page.mouse.move(x0 + 5 * k, y0 - 2 * k)
    page.wait_for_function(  # the page draws the arrow while the button is held, up to the pointer
        """([x, y]) => { const l = document.querySelector('svg line[marker-end]');
                         return !!l && Math.abs(l.x2.baseVal.value - x) < 1 && Math.abs(l.y2.baseVal.value - y) < 1; }""",
        arg=[x0 + 40, y0 - 16],
    )
    shot(page, "9-dragging")
    page.mouse.up()
    page.wait_for_function("() => document.querySelector('#spec textarea').value.startsWith('translate(')")
    (term,) = spec_terms(page.input_value("#spec textarea"), natural[1], natural[0])
    assert term.values["dx"] == pytest.approx(40 / shown, abs=0.6)
    assert term.values["dy"] == pytest.approx(-16 / shown, abs=0.6)
    assert term.mask is not None and Path(term.mask).name == "mask-01.png"
    moved_color = wait_for_new_src(page, "#flow-color", color)
    assert moved_color != color and image_src(page, "#canvas") != painted
    shot(page, "10-drag-arrow")

    # The two-click arrow still works: start, then end.
    page.get_by_label("arrow: click start, then end", exact=False).check()
    picture.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.5})
    page.wait_for_function("() => document.querySelector('#motion-status').innerText.includes('arrow starts at')")
    picture.click(position={"x": box["width"] * 0.5 + 20, "y": box["height"] * 0.5})
    page.wait_for_function("() => document.querySelector('#spec textarea').value.includes('| translate(')")

    # Homography from the corner sliders, composed after the arrow (and no rotate from a leaked click).
    choose_motion(page, "homography")
    page.wait_for_selector("#slider-7", state="visible")
    page.click("#add-motion")
    page.wait_for_function("() => document.querySelector('#spec textarea').value.includes('| homography(')")
    terms = spec_terms(page.input_value("#spec textarea"), natural[1], natural[0])
    assert [t.name for t in terms] == ["translate", "translate", "homography"]
    assert terms[1].values["dx"] == pytest.approx(20 / shown, abs=1) and terms[1].values["dy"] == pytest.approx(0, abs=1)
    assert page.input_value("#cx input") in ("", "0")  # no centre was placed by the drag
    shot(page, "11-homography")

    # Download the flow: the files behind the page's link read back as the spec's flow on the canvas.
    expected = parse_flow_spec(page.input_value("#spec textarea"), natural[1], natural[0])
    for suffix in (".flo", ".npy"):
        page.click(f"#save-{suffix[1:]}")
        link = page.locator(f"#flow-file a[href$='motion{suffix}']").first
        link.wait_for()
        response = page.request.get(link.get_attribute("href"))
        assert response.ok
        (tmp_path / f"motion{suffix}").write_bytes(response.body())
        flow = read_flow(tmp_path / f"motion{suffix}")
        assert flow.shape == expected.shape and float((flow - expected).abs().max()) < 1e-3
    shot(page, "12-download")
    assert browser_page.blocked == [] and browser_page.errors == []


def test_specs_built_on_the_canvas_of_a_large_image_are_in_the_images_pixels(browser_page, app_url, tmp_path):
    """A 1024x640 image is drawn on a 512x320 canvas: the sliders' ranges, a placed centre and a dragged
    arrow are written in the image's pixels (as `motion --onto`, `edit` and `run` read a spec)."""
    import torch

    from mtransfer.files import save_image
    from mtransfer.flows import spec_terms

    large = save_image(tmp_path / "large.png", torch.rand(3, 640, 1024, generator=torch.Generator().manual_seed(3)))
    page = browser_page.page
    page.set_default_timeout(30_000)
    page.goto(app_url)
    page.set_input_files("#image-upload input[type=file]", str(large))
    wait_for_new_src(page, "#canvas", None)
    picture = page.locator("#canvas img")
    assert picture.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [512, 320]
    assert page.locator("#slider-0 input[type=number]").get_attribute("max") == "512"  # dx: up to half the width
    label = page.inner_text("#slider-0")  # in words, the spec's name under it
    assert label.startswith("shift to the right (px of the image)") and "\ndx\n" in label

    # A centre placed by a click at the canvas's middle: the image's middle.
    choose_motion(page, "rotate")
    box = picture.bounding_box()
    shown = min(box["width"] / 512, box["height"] / 320)
    before = image_src(page, "#canvas")
    picture.click(position={"x": box["width"] / 2, "y": box["height"] / 2})
    page.wait_for_function("() => document.querySelector('#spec textarea').value.startsWith('rotate(')")
    wait_for_new_src(page, "#canvas", before)  # the canvas redrawn: the drag below starts on the new picture
    (term,) = spec_terms(page.input_value("#spec textarea"), 640, 1024)
    assert term.values["cx"] == pytest.approx(512, abs=3) and term.values["cy"] == pytest.approx(320, abs=3)
    assert "px of the 1024x640 image" in page.inner_text("#motion-status")

    # An arrow dragged 40 screen px right: 40 / shown canvas px, twice that in the image's pixels.
    box = picture.bounding_box()  # where the picture is now (the page around it may have moved)
    shown = min(box["width"] / 512, box["height"] / 320)
    x0, y0 = box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5
    page.mouse.move(x0, y0)
    page.mouse.down()
    for k in range(1, 9):
        page.mouse.move(x0 + 5 * k, y0)
    page.mouse.up()
    page.wait_for_function("() => document.querySelector('#spec textarea').value.includes('| translate(')")
    terms = spec_terms(page.input_value("#spec textarea"), 640, 1024)
    assert terms[-1].values["dx"] == pytest.approx(2 * 40 / shown, abs=1.5)
    assert "motion up to" in page.inner_text("#motion-status")
    shot(page, "13-large-image")
    assert browser_page.blocked == [] and browser_page.errors == []
