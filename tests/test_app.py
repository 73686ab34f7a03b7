"""The application layer: settings that travel to a worker process, and one Editor for every front end."""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch

from mtransfer.app import STAGES, Editor, RunSettings, load_settings
from mtransfer.errors import MtransferError
from mtransfer.files import load_image
from mtransfer.flows import rotation, translation
from mtransfer.guidance import edit_image, prepare_source

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "sample_videos" / "cat.png"
PRESET = str(Path(__file__).resolve().parent / "data" / "run-test.toml")


def test_settings_pickle_and_every_declared_stage_exists() -> None:
    settings = load_settings(PRESET, ["guidance.steps=4"])
    assert pickle.loads(pickle.dumps(settings)) == settings
    declared = {stage for stage, sections in settings.by_stage().items() if sections}
    assert declared <= set(STAGES)
    own = settings.by_stage()
    # The examples: what shapes which stage, and what shapes none.
    assert "size" in own["align"]["model"] and "stride" in own["decode"]["video"]
    assert "estimator" in own["flow"]["video"] and "init" in own["guide"]["video"]
    assert "fps" in own["encode"]["output"]
    every = [(section, key) for stage in own.values() for section, keys in stage.items() for key in keys]
    assert len(every) == len(set(every))  # each setting under one stage at most


@pytest.mark.parametrize(
    ("override", "first_changed"),
    [
        ('model.device="cuda"', None), ("guidance.preview_every=2", None), ("video.batch_size=2", None),
        ("video.batch=2", None), ('execution.executor="ray"', None), ("execution.workers=3", None),
        ("video.stride=2", "decode"), ("video.max_frames=3", "decode"), ('video.estimator="tvl1"', "flow"),
        ("align.mask_margin=3", "align"), ("model.size=[32, 40]", "align"), ("guidance.steps=4", "guide"),
        ("estimator.iterations=2", "guide"), ("output.fps=5", "encode"),
    ],
)
def test_a_setting_changes_the_results_of_its_stage_and_every_later_one_only(override, first_changed) -> None:
    """What a run's resume check compares: a setting that shapes no stage (device, memory, previews, where
    frames are made) changes no stage's record; any other changes its own stage and every later one."""
    before = load_settings(PRESET).stage_settings()
    after = load_settings(PRESET, [override]).stage_settings()
    changed = [stage for stage in STAGES if before.get(stage) != after.get(stage)]
    assert changed == ([] if first_changed is None else list(STAGES[STAGES.index(first_changed):]))


def test_guidance_through_a_non_differentiable_estimator_is_refused() -> None:
    settings = load_settings(PRESET, ['estimator.name="ilk"'])
    with pytest.raises(MtransferError, match=r"^estimator\.name: 'ilk' is not differentiable"):
        Editor.load(settings, load_image(IMAGE, (32, 48)))


def edit_in_a_worker(settings: RunSettings) -> torch.Tensor:
    """What a worker process does with nothing but plain settings: load, prepare, edit."""
    source = load_image(IMAGE, settings.model.size)
    with Editor.load(settings, source, "cpu") as editor:
        state = editor.prepare(source)
        return editor.edit(state, translation(*settings.model.size, 2.0, 0.0)).image


def test_the_editor_equals_the_lower_level_api_and_runs_in_another_process() -> None:
    settings = load_settings(PRESET)
    source = load_image(IMAGE, settings.model.size)
    flow = translation(*settings.model.size, 2.0, 0.0)
    with Editor.load(settings, source, "cpu") as editor:
        direct_state = prepare_source(editor.backend, source, settings.model.prompt, settings.guidance)
        direct = edit_image(editor.backend, editor.estimator, direct_state, flow, settings.guidance)
    here = edit_in_a_worker(settings)
    assert torch.equal(here, direct.image)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        there = pool.submit(edit_in_a_worker, settings).result(timeout=300)
    assert torch.equal(there, here)


@pytest.mark.parametrize("preset", ["tiny", "offline-demo"])
def test_a_batch_of_edits_gives_each_its_own_result(preset: str) -> None:
    """Three flows edited as one batch (with edit masks, so the copy mask is per item too) give each
    what it gets alone: energies, clipping and recursion noise are per edit."""
    settings = load_settings(preset, ["guidance.steps=3", "guidance.recursions=2", "model.size=[32, 48]"])
    source = load_image(IMAGE, settings.model.size)
    height, width = settings.model.size
    flows = torch.stack([translation(height, width, 2.0, 0.0), translation(height, width, -1.0, 1.5),
                         rotation(height, width, 4.0)])
    masks = [torch.zeros(1, height, width) for _ in flows]
    for b, mask in enumerate(masks):
        mask[:, 4 * b : 4 * b + 20, 8:40] = 1
    with Editor.load(settings, source, "cpu") as editor:
        state = editor.prepare(source)
        together = editor.edit_many(state, flows, masks)
        alone = [editor.edit(state, flow, edit_mask=mask) for flow, mask in zip(flows, masks)]
    for joint, single in zip(together, alone):
        assert (joint.latent - single.latent).abs().max() < 1e-4
        assert (joint.image - single.image).abs().max() < 1e-4
        assert [r["step"] for r in joint.losses] == [r["step"] for r in single.losses]
        assert joint.losses[-1]["total"] == pytest.approx(single.losses[-1]["total"], rel=1e-4, abs=1e-6)
    # The three edits differ, so the comparison above is not the same result thrice.
    assert (together[0].latent - together[1].latent).abs().max() > 1e-3
