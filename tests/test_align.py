"""Alignment of a driving flow onto a target image: sizes, vector scaling, placement, masks, smoothing."""

from __future__ import annotations

import pytest
import torch

from mtransfer.errors import MtransferError
from mtransfer.flows import pixel_grid
from mtransfer.app.settings import AlignSettings
from mtransfer.flows.align import (
    feather_mask,
    fit_flow,
    motion_mask,
    pixel_box,
    smooth_flow,
    smooth_over_time,
)


def constant_flow(height: int, width: int, u: float, v: float) -> torch.Tensor:
    flow = torch.empty(2, height, width)
    flow[0], flow[1] = u, v
    return flow


def test_stretch_scales_each_axis_by_its_own_factor():
    fitted = fit_flow(constant_flow(40, 80, 4.0, 2.0), (20, 20), "stretch")
    assert fitted.shape == (2, 20, 20)
    assert torch.allclose(fitted[0], torch.full((20, 20), 4.0 * 20 / 80))
    assert torch.allclose(fitted[1], torch.full((20, 20), 2.0 * 20 / 40))


def test_cover_scales_uniformly_by_the_larger_factor_and_crops_the_centre():
    fitted = fit_flow(constant_flow(40, 80, 4.0, 2.0), (80, 80), "cover")
    assert fitted.shape == (2, 80, 80)
    assert torch.allclose(fitted[0], torch.full((80, 80), 8.0), atol=1e-5)  # x2 on both axes
    assert torch.allclose(fitted[1], torch.full((80, 80), 4.0), atol=1e-5)
    # No scaling needed (factor 1 on the height): the centre 40 columns of an x-ramp survive.
    ramp = torch.stack((pixel_grid(40, 80)[0], torch.zeros(40, 80)))
    cropped = fit_flow(ramp, (40, 40), "cover")
    assert torch.equal(cropped[0, 0], torch.arange(20, 60, dtype=torch.float32))


def test_contain_scales_by_the_smaller_factor_and_pads_with_zero_motion():
    fitted = fit_flow(constant_flow(40, 80, 4.0, 2.0), (60, 40), "contain")
    assert fitted.shape == (2, 60, 40)
    # factor min(60/40, 40/80) = 0.5 → the flow becomes 20x40, centred with 20 empty rows above and below.
    assert torch.allclose(fitted[:, 20:40], constant_flow(20, 40, 2.0, 1.0), atol=1e-5)
    assert fitted[:, :20].abs().max() == 0 and fitted[:, 40:].abs().max() == 0


def test_pixel_box_reads_fractions_and_pixels_and_rejects_bad_boxes():
    assert pixel_box([0.25, 0.5, 0.75, 1.0], 40, 80) == (20, 20, 60, 40)
    assert pixel_box([10, 5, 30, 25], 40, 80) == (10, 5, 30, 25)
    with pytest.raises(MtransferError, match="outside"):
        pixel_box([10, 5, 90, 25], 40, 80)
    with pytest.raises(MtransferError, match="empty"):
        pixel_box([30, 5, 10, 25], 40, 80)


def test_region_places_the_motion_in_the_box_and_zero_elsewhere():
    config = AlignSettings(fit="stretch", region=(10, 4, 30, 14))
    aligned = config.align_flow(constant_flow(20, 40, 4.0, 2.0), (30, 50))
    assert aligned.shape == (2, 30, 50)
    inside = aligned[:, 4:14, 10:30]
    assert torch.allclose(inside[0], torch.full((10, 20), 4.0 * 20 / 40))
    assert torch.allclose(inside[1], torch.full((10, 20), 2.0 * 10 / 20))
    outside = aligned.clone()
    outside[:, 4:14, 10:30] = 0
    assert outside.abs().max() == 0


def test_source_region_takes_the_motion_from_that_part_of_the_driving_frame():
    flow = torch.zeros(2, 20, 40)
    flow[0, :, 20:] = 3.0  # only the right half moves
    config = AlignSettings(fit="stretch", source_region=(0.5, 0.0, 1.0, 1.0))
    aligned = config.align_flow(flow, (20, 20))
    assert torch.allclose(aligned[0], torch.full((20, 20), 3.0))


def test_mask_region_keeps_motion_only_where_the_mask_is_white():
    mask = torch.zeros(1, 30, 30)
    mask[0, 5:15, 10:25] = 1.0
    aligned = AlignSettings(fit="stretch").align_flow(constant_flow(30, 30, 2.0, 0.0), (30, 30), mask)
    assert torch.equal(aligned[0] != 0, mask[0] > 0)
    # The driving frame is mapped onto the mask's 15x10 bounding box: u shrinks by 15/30.
    assert torch.allclose(aligned[0, 5:15, 10:25], torch.full((10, 15), 1.0))


def test_strength_scales_every_vector():
    flow = torch.randn(2, 16, 16)
    full = AlignSettings().align_flow(flow, (16, 16))
    half = AlignSettings(strength=0.5).align_flow(flow, (16, 16))
    assert torch.allclose(half, 0.5 * full)


def test_feather_is_a_linear_ramp_inside_the_region_and_ignores_the_image_border():
    mask = torch.zeros(1, 20, 20)
    mask[0, :, :12] = 1.0  # touches the left, top and bottom borders; its only edge is at column 11
    soft = feather_mask(mask, 4)
    assert torch.allclose(soft[0, 10, 8:12], torch.tensor([1.0, 0.75, 0.5, 0.25]))
    assert torch.equal(soft[0, :, 0], torch.ones(20))  # no fading at the image border
    assert soft[0, :, 12:].abs().max() == 0


def test_spatial_smoothing_keeps_constant_motion_and_reduces_noise():
    constant = constant_flow(24, 24, 1.5, -2.0)
    assert torch.allclose(smooth_flow(constant, 2.0), constant, atol=1e-5)
    noise = torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(0))
    assert smooth_flow(noise, 2.0).std() < 0.5 * noise.std()


def test_temporal_smoothing_keeps_frame_zero_and_damps_a_spike():
    flows = torch.zeros(9, 2, 4, 4)
    flows[1:] = 1.0
    flows[4] = 5.0
    for method, amount in (("ema", 0.5), ("gaussian", 1.0)):
        smoothed = smooth_over_time(flows, method, amount)
        assert smoothed.shape == flows.shape
        assert smoothed[0].abs().max() == 0
        assert smoothed[4].max() < 4.0 and smoothed[4].max() > 1.0
        assert torch.allclose(smoothed[1:].mean(), flows[1:].mean(), atol=0.6)
    steady = torch.ones(6, 2, 3, 3)
    steady[0] = 0
    assert torch.allclose(smooth_over_time(steady, "gaussian", 2.0), steady, atol=1e-6)


def test_align_flows_handles_a_whole_clip():
    flows = torch.randn(5, 2, 12, 16)
    flows[0] = 0
    config = AlignSettings(fit="contain", temporal="gaussian", temporal_amount=1.0)
    aligned = config.align_flows(flows, (24, 24))
    assert aligned.shape == (5, 2, 24, 24)
    assert aligned[0].abs().max() == 0


def test_motion_mask_covers_moving_pixels_and_where_they_land():
    flow = torch.zeros(2, 20, 30)
    flow[0, 5:10, 5:10] = 6.0  # a 5x5 block moving 6 px right
    mask = motion_mask(flow, threshold=0.5, margin=0)[0, 0]
    expected = torch.zeros(20, 30, dtype=torch.bool)
    expected[5:10, 5:10] = True  # the block's old place
    expected[5:10, 11:16] = True  # its new place
    assert torch.equal(mask > 0, expected)
    grown = motion_mask(flow, threshold=0.5, margin=2)[0, 0]
    assert grown.sum() == (5 + 4) * (11 + 4)  # the 5x11 union (columns 5-15) grown by 2 px each way
    assert motion_mask(torch.zeros(2, 8, 8)).sum() == 0


def test_config_rejects_bad_values_with_the_key_name():
    with pytest.raises(MtransferError, match="align.fit"):
        AlignSettings(fit="squash")
    with pytest.raises(MtransferError, match="align.region"):
        AlignSettings.from_mapping({"region": [1, 2, 3]})
    with pytest.raises(MtransferError, match="align.colour"):
        AlignSettings.from_mapping({"colour": 1})
    assert AlignSettings.from_mapping({"region": [], "source_region": ""}).region is None
