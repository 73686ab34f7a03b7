"""DDIM math: agreement with diffusers' DDIMScheduler for SD v1, and the identities the sampler relies on."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from mtransfer.diffusion.ddim import alpha_bars, ddim_step, ddim_timesteps, forward_noise, predict_x0, renoise
from mtransfer.diffusion.stable_diffusion import real_config, sd_alphas_cumprod


def sd_scheduler() -> DDIMScheduler:
    return DDIMScheduler.from_config(real_config("scheduler"))


@pytest.mark.parametrize("num_steps", [1, 7, 10, 30, 50, 250, 500, 999])
def test_timesteps_match_diffusers(num_steps: int) -> None:
    scheduler = sd_scheduler()
    scheduler.set_timesteps(num_steps)
    assert ddim_timesteps(1000, num_steps) == scheduler.timesteps.tolist()


def test_timesteps_reject_impossible_counts() -> None:
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 0)
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 1001)
    # 1000 steps with SD's offset of 1 would start at timestep 1000, past the last of the 1000 training
    # timesteps (0..999): refused rather than indexing outside the schedule.
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 1000)
    assert max(ddim_timesteps(1000, 999)) == 999


@pytest.mark.parametrize("num_steps", [10, 33])
def test_every_step_matches_diffusers_eta0(num_steps: int) -> None:
    scheduler = sd_scheduler()
    scheduler.set_timesteps(num_steps)
    timesteps = ddim_timesteps(1000, num_steps)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 8, 8, generator=generator)
    for t, (a_t, a_prev) in zip(timesteps, alpha_bars(scheduler.alphas_cumprod, timesteps)):
        eps = torch.randn(z.shape, generator=generator)
        expected = scheduler.step(eps, t, z, eta=0.0).prev_sample
        ours = ddim_step(z, eps, a_t, a_prev)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
        z = expected


def test_alpha_bars_chain_and_final_level() -> None:
    alphas = sd_alphas_cumprod()
    timesteps = ddim_timesteps(1000, 20)
    pairs = alpha_bars(alphas, timesteps)
    assert len(pairs) == 20
    assert [a for a, _ in pairs[1:]] == [p for _, p in pairs[:-1]]
    assert pairs[-1][1] == pytest.approx(float(alphas[0]))  # SD v1: set_alpha_to_one=False
    assert 0.99 < pairs[-1][1] < 1.0
    assert alpha_bars(alphas, timesteps, final_alpha=1.0)[-1][1] == 1.0
    assert all(a_t < a_prev for a_t, a_prev in pairs)


def test_tensor_alphas_work_like_floats() -> None:
    z, eps = torch.randn(2, 1, 4, 4, 4).unbind(0)
    as_float = ddim_step(z, eps, 0.3, 0.6)
    as_tensor = ddim_step(z, eps, torch.tensor(0.3), torch.tensor(0.6))
    torch.testing.assert_close(as_float, as_tensor)


def test_noise_and_x0_prediction_are_inverse() -> None:
    x0, eps = torch.randn(2, 3, 4, 16, 16).unbind(0)
    for a in (0.005, 0.3, 0.999):
        torch.testing.assert_close(predict_x0(forward_noise(x0, a, eps), eps, a), x0, rtol=1e-4, atol=1e-4)


def test_ddim_step_stays_on_the_trajectory_of_a_known_pair() -> None:
    """With the true (x0, eps) pair, a DDIM step lands exactly on forward_noise at the next level."""
    x0, eps = torch.randn(2, 2, 4, 8, 8).unbind(0)
    z_t = forward_noise(x0, 0.2, eps)
    torch.testing.assert_close(ddim_step(z_t, eps, 0.2, 0.7), forward_noise(x0, 0.7, eps), rtol=1e-5, atol=1e-5)
    # Swapping the levels inverts the step.
    z_prev = ddim_step(z_t, eps, 0.2, 0.7)
    torch.testing.assert_close(ddim_step(z_prev, eps, 0.7, 0.2), z_t, rtol=1e-5, atol=1e-5)


def test_renoise_gives_the_forward_marginal() -> None:
    """Renoising a sample of q(z_prev | x0) yields samples of q(z_t | x0): mean sqrt(a_t) x0, var 1 - a_t."""
    generator = torch.Generator().manual_seed(1)
    x0 = torch.linspace(-1, 1, 8)
    a_t, a_prev = 0.4, 0.9
    count = 200_000
    z_prev = forward_noise(x0, a_prev, torch.randn(count, 8, generator=generator))
    z_t = renoise(z_prev, a_t, a_prev, torch.randn(count, 8, generator=generator))
    torch.testing.assert_close(z_t.mean(0), a_t**0.5 * x0, atol=0.01, rtol=0)
    torch.testing.assert_close(z_t.var(0), torch.full((8,), 1 - a_t), atol=0.01, rtol=0)
