"""Motion guidance: settings, the energy's reductions, the sampler's rule (checked by hand on the tiny SD),
clipping, CFG, divergence handling, seeds, and the generate → edit round trip."""

from __future__ import annotations

import math

import pytest
import torch

from mtransfer.diffusion import alpha_bars, ddim_timesteps
from mtransfer.diffusion import stable_diffusion as sd
from mtransfer.errors import MtransferError
from mtransfer.estimators import PyramidEstimator
from mtransfer.flows import occlusion_mask, warp
from mtransfer.guidance import (
    EnergyWeights,
    GuidanceSettings,
    GuidanceDiverged,
    MotionTarget,
    cfg_eps,
    colour_mask,
    edit_image,
    generate,
    guided_eps,
    motion_energy,
    motion_guided_step,
    prepare_source,
    sample_motion_guided,
    warm_start_latent,
    warm_start_step,
)
from mtransfer.app.edit_folder import loss_curves

ALPHAS = torch.linspace(0.9999, 0.98, 1000).cumprod(0)  # a DDPM-like schedule without importing diffusers


class ToyBackend:
    """Latents are images in [-1, 1]; the noise prediction is linear in ``z`` and scaled by the condition.

    Unconditional (empty prompt) and conditional predictions differ, so classifier-free guidance shows.
    """

    device = torch.device("cpu")
    dtype = torch.float32
    alphas_cumprod = ALPHAS

    def __init__(self) -> None:
        self.calls = 0

    def latent_size(self, height: int, width: int) -> tuple[int, int, int]:
        return 3, height, width

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2 - 1

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents + 1) / 2

    def condition(self, prompts: list[str]) -> torch.Tensor:
        return torch.tensor([[float(len(p))] for p in prompts])

    def eps(self, z: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return 0.1 * z * (1 + cond.view(-1, 1, 1, 1)) + 0.001 * t


class ShiftEstimator:
    """A differentiable stand-in for a flow network: the 'flow' is the first two channels' change."""

    name = "shift"
    differentiable = True

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 10 * (target[:, :2] - source[:, :2])


class NaNAfter:
    """An estimator that returns NaN from its ``n``-th call on: a stand-in for a blown-up network."""

    name = "nan-after"
    differentiable = True

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        flow = ShiftEstimator()(source, target)
        return flow * float("nan") if self.calls > self.n else flow


def textured(height: int, width: int, seed: int = 0) -> torch.Tensor:
    coarse = torch.rand(1, 3, height // 4, width // 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]


def box_flow(size: int, dx: float, dy: float) -> torch.Tensor:
    flow = torch.zeros(2, size, size)
    flow[0, size // 4 : size // 2, size // 4 : size // 2] = dx
    flow[1, size // 4 : size // 2, size // 4 : size // 2] = dy
    return flow


# --- settings ---------------------------------------------------------------------------------------------


def test_defaults_are_the_papers() -> None:
    config = GuidanceSettings()
    assert (config.steps, config.recursions, config.cfg_scale) == (500, 10, 7.5)
    assert (config.guidance_weight, config.flow_weight, config.color_weight, config.clip_grad) == (300, 3, 100, 200)
    assert config.recon_weight == 0 and config.schedule == "constant"
    assert config.step_weights() == [1.0] * 500
    # the conventions of the authors' guided step
    assert (config.occlusion, config.clamp, config.padding, config.paste_source) == (
        "reference", False, "reflection", False
    )


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"stpes": 10}, "stpes"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"steps": 1000}, "steps"),
        ({"recursions": True}, "recursions"),
        ({"cfg_scale": "7.5"}, "cfg_scale"),
        ({"guidance_weight": -1.0}, "guidance_weight"),
        ({"occlusion_masking": True}, "occlusion_masking"),
        ({"occlusion": "forward"}, "occlusion"),
        ({"clamp": 1}, "clamp"),
        ({"padding": "border"}, "padding"),
        ({"paste_source": "yes"}, "paste_source"),
        ({"schedule": "cosine"}, "schedule"),
        ({"schedule_fraction": 0.0}, "schedule_fraction"),
        ({"source_noise": "zeros"}, "source_noise"),
        ({"preview_every": -5}, "preview_every"),
    ],
)
def test_bad_settings_name_the_key(values: dict, key: str) -> None:
    with pytest.raises(MtransferError, match=rf"^guidance\.{key}: "):
        GuidanceSettings.from_mapping(values)


def test_settings_from_a_preset_table() -> None:
    config = GuidanceSettings.from_mapping({"steps": 50, "guidance_weight": 150, "occlusion": "none"})
    assert config.steps == 50 and config.guidance_weight == 150.0 and isinstance(config.guidance_weight, float)
    assert config.occlusion == "none" and config.recursions == 10
    assert config.replace(recursions=2).recursions == 2 and config.replace(recursions=2).steps == 50
    with pytest.raises(MtransferError, match="guidance.recursions"):
        config.replace(recursions=0)


def test_schedules() -> None:
    early = GuidanceSettings(steps=10, schedule="early", schedule_fraction=0.3).step_weights()
    assert early == [1.0] * 3 + [0.0] * 7
    linear = GuidanceSettings(steps=10, schedule="linear", schedule_fraction=0.5).step_weights()
    assert linear[0] == 1.0 and linear[5:] == [0.0] * 5
    assert all(a > b for a, b in zip(linear[:5], linear[1:6]))


# --- energy -----------------------------------------------------------------------------------------------


def test_energy_reductions_follow_the_authors_code() -> None:
    """Flow: mean |error| over pixels and both channels. Colour: mean over ALL pixels x channels of the
    masked difference, so hidden pixels count as zero error instead of leaving the denominator."""
    source = torch.ones(1, 3, 8, 8)
    image = torch.zeros(1, 3, 8, 8)
    target = torch.zeros(2, 8, 8)
    target[0, :, :4] = 2.0  # |error| = 2 on half of the u channel, 0 elsewhere → mean 0.5
    zero_flow = lambda s, t: torch.zeros(s.shape[0], 2, *s.shape[-2:])  # noqa: E731
    visible = torch.zeros(1, 1, 8, 8)
    visible[..., :2, :] = 1  # a quarter of the pixels are visible
    energy, parts, achieved = motion_energy(source, image, target, zero_flow, visible, EnergyWeights(3, 100))
    assert parts["flow"].item() == pytest.approx(0.5)
    assert parts["color"].item() == pytest.approx(0.25)  # |1 - 0| on a quarter of the pixels
    assert energy.item() == pytest.approx(3 * 0.5 + 100 * 0.25)
    assert "recon" not in parts and torch.equal(achieved, torch.zeros(1, 2, 8, 8))
    _, unmasked, _ = motion_energy(source, image, target, zero_flow, None, EnergyWeights(3, 100))
    assert unmasked["color"].item() == pytest.approx(1.0)


def test_reconstruction_term_only_outside_the_edit_mask() -> None:
    source, image = torch.ones(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.5)
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., :, :2] = 1
    zero_flow = lambda s, t: torch.zeros(s.shape[0], 2, *s.shape[-2:])  # noqa: E731
    energy, parts, _ = motion_energy(source, image, torch.zeros(2, 8, 8), zero_flow, None, EnergyWeights(0, 0, 4), keep)
    assert parts["recon"].item() == pytest.approx(0.5 * 2 / 8)
    assert energy.item() == pytest.approx(4 * 0.5 * 2 / 8)
    _, no_keep, _ = motion_energy(source, image, torch.zeros(2, 8, 8), zero_flow, None, EnergyWeights(0, 0, 4))
    assert "recon" not in no_keep


def test_energy_gradient_is_a_descent_direction_for_the_image() -> None:
    """Through the weight-free differentiable estimator, a small step against dE/dimage lowers E."""
    source = textured(32, 32)[None]
    target = box_flow(32, 2.0, 0.0)
    estimator = PyramidEstimator(levels=3, iterations=2)
    occlusion = occlusion_mask(target)
    halfway = warp(source, -box_flow(32, 1.0, 0.0)).requires_grad_(True)  # the box moved part of the way
    energy, _, _ = motion_energy(source, halfway, target, estimator, occlusion)
    (gradient,) = torch.autograd.grad(energy, halfway)
    assert gradient.abs().sum() > 0
    direction = gradient / gradient.norm()
    with torch.no_grad():
        lower, _, _ = motion_energy(source, halfway - 0.01 * direction, target, estimator, occlusion)
        higher, _, _ = motion_energy(source, halfway + 0.01 * direction, target, estimator, occlusion)
    assert lower.item() < energy.item() < higher.item()


# --- sampler pieces with a toy backend ----------------------------------------------------------------------


def test_cfg_combines_unconditional_and_conditional() -> None:
    backend = ToyBackend()
    z = torch.randn(1, 3, 4, 4)
    cond, uncond = backend.condition(["a cat"]), backend.condition([""])
    plain = backend.eps(z, 10, cond)
    backend.calls = 0
    assert torch.allclose(cfg_eps(backend, z, 10, cond, uncond, 1.0), plain) and backend.calls == 1
    mixed = cfg_eps(backend, z, 10, cond, uncond, 7.5)
    expected = backend.eps(z, 10, uncond) + 7.5 * (plain - backend.eps(z, 10, uncond))
    assert torch.allclose(mixed, expected, atol=1e-6)


def _toy_target(size: int = 6) -> MotionTarget:
    source = textured(size * 4, size * 4)[None][..., :size, :size]
    return MotionTarget(source=source, flow=torch.ones(1, 2, size, size), weights=EnergyWeights(3, 100), padding="zeros")


@pytest.mark.parametrize("clip", [0.5, 1e6])
def test_guidance_is_clipped_to_the_bound(clip: float) -> None:
    backend, target = ToyBackend(), _toy_target()
    z = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    cond, uncond = backend.condition(["x"]), backend.condition([""])
    a_t = float(ALPHAS[500])
    kwargs = dict(cfg_scale=2.0, guidance_scale=50.0)
    unclipped = guided_eps(backend, ShiftEstimator(), z, 500, a_t, cond, uncond, target, clip_grad=0.0, **kwargs)
    clipped = guided_eps(backend, ShiftEstimator(), z, 500, a_t, cond, uncond, target, clip_grad=clip, **kwargs)
    plain = cfg_eps(backend, z, 500, cond, uncond, 2.0)
    full = (unclipped.eps - plain).norm().item()
    assert full == pytest.approx(unclipped.grad_norm, rel=1e-5) and full > 0.5  # |sqrt(1-a) g|, unclipped
    change = (clipped.eps - plain).norm().item()
    assert change == pytest.approx(min(clip, full), rel=1e-5)
    assert torch.allclose((clipped.eps - plain) / change, (unclipped.eps - plain) / full, atol=1e-6)  # same direction


def test_zero_guidance_is_plain_cfg_and_evaluates_nothing() -> None:
    backend, target = ToyBackend(), _toy_target()
    estimator = NaNAfter(0)  # would poison any energy it took part in
    z = torch.randn(1, 3, 6, 6)
    cond, uncond = backend.condition(["x"]), backend.condition([""])
    result = guided_eps(backend, estimator, z, 300, float(ALPHAS[300]), cond, uncond, target,
                        cfg_scale=3.0, guidance_scale=0.0, clip_grad=200.0)
    assert torch.equal(result.eps, cfg_eps(backend, z, 300, cond, uncond, 3.0))
    assert result.parts == [] and result.image is None and estimator.calls == 0


def test_divergence_stops_the_run_and_keeps_the_last_good_state() -> None:
    backend, target = ToyBackend(), _toy_target()
    config = GuidanceSettings(steps=6, recursions=2, cfg_scale=1.0, preview_every=0)
    timesteps = ddim_timesteps(1000, 6)
    start = torch.randn(1, 3, 6, 6)
    cond = backend.condition([""])
    with pytest.raises(GuidanceDiverged) as caught:
        sample_motion_guided(backend, NaNAfter(5), start, timesteps, cond, cond, target, config,
                             generator=torch.Generator().manual_seed(0))
    error = caught.value
    assert error.step == 2 and "energy term" in error.reason  # the 6th pass is step 2, recursion 1
    assert len(error.history) == 6 and all(math.isfinite(h["total"]) for h in error.history[:5])
    assert torch.isfinite(error.latent).all() and torch.isfinite(error.x0).all()

    with pytest.raises(GuidanceDiverged, match="standard deviation"):
        sample_motion_guided(backend, ShiftEstimator(), start, timesteps, cond, cond, target,
                             config.replace(max_latent_std=1e-3), generator=torch.Generator().manual_seed(0))


def test_a_warm_start_runs_the_tail_of_the_full_schedule(monkeypatch) -> None:
    """From ``first_step`` on, the steps, timesteps and guidance weights are those of the full run's tail."""
    import mtransfer.guidance.sampler as sampler

    backend, target = ToyBackend(), _toy_target()
    config = GuidanceSettings(steps=8, recursions=2, cfg_scale=1.0, guidance_weight=3.0, schedule="linear",
                            schedule_fraction=0.75, preview_every=0)
    timesteps = ddim_timesteps(1000, 8)
    seen: list[tuple[int, float]] = []
    original = sampler.guided_eps

    def recording(backend, estimator, z, t, a_t, *args, guidance_scale, **kwargs):
        seen.append((t, guidance_scale))
        return original(backend, estimator, z, t, a_t, *args, guidance_scale=guidance_scale, **kwargs)

    monkeypatch.setattr(sampler, "guided_eps", recording)
    cond = backend.condition([""])
    _, history = sample_motion_guided(backend, ShiftEstimator(), torch.randn(1, 3, 6, 6), timesteps, cond, cond,
                                      target, config, generator=torch.Generator().manual_seed(0), first_step=5)
    # The linear schedule written out: weight 1 - i / (0.75 * 8) at step i, never below 0.
    expected = [3.0 * max(0.0, 1 - i / 6) for i in (5, 6, 7)]
    assert [t for t, _ in seen] == [timesteps[i] for i in (5, 5, 6, 6, 7, 7)]
    assert [scale for _, scale in seen[::2]] == pytest.approx(expected)
    assert [h["step"] for h in history] == [5, 5, 6, 6, 7, 7]


def test_warm_start_step_and_latent() -> None:
    assert [warm_start_step(10, s) for s in (0.5, 0.3, 0.04, 0.99)] == [5, 7, 9, 0]
    backend = ToyBackend()
    config = GuidanceSettings(steps=4, recursions=1, cfg_scale=1.0, source_noise="random", preview_every=0)
    state = prepare_source(backend, textured(8, 8), "", config)
    previous = torch.rand(1, 3, 8, 8)
    first = warm_start_latent(backend, state, previous, 2, seed=7)
    assert torch.equal(first, warm_start_latent(backend, state, previous, 2, seed=7))
    noise = torch.randn(previous.shape, generator=torch.Generator().manual_seed(7))
    a_t = float(ALPHAS[state.timesteps[2]])
    assert torch.allclose(first, a_t**0.5 * previous + (1 - a_t) ** 0.5 * noise)
    with pytest.raises(ValueError, match="init_latent"):
        edit_image(backend, ShiftEstimator(), state, torch.zeros(2, 8, 8), config, first_step=1)


def test_a_diverged_edit_is_labelled_and_finite() -> None:
    backend = ToyBackend()
    config = GuidanceSettings(steps=5, recursions=1, cfg_scale=1.0, guidance_weight=1.0, source_noise="random",
                            preview_every=0, padding="zeros")
    state = prepare_source(backend, textured(8, 8), "", config)
    result = edit_image(backend, NaNAfter(3), state, torch.ones(2, 8, 8), config)
    assert result.diverged and "diverged at step 3" in result.divergence
    assert torch.isfinite(result.image).all() and len(result.losses) == 4


def test_same_seed_same_edit_and_the_seed_drives_the_recursion_noise() -> None:
    backend = ToyBackend()
    config = GuidanceSettings(steps=4, recursions=3, cfg_scale=2.0, guidance_weight=20.0, preview_every=2, padding="zeros")
    state = prepare_source(backend, textured(8, 8), "x", config)
    flow = torch.ones(2, 8, 8)
    first = edit_image(backend, ShiftEstimator(), state, flow, config)
    again = edit_image(backend, ShiftEstimator(), state, flow, config)
    other = edit_image(backend, ShiftEstimator(), state, flow, config.replace(seed=1))
    assert torch.equal(first.latent, again.latent)
    assert (first.latent - other.latent).abs().max() > 1e-3
    assert [step for step, _ in first.previews] == [0, 2] and len(first.losses) == 12


def test_mismatched_inputs_are_one_line_errors() -> None:
    backend = ToyBackend()
    config = GuidanceSettings(steps=3, recursions=1, preview_every=0)
    state = prepare_source(backend, textured(8, 8), "", config)
    with pytest.raises(MtransferError, match=r"target flow has shape \(2, 8, 4\)"):
        edit_image(backend, ShiftEstimator(), state, torch.zeros(2, 8, 4), config)
    with pytest.raises(MtransferError, match="edit mask has shape"):
        edit_image(backend, ShiftEstimator(), state, torch.zeros(2, 8, 8), config, edit_mask=torch.ones(4, 4))
    with pytest.raises(MtransferError, match="prepared for 3 steps"):
        edit_image(backend, ShiftEstimator(), state, torch.zeros(2, 8, 8), config.replace(steps=4))


def test_loss_curves_skip_missing_and_non_finite_values() -> None:
    history = [{"total": 1.0, "flow": 0.5, "grad_norm": 10.0}, {"grad_norm": 0.0}, {"total": float("nan")}]
    picture = loss_curves(history, clip=200.0, width=300, panel_height=80)
    assert picture.shape == (4 * 80, 300, 3) and picture.dtype.name == "uint8"
    assert (picture != 255).any(axis=2).sum() > 500  # frames, labels and curves were drawn


# --- the tiny Stable Diffusion ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> sd.StableDiffusionBackend:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTRANSFER_CACHE", str(tmp_path_factory.mktemp("mtransfer-cache")))
        return sd.load_stable_diffusion("tiny")


def backward_warp(image: torch.Tensor, flow: torch.Tensor, padding: str) -> torch.Tensor:
    """``image`` sampled at ``p + flow(p)``, bilinear, positions normalised as ``-1 + 2 (p + f) / (size - 1)``."""
    height, width = flow.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=flow.dtype), torch.arange(width, dtype=flow.dtype), indexing="ij")
    x = -1 + 2 * (xs + flow[:, 0]) / (width - 1)
    y = -1 + 2 * (ys + flow[:, 1]) / (height - 1)
    return torch.nn.functional.grid_sample(
        image, torch.stack((x, y), dim=-1), mode="bilinear", padding_mode=padding, align_corners=True
    )


def paper_mask_of_block_shift(size: int, block: slice, dx: int, dy: int) -> torch.Tensor:
    """The authors' colour mask for a square block moved by whole pixels (rule: tests/test_occlusion_mask.py):
    the still pixels the block lands on are hidden; everything else, the block included, is compared."""
    mask = torch.ones(1, 1, size, size)
    for y in range(block.start, block.stop):
        for x in range(block.start, block.stop):
            lands = (x + dx, y + dy)
            if not all(block.start <= c < block.stop for c in lands) and all(0 <= c < size for c in lands):
                mask[0, 0, lands[1], lands[0]] = 0
    return mask


CONVENTIONS = {
    # The authors' step: their gradient-rule mask, no clamp, reflection padding.
    "paper": dict(occlusion="reference", clamp=False, padding="reflection"),
    # mtransfer's variants: forward-splat mask, straight-through clamp, zero padding.
    "ours": dict(occlusion="splat", clamp=True, padding="zeros"),
}


@pytest.mark.parametrize("conventions", CONVENTIONS)
def test_one_guided_step_matches_the_rule_written_out(tiny: sd.StableDiffusionBackend, conventions: str) -> None:
    """One DDIM step with K=2 recursions, CFG (7.5 as in the paper), edit-mask copy and active clipping,
    computed here from the paper's update rule with autograd, must equal the sampler's step, under each
    set of conventions."""
    backend = tiny
    paper = conventions == "paper"
    # one Lucas-Kanade update per level: with two, float32 reassociation in the first recursion (a blur
    # computed in another order) grew to 5e-4 in the second one's guidance norm on this random model
    estimator = PyramidEstimator(levels=3, iterations=1)
    generator = torch.Generator().manual_seed(0)
    source = textured(64, 64)[None]
    flow = box_flow(64, 3.0, 2.0)[None]  # the block [16, 32)^2 moves by (3, 2)
    if paper:
        mask = paper_mask_of_block_shift(64, slice(16, 32), 3, 2)
        assert int((mask == 0).sum()) == 16 * 3 + 16 * 2 - 3 * 2  # an L of landing spots outside the block
        config = GuidanceSettings(steps=10, recursions=2, cfg_scale=7.5, clip_grad=5.0)  # defaults = the paper's
    else:
        mask = occlusion_mask(flow)
        config = GuidanceSettings(steps=10, recursions=2, cfg_scale=3.0, clip_grad=5.0, **CONVENTIONS["ours"])
    assert (config.occlusion, config.clamp, config.padding) == tuple(CONVENTIONS[conventions].values())
    cond, uncond = backend.condition(["a cat"]), backend.condition([""])
    timesteps = ddim_timesteps(1000, 10)
    t = timesteps[3]
    a_t, a_prev = alpha_bars(backend.alphas_cumprod, timesteps)[3]
    z = torch.randn(1, 4, 8, 8, generator=generator)
    reference = torch.randn(1, 4, 8, 8, generator=generator)
    copy = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    copy[..., :3, :] = True
    target = MotionTarget(
        source=source, flow=flow, occlusion=colour_mask(flow, config.occlusion), weights=EnergyWeights(3.0, 100.0),
        clamp=config.clamp, padding=config.padding,
    )
    assert torch.equal(target.occlusion, mask)

    result, passes = motion_guided_step(
        backend, estimator, z, t, a_t, a_prev, cond, uncond, target, config,
        guidance_scale=300.0, generator=torch.Generator().manual_seed(7), reference=reference, copy_mask=copy,
    )

    noise = torch.Generator().manual_seed(7)
    z_t = z
    for k in range(2):
        z_t = z_t * ~copy + reference * copy  # 1. edit-mask copy
        z_in = z_t.clone().requires_grad_(True)  # 2. eps with CFG, one-step x0, decode, energy
        e_uncond, e_cond = backend.eps(torch.cat((z_in, z_in)), t, torch.cat((uncond, cond))).chunk(2)
        eps = e_uncond + config.cfg_scale * (e_cond - e_uncond)
        x0 = (z_in - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        image = backend.vae.decode(1.0 / backend.scaling_factor * x0).sample / 2 + 0.5  # the authors' arithmetic
        if paper:
            assert image.min() < 0 or image.max() > 1, "the test must see the decoder overshoot [0, 1]"
        else:  # clamped forward, gradient straight through
            image = image + (image.clamp(0, 1) - image).detach()
        measured = estimator(source, image)
        warped = backward_warp(image, measured, "reflection" if paper else "zeros")
        energy = 3.0 * (measured - flow).abs().mean() + 100.0 * (mask * source - mask * warped).abs().mean()
        g = 300.0 * torch.autograd.grad(energy, z_in)[0]
        norm = (math.sqrt(1 - a_t) * g).norm()  # 3. clip |sqrt(1 - a_t) g| to the clip value
        assert norm > 5.0, "the test must exercise clipping"
        assert passes[k].grad_norm == pytest.approx(norm.item(), rel=1e-4)
        g = g * 5.0 / norm
        eps = eps.detach() + math.sqrt(1 - a_t) * g
        x0 = (z_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)  # 4. DDIM step, then re-noise if more remain
        z_prev = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        assert passes[k].parts[0]["total"] == pytest.approx(energy.item(), rel=1e-4)
        if k == 0:
            z_t = math.sqrt(a_t / a_prev) * z_prev + math.sqrt(1 - a_t / a_prev) * torch.randn(z.shape, generator=noise)

    # The step moves z by ~5. Relative 1e-4 (the criterion of the comparison with the authors' code): this
    # tiny model's guidance is ill-conditioned (a 1e-6 change of the latent moves it by ~5e-3 relative), so
    # float rounding of equal formulas shows at ~2e-5.
    assert float((result - z_prev).norm() / z_prev.norm()) < 1e-4
    unguided, _ = motion_guided_step(
        backend, estimator, z, t, a_t, a_prev, cond, uncond, target, config,
        guidance_scale=0.0, generator=torch.Generator().manual_seed(7), reference=reference, copy_mask=copy,
    )
    assert (unguided - result).abs().max() > 0.01  # guidance changed the step


def test_each_convention_changes_the_energy(tiny: sd.StableDiffusionBackend) -> None:
    """Mask rule, clamp and padding each matter on the tiny SD's overshooting decode (so the step test
    above tells them apart)."""
    source = textured(64, 64)[None]
    flow = box_flow(64, 13.5, 0.0)[None]
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    image = tiny.decode(z)
    estimator = lambda s, t: flow + 4.0  # noqa: E731  pushes the colour warp's samples out of the frame

    def energy(**changes: object) -> float:
        config = GuidanceSettings(**changes)
        value, _, _ = motion_energy(
            source, image, flow, estimator, colour_mask(flow, config.occlusion), EnergyWeights(3.0, 100.0),
            clamp=config.clamp, padding=config.padding,
        )
        return value.item()

    paper = energy()
    for change in ({"occlusion": "splat"}, {"occlusion": "none"}, {"clamp": True}, {"padding": "zeros"}):
        assert abs(energy(**change) - paper) > 1e-4 * paper, change


def test_generated_image_retraces_its_own_trajectory(tiny: sd.StableDiffusionBackend) -> None:
    config = GuidanceSettings(steps=3, recursions=1, cfg_scale=7.5, guidance_weight=0.0, preview_every=0, seed=3)
    image, noise, latents = generate(tiny, "a cat", config, size=(64, 64))
    assert image.shape == (3, 64, 64) and len(latents) == 4 and torch.equal(latents[0], noise)
    state = prepare_source(tiny, image, "a cat", config, trajectory=latents)
    assert state.origin == "generation" and torch.equal(state.start, noise)
    result = edit_image(tiny, PyramidEstimator(levels=3, iterations=1), state, torch.zeros(2, 64, 64), config)
    assert torch.allclose(result.latent, latents[-1], atol=1e-5)  # unguided DDIM lands on the generation
    assert (result.image - image).abs().max() < 1e-4


def test_inversion_state_lines_up_with_the_sampling_steps(tiny: sd.StableDiffusionBackend) -> None:
    config = GuidanceSettings(steps=4, recursions=1, preview_every=0)
    state = prepare_source(tiny, textured(64, 64), "", config)
    assert state.origin == "inversion" and len(state.references) == 5 and state.timesteps == ddim_timesteps(1000, 4)
    assert torch.equal(state.references[-1], state.latent) and torch.equal(state.references[0], state.start)
    random_start = prepare_source(tiny, textured(64, 64), "", config.replace(source_noise="random"))
    assert random_start.origin == "random" and torch.equal(random_start.references[-1], random_start.latent)
    assert not torch.equal(random_start.start, state.start)


def test_outside_the_edit_mask_the_result_is_the_sources_clean_latent_only_when_pasted(
    tiny: sd.StableDiffusionBackend,
) -> None:
    """``paste_source`` (ours) replaces the result outside the edit mask by the source's clean latent after
    the last step; without it (the authors') the sampler's own last latent is kept there."""
    config = GuidanceSettings(steps=3, recursions=2, guidance_weight=50.0, preview_every=0, paste_source=True)
    state = prepare_source(tiny, textured(64, 64), "", config)
    mask = torch.zeros(64, 64)
    mask[16:40, 8:32] = 1
    estimator = PyramidEstimator(levels=3, iterations=1)
    pasted = edit_image(tiny, estimator, state, box_flow(64, 3.0, 0.0), config, edit_mask=mask)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[2:5, 1:4] = False  # latent cells touched by the mask (factor 8)
    assert torch.equal(pasted.latent[0][:, outside], state.latent[0][:, outside])
    assert (pasted.latent[0][:, ~outside] - state.latent[0][:, ~outside]).abs().max() > 1e-3

    kept = edit_image(tiny, estimator, state, box_flow(64, 3.0, 0.0), config.replace(paste_source=False), edit_mask=mask)
    assert torch.equal(kept.latent[0][:, ~outside], pasted.latent[0][:, ~outside])  # same run inside
    assert (kept.latent[0][:, outside] - state.latent[0][:, outside]).abs().max() > 1e-4  # not pasted outside
    assert kept.image.min() >= 0 and kept.image.max() <= 1  # the picture is clamped, whatever the energy saw
