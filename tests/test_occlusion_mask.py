"""The authors' colour-loss mask (``reference_occlusion_mask``) against masks derived by hand from its rule.

The rule, in words (Geng & Owens, ``losses.py``): sample the target flow at ``p + f(p)`` (bilinear, the
position reflected about the border pixel centres when it leaves the frame); where the sampled value
differs from ``f(p)``, every pixel the sample is read from with a non-zero bilinear weight is "reached";
reached pixels whose own flow is zero are hidden (0), every other pixel is compared (1).

The expected masks below are worked out from that rule with index arithmetic. Frames are 33 or 17 pixels
wide (size - 1 a power of two), so the grid normalisation ``-1 + 2 (p + f) / (size - 1)`` is exact in
float32 and the code's bilinear weights are the exact ones; at other sizes float rounding of that
normalisation can reach an extra neighbour, exactly as in the authors' code.
"""

from __future__ import annotations

import math

import torch

from mtransfer.flows import occlusion_mask, reference_occlusion_mask, rotation

SIZE = 33


def block_flow(rows: range, cols: range, u: float, v: float, size: tuple[int, int] = (SIZE, SIZE)) -> torch.Tensor:
    flow = torch.zeros(2, *size)
    flow[0, rows.start : rows.stop, cols.start : cols.stop] = u
    flow[1, rows.start : rows.stop, cols.start : cols.stop] = v
    return flow


def mask_with_hidden(hidden: set[tuple[int, int]], size: tuple[int, int] = (SIZE, SIZE)) -> torch.Tensor:
    """A ``(1, 1, H, W)`` mask that is 0 exactly at the given ``(x, y)`` pixels."""
    mask = torch.ones(1, 1, *size)
    for x, y in hidden:
        mask[0, 0, y, x] = 0
    return mask


def assert_same_mask(actual: torch.Tensor, expected: torch.Tensor) -> None:
    wrong = (actual != expected).nonzero()[:, 2:].tolist()
    assert not wrong, f"{len(wrong)} pixels differ (y, x), e.g. {wrong[:8]}"


def test_integer_shift_hides_the_still_pixels_the_block_lands_on() -> None:
    """A block moving by (5, 0) samples the flow 5 px to its right: the same block value where that is
    still inside the block (unchanged, nothing reached), zero where it is not. Those samples are read
    with weight 1 from exactly one pixel each, so the hidden pixels are the landing spots outside the
    block: columns x1 .. x1 + 4 of the block's rows."""
    rows, cols, dx = range(10, 20), range(8, 16), 5
    landed = {(x + dx, y) for y in rows for x in cols}
    hidden = {(x, y) for x, y in landed if x not in cols}
    assert hidden == {(x, y) for y in rows for x in range(16, 21)}
    assert_same_mask(reference_occlusion_mask(block_flow(rows, cols, dx, 0)), mask_with_hidden(hidden))


def test_a_block_moving_past_its_own_width_leaves_a_gap() -> None:
    """Moving by (0, -7) a block 4 rows high: every landing spot is outside the block and still."""
    rows, cols, dy = range(20, 24), range(5, 12), -7
    hidden = {(x, y + dy) for y in rows for x in cols}
    mask = reference_occlusion_mask(block_flow(rows, cols, 0, dy))
    assert_same_mask(mask, mask_with_hidden(hidden))
    assert (mask[0, 0, 17:20, 5:12] == 1).all()  # rows between landing spots and block: nothing lands there


def test_half_pixel_shift_hides_only_the_column_past_the_edge() -> None:
    """Moving by (0.5, 0), pixel x samples half of x and half of x + 1. Inside the block both are the
    block's value (unchanged); only the block's last column mixes in the still column x1, which is read
    with weight 1/2 and hidden. The splat rule (rounding to the nearest pixel) differs here."""
    rows, cols = range(4, 12), range(6, 14)
    hidden = {(cols.stop, y) for y in rows}
    flow = block_flow(rows, cols, 0.5, 0)
    assert_same_mask(reference_occlusion_mask(flow), mask_with_hidden(hidden))
    assert (reference_occlusion_mask(flow) != occlusion_mask(flow)).any()


def test_diagonal_half_pixel_shift_reads_four_pixels() -> None:
    """Moving by (-0.5, 0.5), pixel (x, y) samples (x-1, y), (x, y), (x-1, y+1), (x, y+1) with weight 1/4
    each; the sample differs from the block value when one of them is outside the block (first column
    or last row); then every still one of those four is hidden."""
    rows, cols = range(3, 9), range(10, 15)
    inside = {(x, y) for y in rows for x in cols}
    hidden: set[tuple[int, int]] = set()
    for x, y in inside:
        read = {(x - 1, y), (x, y), (x - 1, y + 1), (x, y + 1)}
        if not read <= inside:
            hidden |= read - inside
    assert hidden == {(9, y) for y in range(3, 10)} | {(x, 9) for x in range(9, 15)}  # an L: left column, row below
    assert_same_mask(reference_occlusion_mask(block_flow(rows, cols, -0.5, 0.5)), mask_with_hidden(hidden))


def test_a_region_leaving_the_frame_is_still_compared() -> None:
    """A block at the right border moving by (+6, 0) samples beyond the last column; reflection about the
    last pixel centre maps x + 6 to 2 (W - 1) - (x + 6). Columns 29..32 read 29, 28, 27, 26: column 29 is
    in the block (unchanged), 26..28 are still and hidden. The moving pixels themselves, which leave the
    frame, stay compared (the splat rule hides them)."""
    rows, cols, dx = range(12, 18), range(29, 33), 6
    reflected = {(2 * (SIZE - 1) - (x + dx), y) for y in rows for x in cols}
    hidden = {(x, y) for x, y in reflected if x not in cols}
    assert hidden == {(x, y) for y in rows for x in (26, 27, 28)}
    flow = block_flow(rows, cols, dx, 0)
    mask = reference_occlusion_mask(flow)
    assert_same_mask(mask, mask_with_hidden(hidden))
    assert (mask[0, 0, 12:18, 29:33] == 1).all() and (occlusion_mask(flow)[0, 0, 12:18, 29:33] == 0).all()


def hand_rule(flow: torch.Tensor) -> torch.Tensor:
    """The rule in words, in float64 and plain Python loops (no torch sampling): for flows whose sample
    positions are not within 1e-4 of a pixel centre along an axis and whose samples differ from the
    unwarped value by clearly more than rounding, or not at all (checked), as for the rotation below."""
    f = flow.double().tolist()
    height, width = len(f[0]), len(f[0][0])

    def reflect(value: float, size: int) -> float:
        period = 2 * (size - 1)
        value = abs(value) % period
        return period - value if value > size - 1 else value

    reached: set[tuple[int, int]] = set()
    for y in range(height):
        for x in range(width):
            sx, sy = reflect(x + f[0][y][x], width), reflect(y + f[1][y][x], height)
            x0, y0 = math.floor(sx), math.floor(sy)
            fx, fy = sx - x0, sy - y0
            assert fx == 0 or 1e-4 < fx < 1 - 1e-4, "ambiguous sample position for a float32 check"
            assert fy == 0 or 1e-4 < fy < 1 - 1e-4, "ambiguous sample position for a float32 check"
            read = [
                ((cx, cy), wx * wy)
                for cx, wx in ((x0, 1 - fx), (x0 + 1, fx))
                for cy, wy in ((y0, 1 - fy), (y0 + 1, fy))
                if wx * wy > 0
            ]
            changed = False
            for channel in range(2):
                sample = sum(w * f[channel][cy][cx] for (cx, cy), w in read)
                difference = abs(sample - f[channel][y][x])
                assert difference == 0 or difference > 1e-3, "sample too close to the unwarped value to decide"
                changed |= difference > 0
            if changed:
                reached |= {pixel for pixel, _ in read}
    hidden = {(x, y) for x, y in reached if f[0][y][x] == 0 and f[1][y][x] == 0}
    return mask_with_hidden(hidden, (height, width))


def test_hand_rule_agrees_with_the_closed_forms_above() -> None:
    """The loop version of the rule gives the integer-shift and half-shift masks derived above."""
    shifted = block_flow(range(10, 20), range(8, 16), 5, 0)
    assert_same_mask(hand_rule(shifted), mask_with_hidden({(x, y) for y in range(10, 20) for x in range(16, 21)}))
    half = block_flow(range(4, 12), range(6, 14), 0.5, 0)
    assert_same_mask(hand_rule(half), mask_with_hidden({(14, y) for y in range(4, 12)}))


def test_rotation_of_a_disc() -> None:
    """A disc of radius 6 turning by 12 degrees about the frame centre (the centre pixel itself has zero
    flow, so it counts as still). Hidden: the still pixels around the disc's rim that rotated samples
    read from, and none inside it."""
    height, width = 17, 33
    flow = rotation(height, width, 12.0)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    disc = ((xs - 16.0) ** 2 + (ys - 8.0) ** 2 <= 36).float()
    flow = flow * disc
    expected = hand_rule(flow)
    hidden = expected[0, 0] == 0
    assert 10 < hidden.sum() < 60 and not (hidden & (disc > 0) & (flow.abs().sum(0) > 0)).any()
    assert_same_mask(reference_occlusion_mask(flow), expected)


def test_batches_and_single_flows_give_the_same_mask() -> None:
    one = block_flow(range(10, 20), range(8, 16), 5, 0)
    two = block_flow(range(3, 9), range(10, 15), -0.5, 0.5)
    batch = reference_occlusion_mask(torch.stack((one, two)))
    assert batch.shape == (2, 1, SIZE, SIZE)
    assert torch.equal(batch[:1], reference_occlusion_mask(one)) and torch.equal(batch[1:], reference_occlusion_mask(two))
