"""The web app's pure pieces: controls ↔ spec text, arrows → flow, checked uploads, the one-job queue."""

from __future__ import annotations

import threading

import pytest
import torch

from mtransfer.errors import InputError, Interrupted, MtransferError
from mtransfer.flows import format_spec, parse_flow_spec, spec_terms
from mtransfer.ui import motion
from mtransfer.ui.jobs import Busy, JobQueue
from mtransfer.ui.uploads import UploadLimits, accept_image, accept_mask, accept_video, new_run_folder

H, W = 48, 64


@pytest.mark.parametrize("kind", motion.CONTROL_KINDS)
def test_controls_spec_controls_round_trip(kind):
    """Controls → spec text → parsed terms → controls gives back the same numbers and the same flow."""
    values = [slider.minimum + 0.37 * (slider.maximum - slider.minimum) for slider in motion.sliders(kind, H, W)]
    if kind == "wobble":
        values[2] = 7  # a seed is a whole number
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


def test_replace_last_and_append():
    spec = motion.append_term("", motion.controls_to_term("translate", [10, 0], None, H, W), H, W)
    assert spec == "translate(10, dy=0)"
    spec = motion.append_term(spec, motion.controls_to_term("rotate", [15], (3, 4), H, W), H, W)
    spec = motion.replace_last(spec, motion.controls_to_term("rotate", [-5], (3, 4), H, W), H, W)
    assert spec == "translate(10, dy=0) | rotate(-5, cx=3, cy=4)"


def test_arrow_moves_the_masked_region_by_end_minus_start():
    mask = torch.zeros(1, H, W)
    mask[:, 10:20, 30:40] = 1.0
    flow = motion.arrow_to_flow((31.0, 12.0), (36.5, 9.0), H, W, mask)
    inside, outside = flow[:, 10:20, 30:40], flow.clone()
    outside[:, 10:20, 30:40] = 0
    assert torch.all(inside[0] == 5.5) and torch.all(inside[1] == -3.0)
    assert torch.all(outside == 0)
    whole = motion.arrow_to_flow((0.0, 0.0), (-2.0, 1.0), H, W)
    assert torch.all(whole[0] == -2.0) and torch.all(whole[1] == 1.0)


def test_arrow_term_is_the_same_motion_as_the_arrow_flow(tmp_path):
    from mtransfer.files import save_image

    mask = torch.zeros(1, H, W)
    mask[:, 5:25, 8:30] = 1.0
    path = save_image(tmp_path / "mask.png", mask)
    text = format_spec([motion.arrow_to_term((8.0, 5.0), (20.0, 9.0), str(path))])
    expected = motion.arrow_to_flow((8.0, 5.0), (20.0, 9.0), H, W, mask)
    assert torch.allclose(motion.spec_flow(text, H, W, tmp_path), expected)


def test_spec_flow_refuses_masks_outside_the_session_folder(tmp_path):
    session = tmp_path / "session"
    session.mkdir()
    with pytest.raises(MtransferError, match="only masks uploaded in this page"):
        motion.spec_flow("translate(3, mask=/etc/hostname)", H, W, session)


def test_previews_are_images_of_the_canvas_size():
    image = torch.rand(3, H, W)
    for picture in motion.previews(image, parse_flow_spec("rotate(10)", H, W)):
        assert picture.shape == (3, H, W) and float(picture.min()) >= 0 and float(picture.max()) <= 1


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
    release = threading.Event()

    def work(job):
        job.begin("steps", 1000)
        for _ in range(1000):
            release.wait(5)
            job.tick()

    job = queue.submit("long", work)
    with pytest.raises(Busy, match="still running"):
        queue.submit("second", lambda job: None)
    assert queue.cancel().startswith("cancelling")
    release.set()
    assert job.finished.wait(5)
    assert isinstance(job.error, Interrupted) and job.done == 1
    assert queue.submit("next", lambda job: 42).finished.wait(5)
    assert queue.current.result == 42
