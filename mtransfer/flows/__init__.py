"""Flow fields as tensors.

Convention (the only one used in mtransfer): a flow is a float tensor ``(2, H, W)`` or ``(B, 2, H, W)``
defined on the *source* pixel grid. Channel 0 is the horizontal displacement ``u`` (pixels, +x to the
right), channel 1 the vertical displacement ``v`` (pixels, +y down). Pixel centres sit at integer
coordinates, so the source pixel at ``(x, y)`` moves to ``(x + u, y + v)``. This is what
``torchvision.models.optical_flow.raft_large(img1, img2)`` returns for the motion from img1 to img2.
"""

from mtransfer.flows.warp import disocclusion_mask, occlusion_mask, pixel_grid, sample_at, warp

__all__ = ["disocclusion_mask", "occlusion_mask", "pixel_grid", "sample_at", "warp"]
