"""Stable Diffusion 2.x: a v-prediction model (the tiny random one built from the SD 2.1 configs) steps
exactly as diffusers' DDIMScheduler with ``prediction_type="v_prediction"``, and a guided edit runs on it."""

from __future__ import annotations

import re
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


# The published stabilityai/stable-diffusion-2-1 configs, as vendored in public repositories (checked 2026-12-03):
# unet/config.json quoted in full in kohya-ss/sd-scripts library/original_unet.py (the "v2.1" block) and the
# Flax copy in Vikas-2025/Hugging_face_sta_dif_2.1 (unet/, vae/, scheduler/: DDIMScheduler, v_prediction);
# text_encoder/config.json of stable-diffusion-2-1-base in jack-op11/stable-diffusion-2-1-base (the 2.x text
# encoder is one model; kohya's model_util builds the same CLIPTextConfig for every v2 checkpoint). 2-1-base
# differs from 2-1 only in unet sample_size 64, no upcast_attention, and an epsilon PNDMScheduler. Parameter
# counts: buddy-compiler/buddy-mlir examples/BuddyStableDiffusion (weights exported from the real model).
SD_2_1 = {
    "unet": {"attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "use_linear_projection": True,
             "upcast_attention": True, "sample_size": 96, "block_out_channels": [320, 640, 1280, 1280],
             "layers_per_block": 2, "in_channels": 4},
    "vae": {"sample_size": 768, "block_out_channels": [128, 256, 512, 512], "latent_channels": 4},
    "text_encoder": {"hidden_size": 1024, "num_hidden_layers": 23, "hidden_act": "gelu", "num_attention_heads": 16,
                     "intermediate_size": 4096, "projection_dim": 512},
    "scheduler": {"_class_name": "DDIMScheduler", "prediction_type": "v_prediction", "beta_schedule": "scaled_linear",
                  "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000, "steps_offset": 1,
                  "set_alpha_to_one": False, "clip_sample": False},
}


@pytest.mark.parametrize("component", sorted(SD_2_1))
def test_the_shipped_sd_2_1_configs_are_the_published_ones(component: str) -> None:
    shipped = real_config(component, "sd-2-1")
    assert {key: shipped.get(key) for key in SD_2_1[component]} == SD_2_1[component]


def test_the_sd_2_1_configs_build_the_published_parameter_counts() -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text = {k: v for k, v in real_config("text_encoder", "sd-2-1").items() if k != "architectures"}
    with torch.device("meta"):  # no memory: shapes only
        unet = UNet2DConditionModel.from_config(real_config("unet", "sd-2-1"))
        vae = AutoencoderKL.from_config(real_config("vae", "sd-2-1"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**text))
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert (count(unet), count(text_encoder)) == (865_910_724, 340_387_840)
    assert count(vae) == 83_653_863  # the same VAE architecture as SD v1.4's


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



@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ({"addition_embed_type": "text_time", "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 80},
         "'text_time' extra conditioning (SDXL)"),
        ({"in_channels": 9}, "takes 9 input channels"),
    ],
)
def test_sdxl_and_inpainting_unets_are_refused_in_one_line(
    cache: Path, monkeypatch, change: dict, refused: str
) -> None:
    from diffusers import UNet2DConditionModel

    from mtransfer.diffusion.stable_diffusion import backend_from_components, load_components, tiny_config

    monkeypatch.setenv("MTRANSFER_CACHE", str(cache))
    parts = load_components("tiny-sd2")
    unet = UNet2DConditionModel.from_config({**tiny_config("unet", "sd-2-1"), **change})
    with pytest.raises(InputError, match=re.escape(refused)):
        backend_from_components({**parts, "unet": unet}, "other-model")
