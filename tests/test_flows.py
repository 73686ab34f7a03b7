"""Elementary flows, flow operations and flow pictures, checked against the maps they stand for."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch
from torchvision.utils import flow_to_image

from mtransfer.flows import (
    blend,
    bulge,
    color_wheel,
    compose,
    flow_to_color,
    homography,
    homography_from_points,
    invert,
    move_image,
    pixel_grid,
    quiver_overlay,
    resize_flow,
    restrict,
    rotation,
    scale_motion,
    scaling,
    shear,
    stretch,
    translation,
    twirl,
    warp,
    wobble,
)

H, W = 41, 53  # odd sizes: the image centre is a pixel centre


def interior(tensor: torch.Tensor, margin: int = 8) -> torch.Tensor:
    return tensor[..., margin:-margin, margin:-margin]


def smooth_image(height: int = H, width: int = W) -> torch.Tensor:
    x, y = pixel_grid(height, width)
    return torch.stack((0.5 + 0.4 * torch.sin(x / 5), 0.5 + 0.4 * torch.cos(y / 6), 0.5 + 0.3 * torch.sin((x + y) / 7)))


def test_translation_is_constant() -> None:
    flow = translation(H, W, 3.5, -2.0)
    assert flow.shape == (2, H, W) and flow.dtype == torch.float32
    assert torch.all(flow[0] == 3.5) and torch.all(flow[1] == -2.0)


def test_rotation_fixes_its_centre_and_turns_counter_clockwise_on_screen() -> None:
    flow = rotation(H, W, 90)
    cx, cy = (W - 1) // 2, (H - 1) // 2
    assert flow[:, cy, cx].abs().max() < 1e-5
    # The pixel 10 to the right of the centre goes to 10 above it (y points down).
    assert torch.allclose(flow[:, cy, cx + 10], torch.tensor([-10.0, -10.0]), atol=1e-4)
    other = rotation(H, W, 30, center=(5.0, 7.0))
    assert other[:, 7, 5].abs().max() < 1e-5
    # Rigid: distances to the centre are kept.
    grid = pixel_grid(H, W)
    offsets = grid - torch.tensor([5.0, 7.0]).view(2, 1, 1)
    assert torch.allclose((offsets + other).norm(dim=0), offsets.norm(dim=0), atol=1e-4)


def test_rotation_then_its_opposite_is_identity() -> None:
    there_and_back = compose(rotation(H, W, 25), rotation(H, W, -25))
    assert interior(there_and_back).abs().max() < 1e-3


def test_scaling_then_reciprocal_is_identity_and_the_centre_stays() -> None:
    assert interior(compose(scaling(H, W, 1.25), scaling(H, W, 0.8))).abs().max() < 1e-3
    zoom = scaling(H, W, 1.5, center=(10.0, 12.0))
    assert zoom[:, 12, 10].abs().max() < 1e-6
    assert torch.allclose(zoom[:, 12, 20], torch.tensor([5.0, 0.0]))


def test_compose_translation_then_rotation_equals_the_rigid_map() -> None:
    dx, dy, degrees, (cx, cy) = 4.0, -3.0, 20.0, (26.0, 20.0)
    composed = compose(translation(H, W, dx, dy), rotation(H, W, degrees, center=(cx, cy)))
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    theta = math.radians(degrees)
    mx, my = xs + dx - cx, ys + dy - cy  # translate first, then rotate about (cx, cy), y down
    expected = np.stack((cx + math.cos(theta) * mx + math.sin(theta) * my - xs,
                         cy - math.sin(theta) * mx + math.cos(theta) * my - ys))
    assert np.abs(interior(composed).numpy() - expected[:, 8:-8, 8:-8]).max() < 1e-3
    # Adding the two fields instead would be wrong by the rotation of the translation.
    added = translation(H, W, dx, dy) + rotation(H, W, degrees, center=(cx, cy))
    assert np.abs(interior(added).numpy() - expected[:, 8:-8, 8:-8]).max() > 0.5


def test_compose_matches_warping_twice() -> None:
    image = smooth_image()
    a, b = twirl(H, W, 30, 18), rotation(H, W, 8)
    twice = warp(warp(image, b), a)
    once = warp(image, compose(a, b))
    assert interior(twice - once, 10).abs().max() < 2e-2


def test_compose_broadcasts_batches() -> None:
    a = torch.stack((rotation(H, W, 10), twirl(H, W, 40, 15)))
    b = scaling(H, W, 1.1)
    batched = compose(a, b)
    assert batched.shape == (2, 2, H, W)
    for i in range(2):
        assert torch.allclose(batched[i], compose(a[i], b), atol=1e-5)


def test_homography_from_points_maps_its_points() -> None:
    src = torch.tensor([[2.0, 3.0], [40.0, 5.0], [45.0, 35.0], [4.0, 30.0]])
    dst = torch.tensor([[5.0, 1.0], [42.0, 8.0], [40.0, 38.0], [1.0, 33.0]])
    matrix = homography_from_points(src, dst)
    assert matrix.dtype == torch.float64 and matrix[2, 2] == 1
    mapped = matrix @ torch.cat((src.double(), torch.ones(4, 1, dtype=torch.float64)), 1).T
    assert torch.allclose((mapped[:2] / mapped[2]).T, dst.double(), atol=1e-4)
    flow = homography(H, W, matrix)
    for (x, y), target in zip(src.long().tolist(), dst):
        assert torch.allclose(flow[:, y, x], target - torch.tensor([x, y], dtype=torch.float32), atol=1e-4)


def test_homography_of_an_affine_matrix_is_that_affine_flow() -> None:
    matrix = [[1.0, 0.0, 3.0], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]]
    assert torch.allclose(homography(H, W, matrix), translation(H, W, 3.0, -2.0), atol=1e-5)


def test_homography_rejects_degenerate_input() -> None:
    with pytest.raises(ValueError, match="one line"):
        homography_from_points([[0, 0], [1, 1], [2, 2], [0, 5]], [[0, 0], [1, 0], [1, 1], [0, 1]])
    with pytest.raises(ValueError, match="horizon"):
        homography(H, W, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-0.1, 0.0, 1.0]])


def test_stretch_moves_only_along_its_axis() -> None:
    wide = stretch(H, W, 1.5)
    assert wide[1].abs().max() < 1e-5
    assert torch.allclose(wide[0, :, 36], torch.full((H,), 5.0))  # 10 px right of the centre column 26
    tall = stretch(H, W, 2.0, angle_degrees=90)
    assert tall[0].abs().max() < 1e-4
    assert torch.allclose(tall[1, 30, :], torch.full((W,), 10.0), atol=1e-4)
    diagonal = stretch(H, W, 2.0, angle_degrees=45)
    across = diagonal[:, 20 - 5, 26 - 5]  # on the other diagonal, perpendicular to the axis: no motion
    assert across.abs().max() < 1e-4


def test_shear_formula() -> None:
    flow = shear(H, W, 0.5, -0.25, center=(0.0, 0.0))
    x, y = pixel_grid(H, W)
    assert torch.allclose(flow[0], 0.5 * y) and torch.allclose(flow[1], -0.25 * x)


def test_twirl_is_undone_by_its_opposite_and_fades_to_zero() -> None:
    flow = twirl(H, W, 90, 15)
    centre_offsets = pixel_grid(H, W) - torch.tensor([26.0, 20.0]).view(2, 1, 1)
    radius = centre_offsets.norm(dim=0)
    assert flow[:, radius >= 15].abs().max() == 0
    assert torch.allclose((centre_offsets + flow).norm(dim=0), radius, atol=1e-4)
    # Exact up to bilinear sampling of this strongly curved field inside compose.
    assert interior(compose(flow, twirl(H, W, -90, 15)), 2).abs().max() < 0.1
    # Turning by less further out: a point at r = 12 turns less than one at r = 3.
    near, far = centre_offsets[:, 20, 29], centre_offsets[:, 20, 38]
    near_turn = torch.atan2(-(near + flow[:, 20, 29])[1], (near + flow[:, 20, 29])[0])
    far_turn = torch.atan2(-(far + flow[:, 20, 38])[1], (far + flow[:, 20, 38])[0])
    assert near_turn > far_turn > 0


def test_bulge_magnifies_the_centre_and_stays_one_to_one() -> None:
    flow = bulge(H, W, 0.5, 15)
    offsets = pixel_grid(H, W) - torch.tensor([26.0, 20.0]).view(2, 1, 1)
    assert flow[:, offsets.norm(dim=0) >= 15].abs().max() == 0
    assert torch.allclose(flow[:, 20, 27], torch.tensor([0.5, 0.0]), atol=0.01)  # zoom 1.5 at the centre
    along_ray = (offsets + flow)[0, 20, 26:]
    assert torch.all(along_ray.diff() > 0)
    pinch = bulge(H, W, -0.5, 15)
    assert pinch[0, 20, 30] < 0  # pulled towards the centre
    with pytest.raises(ValueError):
        bulge(H, W, 2.0, 15)


def test_wobble_is_bounded_seeded_and_invertible() -> None:
    flow = wobble(H, W, 2.0, 30.0, seed=3)
    assert flow.abs().max() <= 2.0 + 1e-5 and flow.abs().max() > 0.5
    assert torch.equal(flow, wobble(H, W, 2.0, 30.0, seed=3))
    assert not torch.allclose(flow, wobble(H, W, 2.0, 30.0, seed=4))
    assert interior(compose(invert(flow), flow)).abs().max() < 1e-3
    with pytest.raises(ValueError):
        wobble(H, W, 10.0, 30.0)


def test_blend_restrict_and_scale_motion() -> None:
    a, b = translation(H, W, 2.0, 0.0), rotation(H, W, 10)
    assert torch.equal(blend(a, b, 0.0), a) and torch.allclose(blend(a, b, 1.0), b)
    assert torch.allclose(blend(a, b, 0.25), 0.75 * a + 0.25 * b)
    mask = torch.zeros(H, W)
    mask[:, :20] = 1.0
    mask[:, 20] = 0.5
    kept = restrict(b, mask)
    assert torch.equal(kept[:, :, :20], b[:, :, :20]) and kept[:, :, 21:].abs().max() == 0
    assert torch.allclose(kept[:, :, 20], 0.5 * b[:, :, 20])
    assert torch.equal(restrict(b, mask[None]), kept)
    with pytest.raises(ValueError):
        restrict(b, mask * 2)
    assert torch.allclose(scale_motion(b, -0.5), -0.5 * b)


def test_resize_flow_scales_vectors_with_the_grid() -> None:
    doubled = resize_flow(translation(H, W, 3.0, -1.0), (2 * H, 2 * W))
    assert doubled.shape == (2, 2 * H, 2 * W)
    assert torch.allclose(doubled, translation(2 * H, 2 * W, 6.0, -2.0), atol=1e-5)
    wide = resize_flow(translation(H, W, 3.0, -1.0), (H, 3 * W))
    assert torch.allclose(wide, translation(H, 3 * W, 9.0, -1.0), atol=1e-5)
    # A zoom about the image centre stays that zoom about the new centre.
    assert torch.allclose(interior(resize_flow(scaling(H, W, 1.2), (2 * H, 2 * W))),
                          interior(scaling(2 * H, 2 * W, 1.2)), atol=1e-3)
    batch = torch.stack((scaling(H, W, 1.2), rotation(H, W, 5)))
    assert resize_flow(batch, (20, 30)).shape == (2, 2, 20, 30)


def test_invert_composes_to_identity_both_ways() -> None:
    flow = compose(twirl(H, W, 45, 18), translation(H, W, 1.5, 0.5))
    inverse = invert(flow)
    # g(y) + f(y + g(y)) = 0 is the equation invert solves on the grid ...
    assert interior(compose(inverse, flow), 10).abs().max() < 1e-3
    # ... while the other order also samples the curved inverse between pixels.
    assert interior(compose(flow, inverse), 10).abs().max() < 0.1


def test_invert_handles_large_rotations() -> None:
    # Plain fixed-point iteration diverges beyond 60 degrees; the inverse of a turn is the opposite turn.
    offsets = pixel_grid(H, W) - torch.tensor([26.0, 20.0]).view(2, 1, 1)
    inside = offsets.norm(dim=0) < 18  # points whose turned positions stay on the grid
    for degrees in (90, 150):
        difference = invert(rotation(H, W, degrees)) - rotation(H, W, -degrees)
        assert difference[:, inside].abs().max() < 1e-3


def test_move_image_carries_content_forward() -> None:
    image = smooth_image()
    moved = move_image(image, translation(H, W, 3.0, 2.0))
    assert torch.allclose(moved[:, 2:, 3:], image[:, :-2, :-3], atol=1e-5)
    # A blob at (36, 20) rotated by 90 degrees about the centre (26, 20) lands at (26, 10).
    x, y = pixel_grid(H, W)
    blob = torch.exp(-((x - 36) ** 2 + (y - 20) ** 2) / 4.0)[None]
    rotated = move_image(blob, rotation(H, W, 90))[0]
    weight = rotated / rotated.sum()
    assert abs(float((weight * x).sum()) - 26) < 0.2 and abs(float((weight * y).sum()) - 10) < 0.2


def _hue_degrees(rgb: torch.Tensor) -> float:
    return 360 * colorsys.rgb_to_hsv(*rgb.tolist())[0]


def test_flow_to_color_zero_is_white_and_directions_follow_the_wheel() -> None:
    assert torch.allclose(flow_to_color(torch.zeros(2, 4, 5)), torch.ones(3, 4, 5))
    directions = {"right": (1.0, 0.0), "down": (0.0, 1.0), "left": (-1.0, 0.0), "up": (0.0, -1.0)}
    hues = {}
    for name, (u, v) in directions.items():
        flow = translation(3, 3, u, v)
        colour = flow_to_color(flow, max_magnitude=1.0)[:, 1, 1]
        assert colour.max() == pytest.approx(1.0, abs=1e-5)  # fully saturated at max_magnitude
        hues[name] = _hue_degrees(colour)
    right = hues["right"] - 360 if hues["right"] > 180 else hues["right"]
    assert abs(right) < 20 and abs(hues["left"] - 180) < 30
    assert right < hues["down"] < hues["left"] < hues["up"] < 330


def test_flow_to_color_matches_torchvision_and_shares_a_fixed_scale() -> None:
    flow = torch.randn(2, 2, 12, 16, generator=torch.Generator().manual_seed(0)) * 3
    ours = flow_to_color(flow)
    assert ours.shape == (2, 3, 12, 16) and ours.min() >= 0 and ours.max() <= 1
    reference = flow_to_image(flow).float() / 255
    assert (ours - reference).abs().max() <= 1 / 255 + 1e-4
    slow = translation(4, 4, 1.0, 0.0)
    pale, strong = flow_to_color(slow, max_magnitude=4.0), flow_to_color(slow, max_magnitude=1.0)
    # Same direction, so same hue; the smaller share of the scale is paler (closer to white).
    assert _hue_degrees(pale[:, 0, 0]) == pytest.approx(_hue_degrees(strong[:, 0, 0]), abs=1)
    assert pale[:, 0, 0].min() > strong[:, 0, 0].min() + 0.3
    faster = flow_to_color(translation(4, 4, 2.0, 0.0), max_magnitude=1.0)
    assert faster.max() < 0.8  # beyond the scale: darkened


def test_color_wheel_legend() -> None:
    legend = color_wheel(65)
    assert legend.shape == (3, 65, 65)
    assert torch.allclose(legend[:, 32, 32], torch.ones(3), atol=1e-3)  # no motion at the centre
    assert torch.equal(legend[:, 0, 0], torch.ones(3))  # outside the disc
    rim_right = legend[:, 32, 63]
    assert rim_right[0] > 0.9 and rim_right[1] < 0.2  # full-speed rightwards is red


def test_quiver_overlay_draws_arrows_along_the_motion() -> None:
    image = torch.zeros(3, 64, 64)
    still = quiver_overlay(image, torch.zeros(2, 64, 64), step=16)
    moving = quiver_overlay(image, translation(64, 64, 6.0, 0.0), step=16)
    assert moving.shape == (3, 64, 64) and moving.dtype == torch.float32
    assert 0 <= moving.min() and moving.max() <= 1
    drawn = moving.sum(0) > 0
    assert drawn.sum() > still.sum(0).gt(0).sum() * 3
    columns = torch.nonzero(drawn)[:, 1]
    starts = torch.tensor([8, 24, 40, 56])
    offsets = columns[:, None] - starts[None]
    nearest = offsets.gather(1, offsets.abs().argmin(1, keepdim=True))
    assert (nearest >= 0).float().mean() > 0.9  # ink lies to the right of each arrow's start
    assert torch.allclose(moving[0][drawn], torch.ones(int(drawn.sum())))  # red arrows by default
    batch = quiver_overlay(image[None].repeat(2, 1, 1, 1), translation(64, 64, 6.0, 0.0), step=16)
    assert torch.equal(batch[1], moving)


@pytest.mark.parametrize("sigma", [0.6, 1.0, 2.5])
@pytest.mark.parametrize("length", [5, 40, 600])  # 600: past MATRIX_BLUR_MAX, the shifted-copies path
def test_gaussian_blur_is_scipys_nearest_mode_gaussian_with_radius_ceil_3_sigma(sigma, length):
    """Rule: along each axis, out[i] = sum_k w_k x[clamp(i + k, 0, n - 1)] with w the normalised Gaussian
    over k = -r..r, r = ceil(3 sigma) — scipy's gaussian_filter1d with mode="nearest" and that radius."""
    from scipy.ndimage import gaussian_filter1d

    from mtransfer.flows.ops import MATRIX_BLUR_MAX, gaussian_blur

    assert (length > MATRIX_BLUR_MAX) == (length == 600)
    values = torch.rand(2, 3, length, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(length))
    radius = math.ceil(3 * sigma)
    expected = gaussian_filter1d(values.numpy(), sigma, axis=2, mode="nearest", radius=radius)
    expected = gaussian_filter1d(expected, sigma, axis=3, mode="nearest", radius=radius)
    blurred = gaussian_blur(values, sigma)
    np.testing.assert_allclose(blurred.numpy(), expected, atol=1e-12)
    gradient, = torch.autograd.grad(gaussian_blur(values.requires_grad_(), sigma).sum(), values)
    assert torch.isfinite(gradient).all() and gradient.sum().item() == pytest.approx(values.numel())
