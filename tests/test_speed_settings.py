"""`model.speed` in presets: validated up front, and same-math switches leave an edit's result unchanged."""

from __future__ import annotations

import pytest
import torch

from mtransfer.diffusion import stable_diffusion as sd
from mtransfer.errors import MtransferError
from mtransfer.estimators import PyramidEstimator
from mtransfer.guidance import GuidanceConfig, edit_image, prepare_source
from mtransfer.pipeline.settings import RunSettings
from mtransfer.presets import load_pipeline
from mtransfer.speed import speed_switches


def test_unknown_speed_switch_is_refused_before_any_work() -> None:
    with pytest.raises(MtransferError, match="unknown speed switch 'warp9'"):
        RunSettings.from_config(load_pipeline("tiny", ['model.speed="sdpa+warp9"']))
    assert RunSettings.from_config(load_pipeline("tiny", ['model.speed="sdpa+channels-last"'])).model.speed


def test_same_math_switches_give_the_same_edit(tmp_path_factory: pytest.TempPathFactory) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTRANSFER_CACHE", str(tmp_path_factory.mktemp("mtransfer-cache")))
        backend = sd.load_stable_diffusion("tiny")
    config = GuidanceConfig(steps=3, recursions=2, guidance_weight=50.0, preview_every=0)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    flow = torch.zeros(2, 64, 64)
    flow[0, 16:40, 16:40] = 3.0
    estimator = PyramidEstimator(levels=3, iterations=1)
    state = prepare_source(backend, image, "a cat", config)
    plain = edit_image(backend, estimator, state, flow, config)
    with speed_switches(backend, estimator, "sdpa+channels-last") as (fast_backend, fast_estimator):
        fast = edit_image(fast_backend, fast_estimator, state, flow, config)
    # the same arithmetic up to float reassociation (latents of the tiny model reach magnitudes of ~40)
    assert (fast.latent - plain.latent).abs().max() < 1e-3 * plain.latent.abs().max()
    with speed_switches(backend, estimator, "") as (same_backend, same_estimator):
        assert same_backend is backend and same_estimator is estimator
