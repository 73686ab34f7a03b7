"""Flow estimators: accuracy on synthetic motion, the flow convention, differentiability, weight loading."""

from __future__ import annotations

import math
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights, raft_small

from mtransfer.errors import MtransferError, WeightsMissing
from mtransfer.estimators import ESTIMATORS, FlowEstimator, PyramidEstimator, RaftEstimator, load_named_estimator
from mtransfer.estimators.raft import WEIGHTS_ENV
from mtransfer.flows import pixel_grid, sample_at, warp

MARGIN = 24


def smooth_texture(size: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A smooth random colour texture (1, 3, size, size) in [0, 1]: noise at three scales, upsampled."""
    generator = torch.Generator().manual_seed(seed)
    octaves = [
        F.interpolate(
            torch.rand(1, 3, size // cell, size // cell, generator=generator), size=(size, size), mode="bicubic"
        )
        for cell in (4, 8, 16)
    ]
    return (sum(octaves) / len(octaves)).clamp(0, 1).to(dtype)


def moved_pair(size: int, motion, seed: int = 0, dtype: torch.dtype = torch.float32):
    """Source, target and true flow for ``motion``: an invertible map q = motion(p) of pixel coordinates.

    Both images sample one larger texture, so no content enters from outside: source(p) = T(p) and
    target(q) = T(motion^-1(q)); the true flow is motion(p) - p.
    """
    texture = smooth_texture(size + 2 * MARGIN, seed, dtype)
    grid = pixel_grid(size, size, dtype=dtype)[None]
    forward, inverse = motion
    source = sample_at(texture, grid + MARGIN)
    target = sample_at(texture, inverse(grid) + MARGIN)
    return source, target, forward(grid) - grid


def translation(u: float, v: float):
    shift = torch.tensor([u, v]).view(1, 2, 1, 1)
    return (lambda p: p + shift.to(p.dtype)), (lambda q: q - shift.to(q.dtype))


def rotation(size: int, degrees: float):
    centre = (size - 1) / 2
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))

    def rotate(p: torch.Tensor, sign: float) -> torch.Tensor:
        x, y = p[:, 0] - centre, p[:, 1] - centre
        return torch.stack((cos * x - sign * sin * y, sign * sin * x + cos * y), 1) + centre

    return (lambda p: rotate(p, 1.0)), (lambda q: rotate(q, -1.0))


def end_point_error(flow: torch.Tensor, truth: torch.Tensor, crop: int = 0) -> float:
    error = (flow - truth).norm(dim=1)
    return error[:, crop : error.shape[1] - crop, crop : error.shape[2] - crop].mean().item()


WEIGHT_FREE_BOUNDS = {  # name: (translation EPE, rotation EPE, border pixels left out)
    "pyramid": (0.1, 0.15, 0),
    "tvl1": (0.1, 0.25, 6),
    "ilk": (0.15, 0.35, 6),
}


@pytest.mark.parametrize("name", list(WEIGHT_FREE_BOUNDS))
@pytest.mark.parametrize("size", [64, 96])
def test_weight_free_estimators_recover_translation_and_rotation(name: str, size: int) -> None:
    estimator = load_named_estimator(name)
    translation_bound, rotation_bound, crop = WEIGHT_FREE_BOUNDS[name]
    source, target, truth = moved_pair(size, translation(2.5, -1.5), seed=1)
    assert end_point_error(estimator(source, target), truth, crop) < translation_bound
    source, target, truth = moved_pair(size, rotation(size, 5.0), seed=2)
    assert truth.norm(dim=1).max() > 3  # the rotation really moves the corners by several pixels
    assert end_point_error(estimator(source, target), truth, crop) < rotation_bound


@pytest.mark.parametrize("name", list(WEIGHT_FREE_BOUNDS))
def test_flow_follows_the_mtransfer_convention(name: str) -> None:
    """``warp(target, flow) ≈ source``: the estimate points from source to target, channels (u, v)."""
    source, target, _ = moved_pair(64, translation(3.0, 1.0), seed=3)
    flow = load_named_estimator(name)(source, target)
    assert flow.shape == (1, 2, 64, 64) and flow.dtype == source.dtype
    assert flow[:, 0].mean() == pytest.approx(3.0, abs=0.1) and flow[:, 1].mean() == pytest.approx(1.0, abs=0.1)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    aligned = (warp(target, flow) - source)[inner].abs().mean()
    reversed_sign = (warp(target, -flow) - source)[inner].abs().mean()
    assert aligned < 0.1 * reversed_sign


def test_pyramid_handles_batches_and_larger_motion() -> None:
    first = moved_pair(80, translation(7.0, -5.0), seed=4)
    second = moved_pair(80, rotation(80, -8.0), seed=5)
    source, target, truth = (torch.cat(pair) for pair in zip(first, second))
    flow = PyramidEstimator()(source, target)
    assert flow.shape == (2, 2, 80, 80)
    assert end_point_error(flow[:1], truth[:1]) < 0.1 and end_point_error(flow[1:], truth[1:]) < 0.2


def test_pyramid_gradient_matches_finite_differences() -> None:
    estimator = PyramidEstimator(levels=2, iterations=2)
    source, target, _ = moved_pair(32, translation(1.0, 0.5), seed=6, dtype=torch.float64)
    wanted = torch.randn(1, 2, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss(image: torch.Tensor) -> torch.Tensor:
        return ((estimator(source, image) - wanted) ** 2).mean()

    target.requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss(target), target)
    direction = torch.randn(target.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    step = 1e-5
    with torch.no_grad():
        numeric = (loss(target + step * direction) - loss(target - step * direction)) / (2 * step)
    analytic = (gradient * direction).sum()
    assert analytic.abs() > 0
    assert analytic.item() == pytest.approx(numeric.item(), rel=1e-3)


def test_pyramid_gradient_step_reduces_l1_flow_loss() -> None:
    """The guidance use: move the target down the gradient of an L1 flow loss and the loss drops."""
    estimator = load_named_estimator("pyramid")
    source, _, _ = moved_pair(64, translation(0.0, 0.0), seed=7)
    wanted = torch.zeros(1, 2, 64, 64)
    wanted[:, 0] = 1.0  # ask for a one-pixel move to the right
    target = source.clone().requires_grad_(True)
    before = (estimator(source, target) - wanted).abs().mean()
    (gradient,) = torch.autograd.grad(before, target)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    with torch.no_grad():
        after_one_step = (estimator(source, target - 0.05 * gradient / gradient.abs().max()) - wanted).abs().mean()
    assert after_one_step < before - 0.005

    optimizer = torch.optim.Adam([target], lr=0.01)
    for _ in range(8):
        loss = (estimator(source, target) - wanted).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss < 0.5 * before


@pytest.mark.parametrize(("name", "size"), [("raft-small", (60, 76)), ("raft-large", (64, 64))])
def test_raft_with_random_weights_is_differentiable(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    estimator = load_named_estimator(name, weights="random", iterations=2)
    assert isinstance(estimator, FlowEstimator) and estimator.differentiable and estimator.iterations == 2
    source = torch.rand(2, 3, *size)
    target = torch.rand(2, 3, *size, requires_grad=True)
    flow = estimator(source, target)
    assert flow.shape == (2, 2, *size)
    (gradient,) = torch.autograd.grad(flow.abs().mean(), target)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    assert all(not p.requires_grad for p in estimator.parameters())


class RecordingRaft(torch.nn.Module):
    """Stands in for RAFT: records its inputs and answers each pixel's own (x, y) as the flow."""

    def forward(self, first: torch.Tensor, second: torch.Tensor, num_flow_updates: int) -> list[torch.Tensor]:
        self.inputs, self.updates = (first, second), num_flow_updates
        return [pixel_grid(*first.shape[-2:])[None].expand(first.shape[0], -1, -1, -1)]


@pytest.mark.parametrize(("size", "padded"), [((60, 76), (128, 128)), ((130, 193), (136, 200))])
def test_raft_input_is_normalised_padded_and_the_flow_cropped_back(size, padded) -> None:
    stub = RecordingRaft()
    estimator = RaftEstimator(stub, "raft-small", iterations=5)
    source, target = torch.zeros(1, 3, *size), torch.ones(1, 3, *size)
    flow = estimator(source, target)
    first, second = stub.inputs
    assert first.shape[-2:] == padded and stub.updates == 5
    assert torch.all(first == -1) and torch.all(second == 1)  # [0, 1] maps to [-1, 1], borders replicated
    assert torch.equal(flow, pixel_grid(*size)[None])  # cropped from the top-left, on the source grid


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache and a network that always fails; returns the checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("TORCH_HUB", raising=False)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)

    def no_network(url: str, *args, **kwargs) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


def small_state_dict(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return raft_small(weights=None).state_dict()


def test_default_weights_offline_and_uncached_say_how_to_provide_them(offline_hub: Path) -> None:
    with pytest.raises(MtransferError) as caught:
        load_named_estimator("raft-large")
    message = str(caught.value)
    assert "\n" not in message
    assert str(offline_hub / "raft_large_C_T_SKHT_V2-ff5fadd5.pth") in message
    assert "https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth" in message
    for hint in ("estimator.weights", "video.weights", WEIGHTS_ENV, "tvl1"):
        assert hint in message
    # the settings, not a command's flags: each command adds its own (mtransfer.cli.hints, tests/test_hints.py)
    assert "--" not in message and isinstance(caught.value, WeightsMissing) and caught.value.kind == "raft"


def test_cached_default_weights_load_without_network(offline_hub: Path) -> None:
    state = small_state_dict(seed=1)
    offline_hub.mkdir(parents=True)
    torch.save(state, offline_hub / Path(Raft_Small_Weights.DEFAULT.url).name)
    estimator = load_named_estimator("raft-small")  # the network stub raises if anything is downloaded
    loaded = estimator.model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())


def test_corrupt_cached_weights_name_the_file(offline_hub: Path) -> None:
    offline_hub.mkdir(parents=True)
    cached = offline_hub / Path(Raft_Small_Weights.DEFAULT.url).name
    cached.write_bytes(b"truncated download")
    with pytest.raises(MtransferError, match="delete it") as caught:
        load_named_estimator("raft-small")
    assert str(caught.value).startswith(f"{cached}:") and "\n" not in str(caught.value)


def test_local_weights_from_option_and_environment(tmp_path: Path, offline_hub: Path, monkeypatch) -> None:
    state = small_state_dict(seed=2)
    path = tmp_path / "small.pth"
    torch.save(state, path)
    from_option = load_named_estimator("raft-small", weights=str(path), iterations=3)
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    from_environment = load_named_estimator("raft-small")
    for estimator in (from_option, from_environment):
        loaded = estimator.model.state_dict()
        assert all(torch.equal(loaded[key], value) for key, value in state.items())
    assert from_option.iterations == 3 and from_environment.iterations == 12


def test_bad_local_weights_name_the_file(tmp_path: Path, offline_hub: Path, monkeypatch) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(MtransferError, match="no such raft-small weights file") as caught:
        load_named_estimator("raft-small", weights=missing)
    assert str(caught.value).startswith(f"{missing}:")

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(MtransferError, match="not a readable raft-small state dict") as caught:
        load_named_estimator("raft-small", weights=garbage)
    assert str(caught.value).startswith(f"{garbage}:") and "\n" not in str(caught.value)

    other_variant = tmp_path / "small_for_large.pth"
    torch.save(small_state_dict(seed=3), other_variant)
    with pytest.raises(MtransferError, match="do not fit raft-large") as caught:
        load_named_estimator("raft-large", weights=other_variant)
    assert str(caught.value).startswith(f"{other_variant}:") and "\n" not in str(caught.value)

    monkeypatch.setenv(WEIGHTS_ENV, str(missing))
    with pytest.raises(MtransferError, match=f"\\${WEIGHTS_ENV}"):
        load_named_estimator("raft-small")


def test_loader_names_and_bad_settings() -> None:
    assert ESTIMATORS == ("raft-large", "raft-small", "tvl1", "ilk", "pyramid")
    with pytest.raises(MtransferError, match="raft-large, raft-small, tvl1, ilk, pyramid"):
        load_named_estimator("flownet")
    with pytest.raises(MtransferError, match="needs no weights"):
        load_named_estimator("tvl1", weights="model.pth")
    with pytest.raises(MtransferError, match="iterations must be positive"):
        load_named_estimator("pyramid", iterations=0)
    with pytest.raises(MtransferError, match="iterations must be at least 1"):
        load_named_estimator("raft-small", weights="random", iterations=0)
    assert load_named_estimator("tvl1", iterations=7).num_iter == 7
    assert load_named_estimator("ilk", iterations=4).num_warp == 4
    for name in ("tvl1", "ilk", "pyramid"):
        estimator = load_named_estimator(name)
        assert isinstance(estimator, FlowEstimator) and estimator.name == name
        assert estimator.differentiable == (name == "pyramid")


def test_paper_preset_asks_for_the_original_raft_things_weights(offline_hub: Path) -> None:
    """The paper preset names torchvision's C_T_V1 (the port of the original "raft-things" checkpoint the
    authors load) and RAFT's mixed precision; uncached, the one-line error names exactly that file."""
    from mtransfer.app.models import check_models
    from mtransfer.app.settings import RunSettings
    from mtransfer.presets import load_pipeline

    run = RunSettings.from_config(load_pipeline("paper"))
    assert (run.estimator.name, run.estimator.weights, run.estimator.autocast) == ("raft-large", "C_T_V1", True)
    with pytest.raises(MtransferError) as caught:
        check_models(run.model, run.estimator)
    message = str(caught.value)
    assert "\n" not in message and "Raft_Large_Weights.C_T_V1" in message
    assert str(offline_hub / Path(Raft_Large_Weights.C_T_V1.url).name) in message
    assert Raft_Large_Weights.C_T_V1.url in message and "C_T_SKHT" not in message


def test_named_weights_load_from_the_hub_cache(offline_hub: Path) -> None:
    state = small_state_dict(seed=4)
    offline_hub.mkdir(parents=True)
    torch.save(state, offline_hub / Path(Raft_Small_Weights.C_T_V1.url).name)
    estimator = load_named_estimator("raft-small", weights="C_T_V1")  # the network stub raises if anything is downloaded
    loaded = estimator.model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    with pytest.raises(MtransferError, match="C_T_V1, C_T_V2, DEFAULT"):
        load_named_estimator("raft-small", weights="C_T_SKHT_V2")  # a raft-large name: no such file, names the choices


def test_autocast_is_a_no_op_off_cuda() -> None:
    """RAFT's mixed precision only applies on CUDA: on the CPU the flow is bit-identical and fp32."""
    torch.manual_seed(0)
    source, target = torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)
    plain = load_named_estimator("raft-small", weights="random", iterations=2)
    mixed = load_named_estimator("raft-small", weights="random", iterations=2, autocast=True)
    mixed.model.load_state_dict(plain.model.state_dict())
    flow = mixed(source, target)
    assert flow.dtype == torch.float32 and torch.equal(flow, plain(source, target))
    with pytest.raises(MtransferError, match="only applies to RAFT"):
        load_named_estimator("pyramid", autocast=True)
