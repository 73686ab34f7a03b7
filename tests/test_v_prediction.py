"""Stable Diffusion 2.x: a v-prediction model (the tiny random one built from the SD 2.1 configs) steps
exactly as diffusers' DDIMScheduler with ``prediction_type="v_prediction"``, and a guided edit runs on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler

from mtransfer.diffusion import alpha_bars, ddim_invert, ddim_step, ddim_timesteps, eps_from_v, predict_x0
from mtransfer.diffusion.stable_diffusion import load_stable_diffusion, real_config, tiny_stable_diffusion_folder
from mtransfer.errors import InputError
from tests.in_process import run_main


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mtransfer-cache")


@pytest.fixture()
def sd2(cache: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MTRANSFER_CACHE", str(cache))
    return load_stable_diffusion("tiny-sd2")


def test_the_tiny_sd2_is_a_v_prediction_model_from_the_sd_2_1_configs(sd2) -> None:
    assert sd2.prediction_type == "v_prediction"
    assert real_config("scheduler", "sd-2-1")["prediction_type"] == "v_prediction"
    assert sd2.unet.config.use_linear_projection and sd2.unet.config.upcast_attention  # SD 2.1's UNet
    assert sd2.text_encoder.config.hidden_act == "gelu"  # OpenCLIP's activation, not CLIP's quick_gelu


@pytest.mark.parametrize("num_steps", [10, 25])
def test_every_ddim_step_matches_diffusers_v_prediction(sd2, cache: Path, num_steps: int) -> None:
    scheduler = DDIMScheduler.from_pretrained(tiny_stable_diffusion_folder("tiny-sd2"), subfolder="scheduler")
    assert scheduler.config.prediction_type == "v_prediction"
    scheduler.set_timesteps(num_steps)
    timesteps = ddim_timesteps(len(sd2.alphas_cumprod), num_steps)
    assert timesteps == scheduler.timesteps.tolist()
    cond = sd2.condition(["a cat"])
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t, (a_t, a_prev) in zip(timesteps, alpha_bars(sd2.alphas_cumprod, timesteps)):
            v = sd2.unet(z, t, encoder_hidden_states=cond).sample
            expected = scheduler.step(v, t, z, eta=0.0)
            eps = sd2.eps(z, t, cond)
            torch.testing.assert_close(ddim_step(z, eps, a_t, a_prev), expected.prev_sample, rtol=0, atol=1e-5)
            torch.testing.assert_close(predict_x0(z, eps, a_t), expected.pred_original_sample, rtol=0, atol=1e-5)
            # The model's raw output is not a noise estimate: taken for one, the step lands elsewhere.
            assert (ddim_step(z, v, a_t, a_prev) - expected.prev_sample).abs().max() > 1e-3
            z = expected.prev_sample


def test_inversion_of_a_v_model_uses_its_noise_estimate(sd2) -> None:
    """One inversion step is DDIM run upwards with the eps the v-prediction implies at the target timestep."""
    cond = sd2.condition([""])
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    timesteps = ddim_timesteps(1000, 5)
    latents = ddim_invert(lambda z, t: sd2.eps(z, t, cond), z0, timesteps, sd2.alphas_cumprod)
    a_t, a_prev = alpha_bars(sd2.alphas_cumprod, timesteps)[-1]
    with torch.no_grad():
        v = sd2.unet(z0, timesteps[-1], encoder_hidden_states=cond).sample
    expected = ddim_step(z0, eps_from_v(z0, v, a_t), a_prev, a_t)
    torch.testing.assert_close(latents[-2], expected, rtol=0, atol=1e-6)


def test_a_guided_edit_runs_on_the_v_prediction_model(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from mtransfer.files import load_image, save_image

    monkeypatch.setenv("MTRANSFER_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    save_image(tmp_path / "photo.png", torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)))
    code, err = run_main(
        monkeypatch, capsys, "edit", "photo.png", "--flow", "translate(3, 0)", "--model", "tiny-sd2",
        "--estimator", "pyramid", "--size", "64x64", "--device", "cpu", "--steps", "3", "--recursions", "2",
        "--out", "out",
    )
    assert code == 0, err
    edited = load_image(tmp_path / "out" / "edited.png")
    assert edited.shape == (3, 64, 64) and torch.isfinite(edited).all()
    assert (edited - load_image(tmp_path / "photo.png")).abs().mean() > 1e-3


def test_a_scheduler_predicting_the_sample_is_refused(cache: Path, tmp_path: Path, monkeypatch) -> None:
    import json
    import shutil

    monkeypatch.setenv("MTRANSFER_CACHE", str(cache))
    folder = tmp_path / "sample-model"
    shutil.copytree(tiny_stable_diffusion_folder("tiny-sd2"), folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "prediction_type": "sample"}))
    with pytest.raises(InputError, match="prediction_type is 'sample'"):
        load_stable_diffusion(folder)
