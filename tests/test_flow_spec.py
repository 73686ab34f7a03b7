"""The inline motion language and load_flow: specs must equal the functions they name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mtransfer.errors import InputError, MtransferError
from mtransfer.flows import (
    bulge,
    compose,
    homography,
    homography_from_points,
    load_flow,
    parse_flow_spec,
    rotation,
    scaling,
    shear,
    stretch,
    translation,
    twirl,
    wobble,
    write_flow,
)

H, W = 30, 41
CENTRE = ((W - 1) / 2, (H - 1) / 2)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("translate(10, -2)", lambda: translation(H, W, 10, -2)),
        ("translate(dy=3, dx=10%)", lambda: translation(H, W, 0.1 * W, 3)),
        ("translate(50%, 50%)", lambda: translation(H, W, W / 2, H / 2)),
        ("rotate(20, cx=50%, cy=40%)", lambda: rotation(H, W, 20, center=(0.5 * (W - 1), 0.4 * (H - 1)))),
        ("rotation(-15, 10, 5)", lambda: rotation(H, W, -15, center=(10, 5))),
        ("ROTATE(20)", lambda: rotation(H, W, 20)),
        ("scale(1.3)", lambda: scaling(H, W, 1.3)),
        ("scale(0.9, cx=0, cy=100%)", lambda: scaling(H, W, 0.9, center=(0, H - 1))),
        ("stretch(1.5, angle=30)", lambda: stretch(H, W, 1.5, 30)),
        ("shear(0.2, -0.1, 5, 6)", lambda: shear(H, W, 0.2, -0.1, center=(5, 6))),
        ("twirl(90)", lambda: twirl(H, W, 90, min(H, W) / 2)),
        ("twirl(45, radius=10, cx=25%)", lambda: twirl(H, W, 45, 10, center=(0.25 * (W - 1), CENTRE[1]))),
        ("bulge(-0.4, 40%)", lambda: bulge(H, W, -0.4, 0.4 * H)),
        ("wobble(1.5, seed=7)", lambda: wobble(H, W, 1.5, H / 2, seed=7)),
        (
            "homography(1, 0.1, 2, 0, 1, -1, 0, 1e-3, 1)",
            lambda: homography(H, W, [[1, 0.1, 2], [0, 1, -1], [0, 1e-3, 1]]),
        ),
        ("  translate( 3 , 4 ) ", lambda: translation(H, W, 3, 4)),
    ],
)
def test_each_motion_equals_the_function(spec: str, expected) -> None:
    flow = parse_flow_spec(spec, H, W)
    assert flow.shape == (2, H, W) and flow.dtype == torch.float32
    assert torch.allclose(flow, expected(), atol=1e-5)


def test_chains_compose_in_order_and_strength_scales_a_term() -> None:
    chained = parse_flow_spec("rotate(20, cx=50%, cy=40%) | translate(10, 0)", H, W)
    rotate = rotation(H, W, 20, center=(0.5 * (W - 1), 0.4 * (H - 1)))
    assert torch.allclose(chained, compose(rotate, translation(H, W, 10, 0)), atol=1e-5)
    reversed_order = parse_flow_spec("translate(10, 0) | rotate(20, cx=50%, cy=40%)", H, W)
    assert not torch.allclose(chained, reversed_order, atol=0.5)
    weakened = parse_flow_spec("twirl(60, radius=12) * 0.5 | translate(2, 1) * -1", H, W)
    expected = compose(0.5 * twirl(H, W, 60, 12), translation(H, W, -2, -1))
    assert torch.allclose(weakened, expected, atol=1e-5)


def test_homography_from_corner_targets() -> None:
    flow = parse_flow_spec("homography(2, 1, 100%, 0, 95%, 100%, 0, 90%)", H, W)
    corners = [[0, 0], [W - 1, 0], [W - 1, H - 1], [0, H - 1]]
    targets = [[2, 1], [W - 1, 0], [0.95 * (W - 1), H - 1], [0, 0.9 * (H - 1)]]
    for (x, y), target in zip(corners, targets):
        moved = torch.tensor(target, dtype=torch.float32) - torch.tensor([x, y])
        assert torch.allclose(flow[:, y, x], moved, atol=1e-3)
    matrix = homography_from_points(corners, targets)
    assert torch.allclose(flow, homography(H, W, matrix), atol=1e-5)


def test_mask_restricts_only_its_term(tmp_path) -> None:
    mask = np.zeros((H, W), np.uint8)
    mask[:, : W // 2] = 255
    path = tmp_path / "left half, painted.png"
    Image.fromarray(mask).save(path)
    flow = parse_flow_spec(f"translate(4, 0, mask='{path}') | translate(0, 2)", H, W)
    assert torch.allclose(flow[:, :, 0], torch.tensor([4.0, 2.0])[:, None].expand(2, H))
    assert torch.allclose(flow[:, :, -1], torch.tensor([0.0, 2.0])[:, None].expand(2, H))
    small = tmp_path / "small.png"
    Image.fromarray(mask[::2, ::2]).save(small)  # another size: refused like edit --mask, never stretched
    with pytest.raises(InputError, match=r"small\.png: motion mask is 15x21, expected 30x41"):
        parse_flow_spec(f"scale(1.2, mask={small})", H, W)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("spin(20)", "unknown motion 'spin'"),
        ("", "empty motion"),
        ("rotate(20) |", "empty motion"),
        ("rotate 20", "expected name(arguments)"),
        ("rotate(twenty)", "degrees must be a number"),
        ("rotate(20%)", "plain number, not a percentage"),
        ("rotate()", "missing argument 'degrees'"),
        ("rotate(1, 2, 3, 4)", "at most 3 arguments"),
        ("rotate(20, angle=3)", "unknown argument 'angle'"),
        ("rotate(20, cx=1, cx=2)", "given twice"),
        ("rotate(20, 5, cx=2)", "both by position and by name"),
        ("rotate(cx=2, 20)", "after a keyword"),
        ("rotate(20,)", "empty argument"),
        ("translate(1) * lots", "strength must be a number"),
        ("bulge(3)", "bulge: bulge strength must lie in"),
        ("homography(1, 2, 3)", "8 corner coordinates or 9 matrix entries"),
        ("homography(1, 0, 0, 0, 1, 0, 0, 0, 1, cx=3)", "positional numbers only"),
        ("rotate(nan)", "must be finite"),
    ],
)
def test_bad_specs_raise_one_line_errors_naming_the_spec(spec: str, problem: str) -> None:
    with pytest.raises(MtransferError) as caught:
        parse_flow_spec(spec, H, W)
    message = str(caught.value)
    assert message.startswith(f"flow spec '{spec}'") and problem in message and "\n" not in message


def test_unknown_motion_lists_the_valid_ones() -> None:
    with pytest.raises(MtransferError) as caught:
        parse_flow_spec("rotate(10) | zoom(2)", H, W)
    message = str(caught.value)
    for name in ("translate(dx, dy=0)", "rotate(", "scale(", "stretch(", "shear(", "twirl(", "bulge(", "homography("):
        assert name in message


def test_missing_mask_names_the_mask_file(tmp_path) -> None:
    with pytest.raises(MtransferError, match="nowhere.png: no such mask image"):
        parse_flow_spec(f"rotate(10, mask={tmp_path / 'nowhere.png'})", H, W)


def test_load_flow_reads_files_and_checks_their_size(tmp_path) -> None:
    flow = rotation(H, W, 12)
    for suffix in (".flo", ".npy"):
        write_flow(tmp_path / f"target{suffix}", flow)
        assert torch.equal(load_flow(tmp_path / f"target{suffix}", H, W), flow)
    write_flow(tmp_path / "target.png", flow)
    assert (load_flow(str(tmp_path / "target.png"), H, W) - flow).abs().max() <= 1 / 128 + 1e-4
    with pytest.raises(MtransferError) as caught:
        load_flow(tmp_path / "target.flo", 20, 40)
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "target.flo")) and f"{H}x{W}" in message and "20x40" in message


def test_load_flow_tells_files_from_specs(tmp_path) -> None:
    assert torch.allclose(load_flow("twirl(30) | translate(1, 2)", H, W),
                          compose(twirl(H, W, 30, H / 2), translation(H, W, 1, 2)))
    with pytest.raises(MtransferError, match="missing.flo: no such flow file"):
        load_flow(str(tmp_path / "missing.flo"), H, W)
    (tmp_path / "notes.txt").write_text("rotate(10)")
    with pytest.raises(MtransferError, match="notes.txt: unknown flow file type"):
        load_flow(tmp_path / "notes.txt", H, W)
    with pytest.raises(MtransferError, match="flow spec 'rotate': not a flow file or a motion"):
        load_flow("rotate", H, W)


def test_the_language_documents_every_motion_as_its_table_defines_it() -> None:
    """The module docstring (the reference users read, also in ``--help`` via ``motion_usage``) lists each
    motion with exactly the parameters and defaults the parser takes."""
    import mtransfer.flows.spec as spec

    for signature in spec.motion_usage().split(", homography")[0].split("), "):
        assert signature.rstrip(")") + ")" in spec.__doc__, signature
