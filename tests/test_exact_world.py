"""Motion guidance in a world with a known answer.

The "model" knows exactly one picture (a textured square on a textured background) with the square at
every integer position in a range, and denoises exactly (``ExactBackend``). Guided by a flow that
moves the square by (dx, dy), the sampler can only succeed by ending on the member with the square at
p0 + (dx, dy); unguided, DDIM from the source's inversion noise must give the source back; outside the
edit mask, the source's latents are pasted, so the background stays the source's.

The second test edits real pictures (the six of ``benchmarks.exact_world``: five from ``skimage.data``
and the bundled cat) with the ``offline-demo`` preset as it is (its model, family and guidance values,
through the benchmark's own edit loop), at 48x64 to stay fast: the picture under every whole-pixel shift
within ±6 px. Guided by ``translate(dx, dy)``, each edit must end exactly on the member shifted by
(dx, dy), for every picture, in every direction at the largest shift the demo advertises (the edge of
its family) and at a few smaller ones. Guidance settles on the member of lowest flow loss, so a third test checks the
precondition on clean members: under the pyramid estimator, the requested member scores lower than all
eight of its 1 px neighbours (it did not while moved members had black bands where content arrives
from outside the frame: the still band's edge was read as no motion and spread over flat regions).

Tuning (settings, not assertions): the weight-free pyramid estimator is unreliable at the square's
occlusion boundaries, where the colour term trusts its flow for warping, so that term would favour the
unmoved picture; the colour weight is 0 here and the flow term does the work. The set's members are so
distinct that the posterior commits within the first few steps, so guidance is strong (1000) and uses
4 recursions per step to steer before it commits.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from mtransfer.diffusion import ExactBackend, motion_family
from mtransfer.estimators import PyramidEstimator
from mtransfer.files import load_image
from mtransfer.flows import translation
from mtransfer.guidance import GuidanceSettings, edit_image, prepare_source
from mtransfer.app.settings import RunSettings
from mtransfer.presets import load_pipeline
from benchmarks.exact_world import picture_path, shift, sweep_picture

SIZE, SQUARE = 48, 20
P0 = (12, 14)  # top-left corner (x, y) of the square in the source
MOVE = (4, 2)  # the target motion (dx, dy) in pixels


def _smooth_noise(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return F.avg_pool2d(torch.rand(1, *shape, generator=generator), 3, 1, 1, count_include_pad=False)[0]


GENERATOR = torch.Generator().manual_seed(1)
BACKGROUND = 0.5 + (_smooth_noise((3, SIZE, SIZE), GENERATOR) - 0.5)
OBJECT = _smooth_noise((3, SQUARE, SQUARE), GENERATOR)
OBJECT[0] = 0.95  # a red square: easy to tell from the background


def render(x: int, y: int) -> torch.Tensor:
    image = BACKGROUND.clone()
    image[:, y : y + SQUARE, x : x + SQUARE] = OBJECT
    return image


POSITIONS = [(x, y) for y in range(P0[1] - 2, P0[1] + MOVE[1] + 3) for x in range(P0[0] - 3, P0[0] + MOVE[0] + 4)]


def nearest_position(image: torch.Tensor, members: torch.Tensor) -> tuple[tuple[int, int], float]:
    """The square's position in the set member closest to ``image``, and the mean |difference| to it."""
    distance = (members - image[None]).abs().flatten(1).mean(1)
    index = int(distance.argmin())
    return POSITIONS[index], float(distance[index])


@pytest.fixture(scope="module")
def world() -> dict:
    members = torch.stack([render(x, y) for x, y in POSITIONS])
    flow = torch.zeros(2, SIZE, SIZE)
    flow[0, P0[1] : P0[1] + SQUARE, P0[0] : P0[0] + SQUARE] = MOVE[0]
    flow[1, P0[1] : P0[1] + SQUARE, P0[0] : P0[0] + SQUARE] = MOVE[1]
    mask = torch.zeros(SIZE, SIZE)  # the square's path, 3 px margin
    mask[P0[1] - 3 : P0[1] + MOVE[1] + SQUARE + 3, P0[0] - 3 : P0[0] + MOVE[0] + SQUARE + 3] = 1
    return {"backend": ExactBackend(members), "members": members, "flow": flow, "mask": mask, "source": render(*P0)}


def test_guidance_moves_the_square_to_the_target_position(world: dict) -> None:
    config = GuidanceSettings(
        steps=20, recursions=4, cfg_scale=1.0, guidance_weight=1000.0, flow_weight=3.0, color_weight=0.0,
        preview_every=0,
    )
    estimator = PyramidEstimator(window=0.7, smoothness=1.0)
    backend, source, mask = world["backend"], world["source"], world["mask"]
    state = prepare_source(backend, source, "", config)

    guided = edit_image(backend, estimator, state, world["flow"], config, edit_mask=mask)
    position, residual = nearest_position(guided.image, world["members"])
    assert not guided.diverged
    assert position == (P0[0] + MOVE[0], P0[1] + MOVE[1])
    assert residual < 0.02  # (nearly) that member itself, not a blend
    outside = (guided.image - source).abs() * (1 - mask)
    assert outside.max() < 1e-3  # the background outside the edit mask is the source's
    measured = guided.achieved_flow[:, P0[1] + 4 : P0[1] + SQUARE - 4, P0[0] + 4 : P0[0] + SQUARE - 4]
    assert (measured.mean((1, 2)) - torch.tensor(MOVE, dtype=torch.float32)).abs().max() < 0.5

    unguided = edit_image(backend, estimator, state, world["flow"], config.replace(guidance_weight=0.0, recursions=1),
                          edit_mask=mask)
    position, residual = nearest_position(unguided.image, world["members"])
    assert position == P0 and residual < 0.02


DEMO_AT_48x64 = ["model.size=[48, 64]"]  # the offline-demo preset as it is, at a quarter of its pixels
LARGEST = RunSettings.from_config(load_pipeline("offline-demo")).model.family_radius  # the demo's ±6 px


@pytest.mark.parametrize(
    ("picture", "moves"),
    # six directions at 3-5 px and the largest shift the demo advertises (the edge of its family) in the
    # eight directions, over the six pictures
    [("astronaut", [(3, 2), (-4, 3)]), ("coffee", [(-5, -1), (LARGEST, -LARGEST)]), ("cat", [(-4, 3), (0, LARGEST)]),
     ("rocket", [(LARGEST, 0), (-LARGEST, -LARGEST)]), ("immunohistochemistry", [(2, -4), (-LARGEST, 0)]),
     ("chelsea", [(-4, -4), (LARGEST, LARGEST), (0, -LARGEST), (-LARGEST, LARGEST)])],
)
def test_offline_demo_edits_land_exactly_on_the_requested_shift(picture: str, moves: list[tuple[int, int]],
                                                                  tmp_path) -> None:
    requested = [shift(dx, dy) for dx, dy in moves]
    rows = sweep_picture((picture, picture_path(picture, tmp_path), requested, DEMO_AT_48x64))
    assert [tuple(row["landed"]) for row in rows] == requested
    assert all(row["residual"] < 0.02 for row in rows)  # that member itself, not a blend of neighbours
    assert not any(row["diverged"] for row in rows)


@pytest.mark.parametrize(
    ("picture", "move"),
    # with black bands the estimator preferred (1, -2), (-2, 1), (4, 3), (3, 2) respectively
    [("immunohistochemistry", (2, -2)), ("immunohistochemistry", (-2, 2)), ("chelsea", (4, 4)), ("rocket", (2, 2))],
)
def test_the_requested_member_has_the_lowest_flow_loss_among_its_neighbours(picture: str, move: tuple[int, int],
                                                                            tmp_path) -> None:
    source = load_image(picture_path(picture, tmp_path), size=(48, 64))
    candidates = [(move[0] + ox, move[1] + oy) for oy in (-1, 0, 1) for ox in (-1, 0, 1)]
    members = motion_family(source, translations=candidates)
    measured = PyramidEstimator()(source[None].expand(len(candidates), -1, -1, -1), members)
    loss = (measured - translation(48, 64, *move)).abs().mean((1, 2, 3))  # the energy's flow term
    assert candidates[int(loss.argmin())] == move
