"""Diffusion backends: the exact model (ExactBackend), the tiny / real-config Stable Diffusion, loading errors,
and DDIM inversion round trips on both."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from mtransfer.diffusion import (
    DiffusionBackend,
    ExactBackend,
    alpha_bars,
    ddim_invert,
    ddim_step,
    ddim_timesteps,
    forward_noise,
    motion_family,
)
from mtransfer.diffusion import stable_diffusion as sd
from mtransfer.errors import MtransferError
from mtransfer.flows.elementary import rotation
from mtransfer.flows.ops import move_image


def smooth_image(height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    """A textured (3, H, W) picture: coarse noise upsampled, so small shifts change it clearly."""
    coarse = torch.rand(1, 3, height // 4, width // 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]


def sample(backend: DiffusionBackend, z: torch.Tensor, timesteps: list[int], cond: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        for t, (a_t, a_prev) in zip(timesteps, alpha_bars(backend.alphas_cumprod, timesteps)):
            z = ddim_step(z, backend.eps(z, t, cond), a_t, a_prev)
    return z


# --- exact backend (ExactBackend) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def family() -> torch.Tensor:
    return motion_family(smooth_image(), translations=[(dx, dy) for dx in (-2, 0, 2) for dy in (-2, 0, 2)])


def test_exact_backend_follows_the_protocol(family: torch.Tensor) -> None:
    backend = ExactBackend(family)
    assert isinstance(backend, DiffusionBackend)
    assert backend.alphas_cumprod.shape == (1000,)
    assert backend.latent_size(32, 32) == (3, 32, 32)
    with pytest.raises(MtransferError, match="32x32"):
        backend.latent_size(64, 64)
    torch.testing.assert_close(backend.decode(backend.encode(family)), family)
    assert backend.condition(["a", "b"]).shape[0] == 2


def test_posterior_mean_matches_brute_force_mixture(family: torch.Tensor) -> None:
    backend = ExactBackend(family)
    points = (family * 2 - 1).double().flatten(1)
    z = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for t in (981, 500, 100):
        a = float(backend.alphas_cumprod[t])
        distances = torch.cdist(z.double().flatten(1), math.sqrt(a) * points).square()
        weights = torch.softmax(-distances / (2 * (1 - a)), dim=1)
        expected = (weights @ points).view_as(z).float()
        torch.testing.assert_close(backend.posterior_mean(z, t), expected, rtol=1e-5, atol=1e-5)
        eps = backend.eps(z, t, backend.condition(["", ""]))
        torch.testing.assert_close(z, forward_noise(expected, a, eps), rtol=1e-4, atol=1e-4)


def test_low_noise_denoises_to_the_nearest_image(family: torch.Tensor) -> None:
    backend = ExactBackend(family)
    generator = torch.Generator().manual_seed(4)
    for index in (0, 4, 7):
        a = float(backend.alphas_cumprod[21])
        z = forward_noise(backend.encode(family[index : index + 1]), a, torch.randn(1, 3, 32, 32, generator=generator))
        x0 = backend.decode(backend.posterior_mean(z, 21))
        torch.testing.assert_close(x0[0], family[index], rtol=0, atol=1e-4)


def test_exact_eps_is_differentiable_and_finite(family: torch.Tensor) -> None:
    backend = ExactBackend(family)
    for t in (1, 250, 999):
        z = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(t)).requires_grad_()
        backend.eps(z, t, backend.condition(["", ""])).square().sum().backward()
        assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_exact_inversion_round_trip_recovers_a_member(family: torch.Tensor) -> None:
    """Inverting a member of the set for 50 steps and sampling back lands on it (max error < 0.01 in [0, 1])."""
    backend = ExactBackend(family)
    timesteps = ddim_timesteps(1000, 50)
    cond = backend.condition([""])
    z0 = backend.encode(family[5:6])
    latents = ddim_invert(lambda z, t: backend.eps(z, t, cond), z0, timesteps, backend.alphas_cumprod)
    assert len(latents) == 51 and latents[-1] is z0
    assert float((latents[0] - z0).abs().max()) > 0.5  # it really went somewhere
    restored = backend.decode(sample(backend, latents[0], timesteps, cond))
    assert float((restored - family[5:6]).abs().max()) < 0.01


def test_inversion_latents_are_aligned_with_sampling_levels() -> None:
    """With a noise prediction that ignores z, latents[i] is exactly the clean estimate noised to timesteps[i]."""
    alphas = sd.sd_alphas_cumprod()
    timesteps = ddim_timesteps(1000, 10)
    eps, z0 = torch.randn(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(6)).unbind(0)
    latents = ddim_invert(lambda z, t: eps, z0, timesteps, alphas)
    final = float(alphas[0])
    x0 = (z0 - math.sqrt(1 - final) * eps) / math.sqrt(final)
    for i, t in enumerate(timesteps):
        torch.testing.assert_close(latents[i], forward_noise(x0, float(alphas[t]), eps), rtol=1e-4, atol=1e-4)


def test_motion_family_moves_the_image() -> None:
    image = smooth_image(32, 32, seed=1)
    members = motion_family(image, translations=[(0, 0), (3, -2)], rotations=(0.0, 20.0), scales=(1.0, 1.25))
    assert members.shape == (8, 3, 32, 32)
    torch.testing.assert_close(members[0], image)  # identity first
    # A whole-pixel shift: content at (x, y) appears at (x + 3, y - 2); where nothing arrives, the
    # nearest edge pixel repeats (no black band: a still edge that estimators read as no motion).
    torch.testing.assert_close(members[1][:, :30, 3:], image[:, 2:, :29], rtol=0, atol=1e-5)
    torch.testing.assert_close(members[1][:, :30, :3], image[:, 2:, :1].expand(-1, -1, 3), rtol=0, atol=1e-5)
    torch.testing.assert_close(members[1][:, 30:, 3:], image[:, 31:, :29].expand(-1, 2, -1), rtol=0, atol=1e-5)
    # Rotation agrees with the flows package's convention (compared away from the borders).
    expected = move_image(image, rotation(32, 32, 20.0))
    assert float((members[2] - expected)[:, 8:24, 8:24].abs().max()) < 0.02
    assert len(motion_family(image)) == 25  # default: 5x5 grid of shifts


# --- Stable Diffusion: tiny model, real configs, loading errors ----------------------------------------


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache folder in which the first ``load_stable_diffusion("tiny")`` has built the model."""
    root = tmp_path_factory.mktemp("mtransfer-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTRANSFER_CACHE", str(root))
        sd.load_stable_diffusion("tiny")
    return root


@pytest.fixture(scope="module")
def tiny(tiny_cache: Path) -> sd.StableDiffusionBackend:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTRANSFER_CACHE", str(tiny_cache))
        return sd.load_stable_diffusion("tiny")


def test_tiny_model_is_built_once_then_loaded_from_cache(tiny_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tiny_cache / sd.TINY_NAME
    assert (folder / "model_index.json").is_file() and (folder / "unet" / "config.json").is_file()
    assert [p.name for p in tiny_cache.iterdir()] == [sd.TINY_NAME]  # no staging folder left behind
    monkeypatch.setenv("MTRANSFER_CACHE", str(tiny_cache))

    def must_not_rebuild(*args: object) -> None:
        raise AssertionError("the cached tiny model was rebuilt")

    monkeypatch.setattr(sd, "write_random_stable_diffusion", must_not_rebuild)
    assert isinstance(sd.load_stable_diffusion("tiny"), sd.StableDiffusionBackend)


def test_tiny_model_shapes_and_gradients(tiny: sd.StableDiffusionBackend) -> None:
    assert isinstance(tiny, DiffusionBackend)
    assert tiny.alphas_cumprod.shape == (1000,)
    assert tiny.latent_size(64, 48) == (4, 8, 6)  # the real VAE factor of 8
    with pytest.raises(MtransferError, match="multiple of 8"):
        tiny.latent_size(60, 64)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    latents = tiny.encode(images)
    assert latents.shape == (2, 4, 8, 8)
    assert 0.5 < float(latents.std()) < 2.0  # calibrated like SD's scaling factor
    torch.testing.assert_close(tiny.encode(images), latents)  # deterministic: posterior mean
    cond = tiny.condition(["a cat jumps", "Ünïcode & symbols! 123"])
    assert cond.shape == (2, 77, 32)
    z = latents.clone().requires_grad_()
    eps = tiny.eps(z, 500, cond)
    assert eps.shape == z.shape
    decoded = tiny.decode(z - eps)
    assert decoded.shape == (2, 3, 64, 64) and torch.isfinite(decoded).all()
    # not clamped (the guidance energy decides, GuidanceSettings.clamp): the random decoder overshoots [0, 1]
    assert float(decoded.detach().min()) < 0 or float(decoded.detach().max()) > 1
    decoded.sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # The prompt reaches the UNet: swapping the prompts changes the prediction.
    assert not torch.allclose(tiny.eps(latents, 500, cond.flip(0)), eps.detach())


def test_saved_tiny_model_equals_the_in_memory_one(tiny: sd.StableDiffusionBackend) -> None:
    fresh = sd.random_stable_diffusion("tiny")
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = tiny.condition(["a dog"])
    torch.testing.assert_close(fresh.condition(["a dog"]), cond)
    torch.testing.assert_close(fresh.eps(z, 300, cond), tiny.eps(z, 300, cond))
    torch.testing.assert_close(fresh.decode(z), tiny.decode(z))


def test_tiny_inversion_round_trip_converges(tiny: sd.StableDiffusionBackend) -> None:
    """Inverting to t = 500 and sampling back: max error below 0.15 (latents have unit spread) with 10 steps,
    and it about halves when the step count doubles, as a first-order scheme should.

    The full depth is not tested here: an untrained UNet does not predict the noise, so its DDIM flow
    magnifies by 1/sqrt(a_T) ~ 15 near pure noise; the exact backend covers the full depth instead.
    """
    z0 = tiny.encode(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    cond = tiny.condition(["a cat"])

    def round_trip_error(num_steps: int) -> float:
        timesteps = [t for t in ddim_timesteps(1000, num_steps) if t <= 500]
        latents = ddim_invert(lambda z, t: tiny.eps(z, t, cond), z0, timesteps, tiny.alphas_cumprod)
        assert float((latents[0] - z0).abs().max()) > 1.0
        return float((sample(tiny, latents[0], timesteps, cond) - z0).abs().max())

    coarse, fine = round_trip_error(20), round_trip_error(40)
    assert coarse < 0.15
    assert fine < 0.7 * coarse


def test_real_configs_have_sd_v1_4_sizes() -> None:
    """Built on the meta device (no memory): the parameter counts of the published SD v1.4 components."""
    text = {k: v for k, v in sd.real_config("text_encoder").items() if k != "architectures"}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sd.real_config("unet"))
        vae = AutoencoderKL.from_config(sd.real_config("vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**text))
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert (count(unet), count(vae), count(text_encoder)) == (859_520_964, 83_653_863, 123_060_480)
    assert sd.real_config("vae")["scaling_factor"] == 0.18215
    tiny_unet = sd.tiny_config("unet")
    assert tiny_unet["in_channels"] == 4 and tiny_unet["block_out_channels"] == [32, 64]
    with pytest.raises(ValueError, match="unet, vae"):
        sd.real_config("safety_checker")


def test_missing_folder_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(MtransferError) as missing:
        sd.load_stable_diffusion(tmp_path / "no-such-model")
    assert "no-such-model" in str(missing.value) and "\n" not in str(missing.value)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model_index.json").write_text("{}")
    (tmp_path / "half" / "unet").mkdir()
    with pytest.raises(MtransferError, match=r"missing vae, text_encoder, tokenizer, scheduler"):
        sd.load_stable_diffusion(tmp_path / "half")


def test_broken_folder_is_one_line_error(tmp_path: Path, tiny_cache: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_cache / sd.TINY_NAME, broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.write_bytes(b"not weights")
    with pytest.raises(MtransferError) as error:
        sd.load_stable_diffusion(broken)
    message = str(error.value)
    assert "\n" not in message and "unet" in message and str(broken) in message


def test_offline_hub_id_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(MtransferError) as error:
        sd.load_stable_diffusion("CompVis/stable-diffusion-v1-4")
    message = str(error.value)
    assert "\n" not in message
    assert "CompVis/stable-diffusion-v1-4" in message
    assert "huggingface-cli download" in message and "model.model" in message and "cannot be reached (offline)" in message


def test_unreachable_hub_is_cache_only_without_waiting_for_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(sd.socket, "getaddrinfo", lambda *args: (_ for _ in ()).throw(OSError("no DNS")))
    assert sd._hub_options()["local_files_only"] is True
    with pytest.raises(MtransferError, match="cannot be reached"):
        sd.load_stable_diffusion("CompVis/stable-diffusion-v1-4")


def test_availability_is_checked_without_reading_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd.check_available("tiny")
    with pytest.raises(MtransferError, match="no such model folder"):
        sd.check_available(str(tmp_path / "nowhere"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model_index.json").write_text("{}")
    with pytest.raises(MtransferError, match=r"half: not a diffusers Stable Diffusion folder \(missing unet"):
        sd.check_available(tmp_path / "half")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(MtransferError, match="cannot be reached") as error:
        sd.check_available("CompVis/stable-diffusion-v1-4")
    assert "\n" not in str(error.value)
    cached = tmp_path / "empty-hf-home" / "hub" / "models--someone--sd" / "snapshots" / "abc"
    cached.mkdir(parents=True)
    (cached / "model_index.json").write_text("{}")
    (cached.parent.parent / "refs").mkdir()
    (cached.parent.parent / "refs" / "main").write_text("abc")
    sd.check_available("someone/sd")  # in the cache: loading may go ahead
