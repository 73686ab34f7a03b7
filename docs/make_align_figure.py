"""Draw ``docs/align.png``: one driving flow laid onto a target image of another shape, five ways.

Run from the repository root: ``.venv/bin/python docs/make_align_figure.py``. The driving flow is the
ground truth of ``sample_videos/rotate.mp4`` at its last frame (a disc turning about its centre, 160x128);
the target is ``sample_videos/cat.png`` at 192x128 (3:2). Each panel is the target image with the aligned
flow's colour coding blended over it where there is motion, and the edit mask's outline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from mtransfer.files import load_image, save_image, to_uint8
from mtransfer.flows.viz import flow_to_color
from mtransfer.app.settings import AlignSettings
from mtransfer.flows.align import motion_mask

ROOT = Path(__file__).resolve().parent.parent
SIZE = (128, 192)  # (height, width) of the target
PANELS = (
    ("driving flow (video, 160x128)", None),
    ("stretch", AlignSettings(fit="stretch")),
    ("cover (default)", AlignSettings(fit="cover")),
    ("contain", AlignSettings(fit="contain")),
    ("region [0.5,0.1,0.95,0.9] + contain", AlignSettings(fit="contain", region=(0.5, 0.1, 0.95, 0.9))),
    ("source_region + feather 12 + strength 2",
     AlignSettings(fit="stretch", source_region=(0.25, 0.0, 0.75, 1.0), region=(0.1, 0.1, 0.6, 0.9), feather=12,
                 strength=2.0)),
)


def panel(image: torch.Tensor, flow: torch.Tensor, scale: float, title: str) -> Image.Image:
    """The image with the flow colour over the moving part, the edit-mask outline, and a caption."""
    color = flow_to_color(flow, max_magnitude=scale)
    moving = (flow.norm(dim=0, keepdim=True) > 0.05).float()
    mixed = image * (1 - 0.75 * moving) + color * 0.75 * moving
    mask = motion_mask(flow, threshold=0.5, margin=4)[0]
    edge = (F.max_pool2d(mask[None], 3, 1, 1)[0] - mask).clamp(0, 1)
    mixed = torch.where(edge > 0, torch.tensor([1.0, 1.0, 0.0]).view(3, 1, 1), mixed)
    canvas = Image.new("RGB", (SIZE[1], SIZE[0] + 18), "white")
    canvas.paste(Image.fromarray(to_uint8(F.interpolate(mixed[None], SIZE, mode="nearest")[0])), (0, 18))
    ImageDraw.Draw(canvas).text((3, 3), title, fill=(0, 0, 0))
    return canvas


def main() -> None:
    truth = np.load(ROOT / "sample_videos" / "rotate_flow.npz")["flows"][-1]
    driving = torch.from_numpy(truth) * 3.0  # exaggerated so the colours read at this size
    frame = load_image(ROOT / "sample_videos" / "cat.png", SIZE)
    scale = float(driving.norm(dim=0).max()) * 2
    images = []
    for title, config in PANELS:
        if config is None:
            still = torch.full((3, *driving.shape[-2:]), 0.85)
            images.append(panel(still, driving, scale, title))
        else:
            images.append(panel(frame, config.align_flow(driving, SIZE), scale, title))
    width = max(im.width for im in images)
    sheet = Image.new("RGB", (3 * (width + 6), 2 * (images[1].height + 6)), "white")
    for i, im in enumerate(images):
        sheet.paste(im, ((i % 3) * (width + 6), (i // 3) * (images[1].height + 6)))
    save_image(ROOT / "docs" / "align.png", np.asarray(sheet))


if __name__ == "__main__":
    main()
