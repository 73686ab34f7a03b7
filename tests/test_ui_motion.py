"""The web app's pure pieces: controls ↔ spec text, arrows → flow, checked uploads, the one-job queue."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from mtransfer.errors import InputError, Interrupted, MtransferError
from mtransfer.flows import format_spec, parse_flow_spec, read_mask, spec_terms
from mtransfer.flows.spec import MOTIONS
from mtransfer.ui import motion
from mtransfer.ui.jobs import Busy, JobQueue
from mtransfer.ui.uploads import (
    UploadLimits,
    accept_image,
    accept_mask,
    accept_painted_mask,
    accept_video,
    new_run_folder,
)

H, W = 48, 64


@pytest.mark.parametrize("kind", sorted(MOTIONS))
def test_the_sliders_are_the_spec_languages_parameters(kind):
    """Every parameter of a motion but its centre (placed by a click) has a slider, in the spec's order,
    starting inside its range; the slider of a length given in % follows the image size."""
    params = [p.name for p in MOTIONS[kind].params if p.name not in ("cx", "cy")]
    assert [slider.name for slider in motion.sliders(kind, H, W)] == params
    for slider in motion.sliders(kind, H, W):
        assert slider.minimum <= slider.value <= slider.maximum and slider.step > 0
    length_kinds = {p.name for p in MOTIONS[kind].params if p.kind in ("dx", "dy", "side")}
    doubled = {s.name: s.maximum for s in motion.sliders(kind, 2 * H, 2 * W)}
    for slider in motion.sliders(kind, H, W):
        if slider.name in length_kinds:
            assert doubled[slider.name] == 2 * slider.maximum


@pytest.mark.parametrize("kind", motion.CONTROL_KINDS)
def test_controls_spec_controls_round_trip(kind):
    """Controls → spec text → parsed terms → controls gives back the same numbers and the same flow."""
    # values the sliders can take: on their step grid
    values = [slider.minimum + round(0.37 * (slider.maximum - slider.minimum) / slider.step) * slider.step
              for slider in motion.sliders(kind, H, W)]
    term = motion.controls_to_term(kind, values, (20.5, 11.25), H, W)
    text = format_spec([term])
    assert spec_terms(text, H, W) == [term]
    shown_kind, shown_values, center = motion.term_to_controls(spec_terms(text, H, W)[0], H, W)
    assert shown_kind == kind and shown_values == pytest.approx(values, abs=0, rel=0)
    assert center == ((20.5, 11.25) if motion.has_center(kind) else None)


def test_spec_text_with_percentages_reads_into_pixels():
    """Typed text uses the --flow language: positions are shares of the span between the first and last
    pixel centres, horizontal lengths shares of the width."""
    (term,) = spec_terms("rotate(30, cx=25%, cy=100%)", H, W)
    assert term.values == {"degrees": 30.0, "cx": 0.25 * (W - 1), "cy": float(H - 1)}
    (term,) = spec_terms("translate(50%)", H, W)
    assert motion.term_to_controls(term, H, W) == ("translate", [W / 2, 0.0], None)


def test_formatted_spec_gives_the_flow_of_the_original_text():
    original = "rotate(20, cx=40%, cy=30%) | twirl(45, radius=25%) * 0.5 | homography(0, 5%, 100%, 0, 95%, 100%, 5%, 95%)"
    rewritten = format_spec(spec_terms(original, H, W))
    assert torch.allclose(parse_flow_spec(rewritten, H, W), parse_flow_spec(original, H, W), atol=1e-4)


def test_controls_refuse_what_they_cannot_show():
    (term,) = spec_terms("translate(5) * 2", H, W)
    with pytest.raises(MtransferError, match="spec text only"):
        motion.term_to_controls(term, H, W)
    (matrix,) = spec_terms("homography(1, 0, 2, 0, 1, 0, 0, 0, 1)", H, W)
    with pytest.raises(MtransferError, match="matrix is edited in the spec text only"):
        motion.term_to_controls(matrix, H, W)


def test_homography_controls_move_each_image_corner_by_its_offset():
    """The eight sliders are the corners' offsets (top-left, top-right, bottom-right, bottom-left; dx, dy):
    the corner pixel (0, 0), (W-1, 0), (W-1, H-1), (0, H-1) moves by exactly its offset, and the spec text
    names where each corner goes, as ``homography(x1, y1, ..., x4, y4)`` does."""
    offsets = [4, -2, -6, 3, 1, 5, -3, -1]
    term = motion.controls_to_term("homography", offsets, None, H, W)
    text = format_spec([term])
    assert text == f"homography(4, -2, {W - 1 - 6}, 3, {W - 1 + 1}, {H - 1 + 5}, -3, {H - 1 - 1})"
    flow = parse_flow_spec(text, H, W)
    for (x, y), i in zip([(0, 0), (W - 1, 0), (W - 1, H - 1), (0, H - 1)], range(0, 8, 2)):
        assert flow[:, y, x].tolist() == pytest.approx(offsets[i : i + 2], abs=1e-3)
    assert motion.term_to_controls(spec_terms(text, H, W)[0], H, W) == ("homography", offsets, None)
    assert not motion.has_center("homography")
    assert len(motion.sliders("homography", H, W)) == motion.SLIDER_COUNT == 8


def test_replace_last_and_append():
    spec = motion.append_term("", motion.controls_to_term("translate", [10, 0], None, H, W), H, W)
    assert spec == "translate(10, dy=0)"
    spec = motion.append_term(spec, motion.controls_to_term("rotate", [15], (3, 4), H, W), H, W)
    spec = motion.replace_last(spec, motion.controls_to_term("rotate", [-5], (3, 4), H, W), H, W)
    assert spec == "translate(10, dy=0) | rotate(-5, cx=3, cy=4)"


def test_an_arrow_moves_the_masked_region_by_end_minus_start(tmp_path):
    """The arrow's term, read back as spec text like any typed motion: inside the mask every pixel moves by
    end - start, outside nothing moves; without a mask everything moves."""
    from mtransfer.files import save_image

    mask = torch.zeros(1, H, W)
    mask[:, 10:20, 30:40] = 1.0
    path = save_image(tmp_path / "mask.png", mask)
    text = format_spec([motion.arrow_to_term((31.0, 12.0), (36.5, 9.0), str(path))])
    flow = motion.spec_flow(text, H, W, tmp_path)
    inside, outside = flow[:, 10:20, 30:40], flow.clone()
    outside[:, 10:20, 30:40] = 0
    assert torch.allclose(inside[0], torch.tensor(5.5)) and torch.allclose(inside[1], torch.tensor(-3.0))
    assert torch.all(outside == 0)
    whole = motion.spec_flow(format_spec([motion.arrow_to_term((0.0, 0.0), (-2.0, 1.0))]), H, W, tmp_path)
    assert torch.all(whole[0] == -2.0) and torch.all(whole[1] == 1.0)


def test_dragged_arrow_text_is_start_then_end():
    assert motion.parse_arrow(" 10.5 20 30 12.0 ") == ((10.5, 20.0), (30.0, 12.0))
    term = motion.arrow_to_term(*motion.parse_arrow("10.5 20 30 12"))
    assert term.values == {"dx": 19.5, "dy": -8.0}
    for bad in ("", "1 2 3", "1 2 3 x", "1 2 3 4 5"):
        with pytest.raises(MtransferError, match="four numbers 'x0 y0 x1 y1'"):
            motion.parse_arrow(bad)


def test_painted_mask_is_what_was_painted_stored_like_an_uploaded_one(tmp_path):
    """Painted pixels (any colour, any opacity) move, the rest stays; each mask gets its own numbered file,
    so a term naming an earlier mask keeps its meaning; a spec term can name the painted file."""
    folder = new_run_folder(tmp_path / "ui", "session")
    layer = np.zeros((H, W, 4), np.uint8)
    layer[10:20, 30:40] = (26, 128, 255, 150)
    first = accept_painted_mask(layer, folder, (H, W))
    assert first == folder / "mask-01.png"
    expected = torch.zeros(1, H, W)
    expected[:, 10:20, 30:40] = 1
    assert torch.equal(read_mask(first), expected)
    assert accept_painted_mask(np.zeros((H, W, 4), np.uint8), folder, (H, W)) is None  # nothing painted
    uploaded = accept_mask(first, folder, (H, W))
    assert uploaded == folder / "mask-02.png" and torch.equal(read_mask(uploaded), expected)
    half = accept_painted_mask(np.repeat(np.repeat(layer, 2, axis=0), 2, axis=1), folder, (H, W))
    assert half.name == "mask-03.png" and torch.allclose(read_mask(half), expected, atol=1 / 255)
    flow = motion.spec_flow(f"translate(3, 1, mask={first})", H, W, folder)
    moved = torch.zeros(2, H, W)
    moved[0, 10:20, 30:40], moved[1, 10:20, 30:40] = 3.0, 1.0
    assert torch.equal(flow, moved)
    with pytest.raises(InputError, match="not an RGBA layer"):
        accept_painted_mask(np.zeros((H, W, 3), np.uint8), folder, (H, W))


def test_spec_flow_refuses_masks_outside_the_session_folder(tmp_path):
    session = tmp_path / "session"
    session.mkdir()
    with pytest.raises(MtransferError, match="only masks uploaded in this page"):
        motion.spec_flow("translate(3, mask=/etc/hostname)", H, W, session)


def test_previews_are_images_of_the_canvas_size():
    image = torch.rand(3, H, W)
    for picture in motion.previews(image, parse_flow_spec("rotate(10)", H, W)):
        assert picture.shape == (3, H, W) and float(picture.min()) >= 0 and float(picture.max()) <= 1


def test_mask_is_tinted_on_the_canvas_preview_and_nowhere_else():
    image = torch.rand(3, H, W)
    flow = torch.zeros(2, H, W)
    mask = torch.zeros(1, H, W)
    mask[:, 10:20, 30:40] = 1
    plain, color, moved = motion.previews(image, flow)
    tinted, color_masked, moved_masked = motion.previews(image, flow, mask)
    outside = mask[0] == 0
    assert torch.equal(tinted[:, outside], plain[:, outside])
    tint = torch.tensor(motion.MASK_TINT).view(3, 1)
    inside = mask[0] == 1
    assert torch.all((tinted[:, inside] - tint).abs() < (plain[:, inside] - tint).abs() + 1e-6)
    assert torch.equal(color, color_masked) and torch.equal(moved, moved_masked)


def test_uploads_are_checked_and_stored_under_generated_names(tmp_path):
    folder = new_run_folder(tmp_path / "ui", "session")
    text = tmp_path / "holiday photo.png"
    text.write_text("not an image")
    with pytest.raises(InputError) as caught:
        accept_image(text, folder)
    assert str(caught.value).startswith("upload 'holiday photo.png': not a readable image")
    assert str(tmp_path) not in str(caught.value)  # the server's path is not shown
    with pytest.raises(InputError, match="over the limit of 0 MiB for a image"):
        accept_image("sample_videos/cat.png", folder, UploadLimits(image_bytes=10))
    stored = accept_image("sample_videos/cat.png", folder)
    assert stored == folder / "source.png" and stored.is_file()
    with pytest.raises(InputError, match="not a video clip"):
        accept_video(text, folder)  # a text file named .png opens as a one-frame image sequence
    fake_clip = tmp_path / "clip.mp4"
    fake_clip.write_text("not a video")
    with pytest.raises(InputError, match="upload 'clip.mp4': not a readable video"):
        accept_video(fake_clip, folder)
    with pytest.raises(InputError, match="frames is over the limit of 3"):
        accept_video("sample_videos/pan.mp4", folder, UploadLimits(video_frames=3))
    assert accept_video("sample_videos/pan.mp4", folder) == folder / "driving.mp4"
    black = tmp_path / "black.png"
    from mtransfer.files import save_image
    save_image(black, torch.zeros(1, 8, 8))
    with pytest.raises(InputError, match="black everywhere"):
        accept_mask(black, folder, (H, W))
    assert sorted(p.name for p in folder.iterdir()) == ["driving.mp4", "source.png"]


def test_job_queue_runs_one_job_and_cancels_at_the_next_step():
    queue = JobQueue()
    release, begun = threading.Event(), threading.Event()

    def work(job):
        job.begin("steps", 1000)
        begun.set()
        for _ in range(1000):
            release.wait(5)
            job.tick()

    job = queue.submit("long", work)
    assert begun.wait(5)
    with pytest.raises(Busy, match="still running"):
        queue.submit("second", lambda job: None)
    assert queue.cancel().startswith("cancelling")
    release.set()
    assert job.finished.wait(5)
    assert isinstance(job.error, Interrupted) and job.done == 1
    assert queue.submit("next", lambda job: 42).finished.wait(5)
    assert queue.current.result == 42


def test_an_uploaded_name_reaches_the_file_system_only_as_a_safe_stem(tmp_path):
    from mtransfer.ui.uploads import safe_stem

    assert safe_stem("my cat (1).PNG", "image") == "my-cat-1"
    assert safe_stem("../../etc/passwd", "image") == "passwd"
    assert safe_stem("...", "image") == "image" and safe_stem("日本.mp4", "driving") == "driving"
    assert len(safe_stem("a" * 300 + ".mp4", "driving")) == 40
    assert accept_video("sample_videos/pan.mp4", tmp_path, stem="pan") == tmp_path / "pan.mp4"


def test_a_large_images_canvas_points_and_flows_are_in_the_images_pixels(tmp_path):
    """On an image larger than the canvas a click lands in the image's pixels, and the canvas shows the
    spec's flow scaled down to it."""
    from mtransfer.files import save_image
    from mtransfer.ui.session import CANVAS_LONGEST, Session

    save_image(tmp_path / "source.png", torch.rand(3, 600, 1000, generator=torch.Generator().manual_seed(0)))
    session = Session(tmp_path, "wide.png")
    assert session.size == (307, CANVAS_LONGEST) and session.original_size == (600, 1000)
    assert session.to_image(256, 153.5) == pytest.approx((500, 300), abs=0.5)
    assert float(session.image_flow("translate(40, 0)")[0].mean()) == pytest.approx(40)
    assert float(session.flow("translate(40, 0)")[0].mean()) == pytest.approx(40 * CANVAS_LONGEST / 1000, rel=1e-3)
