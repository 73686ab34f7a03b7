"""`model.speed` in presets: validated up front, and same-math switches leave an edit's result unchanged."""

from __future__ import annotations

import pytest
import torch

from mtransfer.app import load_settings
from mtransfer.diffusion import stable_diffusion as sd
from mtransfer.errors import MtransferError
from mtransfer.estimators import PyramidEstimator
from mtransfer.guidance import GuidanceSettings, edit_image, prepare_source
from mtransfer.speed import speed_switches


def test_unknown_speed_switch_is_refused_before_any_work() -> None:
    with pytest.raises(MtransferError, match="unknown speed switch 'warp9'"):
        load_settings("tiny", ['model.speed="sdpa+warp9"'])
    assert load_settings("tiny", ['model.speed="sdpa+channels-last"']).model.speed


@pytest.fixture(scope="module")
def problem(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTRANSFER_CACHE", str(tmp_path_factory.mktemp("mtransfer-cache")))
        backend = sd.load_stable_diffusion("tiny")
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    flow = torch.zeros(2, 64, 64)
    flow[0, 16:40, 16:40] = 3.0
    return backend, PyramidEstimator(levels=3, iterations=1), image, flow


def relative_drift(problem, config: GuidanceSettings) -> float:
    """Max |latent difference| between a plain edit and one under ``sdpa+channels-last``, relative to the
    plain latent's max |value|."""
    backend, estimator, image, flow = problem
    state = prepare_source(backend, image, "a cat", config)
    plain = edit_image(backend, estimator, state, flow, config)
    with speed_switches(backend, estimator, "sdpa+channels-last") as (fast_backend, fast_estimator):
        fast = edit_image(fast_backend, fast_estimator, state, flow, config)
    return float((fast.latent - plain.latent).abs().max() / plain.latent.abs().max())


# The switches reorder float32 sums (channels-last picks other convolution kernels), which moves a result
# by a few float32 roundings of its size, ~1e-6 relative after a UNet or a VAE: 1e-4 is a hundred times that
# and far below any change in the update rule. The comparisons are made where that is what they measure:
# - an unguided 3-step x 2-recursion edit (eps, DDIM steps, renoising, the mask-free paste, the decode);
# - one guided pass (the energy's gradient through the decoder and the estimator, clipping).
# A several-step *guided* run is not compared: its guidance gradient is only piecewise smooth (bilinear
# warps inside the estimator, the occlusion mask, the clamp), so a rounding-size change can pick another
# piece and the runs drift apart by far more than the rounding. Measured on the tiny model (3 steps x 2
# recursions, weight 50): the start latent perturbed by float32 roundoff (2^-23 of its size) moves the
# result by up to 1e-3 relative, the same as these switches; a bound there would test chance, not math.
SAME_MATH = 1e-4


def test_same_math_switches_give_the_same_unguided_edit(problem) -> None:
    config = GuidanceSettings(steps=3, recursions=2, guidance_weight=0.0, preview_every=0)
    assert relative_drift(problem, config) < SAME_MATH


def test_same_math_switches_give_the_same_guided_pass(problem) -> None:
    config = GuidanceSettings(steps=1, recursions=1, guidance_weight=50.0, preview_every=0)
    assert relative_drift(problem, config) < SAME_MATH


def test_empty_speed_spec_leaves_the_models_as_loaded(problem) -> None:
    backend, estimator, _, _ = problem
    with speed_switches(backend, estimator, "") as (same_backend, same_estimator):
        assert same_backend is backend and same_estimator is estimator
