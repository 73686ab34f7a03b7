"""Flow fields as tensors.

Convention (the only one used in mtransfer): a flow is a float tensor ``(2, H, W)`` or ``(B, 2, H, W)``
defined on the *source* pixel grid. Channel 0 is the horizontal displacement ``u`` (pixels, +x to the
right), channel 1 the vertical displacement ``v`` (pixels, +y down). Pixel centres sit at integer
coordinates, so the source pixel at ``(x, y)`` moves to ``(x + u, y + v)``. This is what
``torchvision.models.optical_flow.raft_large(img1, img2)`` returns for the motion from img1 to img2.

Angles are in degrees and positive angles turn counter-clockwise *as seen on screen* (y points down).

Modules: ``warp`` (backward warping, occlusion masks), ``elementary`` (exact flows of simple maps),
``ops`` (compose, invert, resize, ...), ``io`` (.flo / .npy / KITTI .png files, masks), ``viz``
(colour coding, arrows, error heat maps) and ``spec`` (the inline motion language of the command line).
"""

from mtransfer.flows.elementary import (
    bulge,
    homography,
    homography_from_points,
    rotation,
    scaling,
    shear,
    stretch,
    translation,
    twirl,
    wobble,
)
from mtransfer.flows.io import read_flow, read_flow_and_valid, read_mask, write_flow
from mtransfer.flows.ops import blend, compose, invert, move_image, resize_flow, restrict, scale_motion
from mtransfer.flows.spec import MotionTerm, build_term, format_spec, load_flow, motion_usage, parse_flow_spec, spec_terms
from mtransfer.flows.viz import color_wheel, error_scale, error_to_color, flow_to_color, quiver_overlay
from mtransfer.flows.warp import (
    as_flow_batch,
    occlusion_mask,
    pixel_grid,
    reference_occlusion_mask,
    sample_at,
    splat_image,
    warp,
)

__all__ = [
    "MotionTerm",
    "as_flow_batch",
    "blend",
    "build_term",
    "bulge",
    "color_wheel",
    "compose",
    "error_scale",
    "error_to_color",
    "flow_to_color",
    "format_spec",
    "homography",
    "homography_from_points",
    "invert",
    "load_flow",
    "motion_usage",
    "move_image",
    "occlusion_mask",
    "reference_occlusion_mask",
    "parse_flow_spec",
    "pixel_grid",
    "quiver_overlay",
    "read_flow",
    "read_flow_and_valid",
    "read_mask",
    "resize_flow",
    "restrict",
    "rotation",
    "sample_at",
    "scale_motion",
    "scaling",
    "shear",
    "spec_terms",
    "splat_image",
    "stretch",
    "translation",
    "twirl",
    "warp",
    "wobble",
    "write_flow",
]
