"""Render the sample clips, their ground-truth flows and the still images in this folder.

Run once from the repository root (the outputs are committed): ``.venv/bin/python sample_videos/make_samples.py``.
Everything is deterministic: textures come from ``skimage.data`` (bundled, no download) and every
frame is rendered directly from frame 0 by the exact inverse of its motion, so nothing drifts.

A clip is a textured layer (a disc, or the whole frame for the pan) over a static background. At time
t the layer has moved by a map A_t given as an elementary flow; frame t is the layer warped by the flow
of A_t^-1 (``warp(layer, flow)(q) = layer(q + flow(q)) = layer(A_t^-1 q)``), composited with its alpha.
The ground truth from frame 0 to frame t is the flow of A_t on the layer's pixels and 0 elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data

from mtransfer.files import atomic_path, save_image
from mtransfer.flows import warp
from mtransfer.flows.elementary import rotation, scaling, translation
from mtransfer.video import write_video

HERE = Path(__file__).resolve().parent
HEIGHT, WIDTH = 128, 160
FRAMES = 24
FPS = 12
CRF = 12  # nearly lossless: the flow tests measure the estimators, not the codec

Motion = Callable[[int, int, float], torch.Tensor]
"""(height, width, t) -> the (2, H, W) flow of the layer's map A_t at time t.

Every motion here is a one-parameter group (A_0 = identity, A_s A_t = A_s+t), so A_t^-1 = A_-t and
rendering needs no separate inverse.
"""


@dataclass(frozen=True)
class Clip:
    name: str
    description: str
    motion: Motion
    disc: tuple[float, float, float] | None  # (cx, cy, radius) of the moving disc; None = the whole frame moves


def _texture(image: np.ndarray, height: int, width: int, zoom: float, top: int, left: int) -> torch.Tensor:
    """A ``(3, height, width)`` float crop of a skimage image, resized by ``zoom`` first (antialiased)."""
    pixels = torch.from_numpy(image).float() / 255.0
    pixels = pixels[..., None].expand(-1, -1, 3) if pixels.dim() == 2 else pixels
    pixels = pixels.permute(2, 0, 1)[None]
    size = (round(pixels.shape[-2] * zoom), round(pixels.shape[-1] * zoom))
    pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return pixels[:, top : top + height, left : left + width].clamp(0.0, 1.0)


def _background() -> torch.Tensor:
    """Gravel, tinted warm: a static texture with no period, so a flow estimator cannot slip by one tile."""
    gray = _texture(data.gravel(), HEIGHT, WIDTH, 0.5, 40, 30)
    tint = torch.tensor([0.95, 0.78, 0.55]).view(3, 1, 1)
    return (0.15 + 0.85 * gray) * tint


def _disc_layer(cx: float, cy: float, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The astronaut's face in a disc at (cx, cy), with a one-pixel antialiased edge."""
    face_x, face_y = 140, 80  # the astronaut's face in the image scaled to 0.6
    patch = _texture(data.astronaut(), HEIGHT, WIDTH, 0.6, round(face_y - cy), round(face_x - cx))
    ys, xs = torch.meshgrid(torch.arange(HEIGHT).float(), torch.arange(WIDTH).float(), indexing="ij")
    distance = ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt()
    alpha = (radius - distance + 0.5).clamp(0.0, 1.0)[None]
    return patch, alpha


CLIPS = (
    Clip(
        "translate",
        "a textured disc (r = 26 px) gliding right and down by (0.3, 0.1) px per frame over static gravel",
        lambda height, width, t: translation(height, width, 0.3 * t, 0.1 * t),
        (50.0, 58.0, 26.0),
    ),
    Clip(
        "rotate",
        "a textured disc (r = 36 px) turning counter-clockwise by 0.5 degrees per frame about its centre",
        lambda height, width, t: rotation(height, width, 0.5 * t, (79.5, 63.5)),
        (79.5, 63.5, 36.0),
    ),
    Clip(
        "scale",
        "a textured disc (r = 28 px) growing by 1 % per frame about its centre (x 1.26 at the end)",
        lambda height, width, t: scaling(height, width, 1.01**t, (79.5, 63.5)),
        (79.5, 63.5, 28.0),
    ),
    Clip(
        "pan",
        "a camera pan over a motorcycle in a workshop: the whole frame moves by (-0.3, 0.12) px per frame",
        lambda height, width, t: translation(height, width, -0.3 * t, 0.12 * t),
        None,
    ),
)


def render_clip(clip: Clip) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frames ``(T, 3, H, W)``, ground-truth flows from frame 0 ``(T-1, 2, H, W)``, moving-layer mask ``(H, W)``."""
    steps = range(1, FRAMES)
    if clip.disc is None:
        # The pan films a window of a larger picture; the window moves, so the content moves the other way.
        margin = 32
        picture = _texture(data.stereo_motorcycle()[0], HEIGHT + 2 * margin, WIDTH + 2 * margin, 0.4, 40, 40)
        window = (slice(None), slice(margin, margin + HEIGHT), slice(margin, margin + WIDTH))
        big_height, big_width = picture.shape[-2:]
        frames = [picture[window]] + [
            warp(picture, clip.motion(big_height, big_width, -t))[window] for t in steps
        ]
        flows = torch.stack([clip.motion(HEIGHT, WIDTH, t) for t in steps])
        return torch.stack(frames), flows, torch.ones(HEIGHT, WIDTH, dtype=torch.bool)

    background = _background()
    layer, alpha = _disc_layer(*clip.disc)
    frames = [alpha * layer + (1 - alpha) * background]
    for t in steps:
        inverse = clip.motion(HEIGHT, WIDTH, -t)
        moved_alpha = warp(alpha, inverse)
        frames.append(moved_alpha * warp(layer, inverse) + (1 - moved_alpha) * background)
    mask = alpha[0] >= 0.5
    flows = torch.stack([clip.motion(HEIGHT, WIDTH, t) * mask for t in steps])
    return torch.stack(frames).clamp(0.0, 1.0), flows, mask


def _still(image: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Centre-crop to the aspect ratio of ``height x width``, then resize (antialiased)."""
    rows, cols = image.shape[:2]
    if cols * height > rows * width:
        keep = round(rows * width / height)
        image = image[:, (cols - keep) // 2 : (cols - keep) // 2 + keep]
    else:
        keep = round(cols * height / width)
        image = image[(rows - keep) // 2 : (rows - keep) // 2 + keep]
    pixels = torch.from_numpy(np.ascontiguousarray(image)).float().permute(2, 0, 1)[None] / 255.0
    return F.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True)[0].clamp(0.0, 1.0)


def main() -> None:
    for clip in CLIPS:
        frames, flows, mask = render_clip(clip)
        write_video(HERE / f"{clip.name}.mp4", frames, FPS, crf=CRF)
        with atomic_path(HERE / f"{clip.name}_flow.npz") as tmp:
            np.savez_compressed(tmp, flows=flows.numpy().astype(np.float32), object_mask=mask.numpy())
        largest = flows[-1].norm(dim=0)[mask].max().item()
        print(f"{clip.name}.mp4: {clip.description}; {FRAMES} frames {WIDTH}x{HEIGHT}, up to {largest:.1f} px")
    save_image(HERE / "cat.png", _still(data.chelsea(), 256, 384))
    print(f"cat.png: 384x256 (chelsea), total {sum(p.stat().st_size for p in HERE.iterdir()) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
