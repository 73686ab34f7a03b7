"""Elementary motions as exact flow fields.

Each function builds the flow of a map ``T`` of the plane: the value at pixel ``p`` is ``T(p) - p``
(convention: see ``mtransfer.flows``). Angles are in degrees and positive angles turn
**counter-clockwise as seen on screen**; because the y axis points down, that is clockwise in the
usual maths orientation. A ``center`` is ``(cx, cy)`` in pixels and defaults to the image centre
``((W - 1) / 2, (H - 1) / 2)``. Every map here is one-to-one; parameters that would fold the image
onto itself raise ``ValueError``.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Sequence

import torch

from mtransfer.flows.warp import pixel_grid

Center = tuple[float, float] | None
Device = torch.device | str | None


def _offsets(height: int, width: int, center: Center, device: Device, dtype: torch.dtype) -> torch.Tensor:
    """Pixel positions relative to ``center`` as ``(2, H, W)``: the ``p - c`` every centred map acts on."""
    cx, cy = ((width - 1) / 2, (height - 1) / 2) if center is None else center
    grid = pixel_grid(height, width, device=device, dtype=dtype)
    return grid - torch.tensor([cx, cy], device=device, dtype=dtype).view(2, 1, 1)


def _turn(offsets: torch.Tensor, radians: torch.Tensor | float) -> torch.Tensor:
    """Rotate ``(2, H, W)`` offsets counter-clockwise on screen (y down) by a scalar or per-pixel angle."""
    radians = torch.as_tensor(radians, device=offsets.device, dtype=offsets.dtype)
    cos, sin = torch.cos(radians), torch.sin(radians)
    dx, dy = offsets
    return torch.stack((cos * dx + sin * dy, -sin * dx + cos * dy))


def _bump(offsets: torch.Tensor, radius: float) -> torch.Tensor:
    """``(1 - (r/R)^2)^2`` inside the radius, 0 outside: 1 at the centre, flat and C1 where it meets 0."""
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    rho2 = (offsets.square().sum(0) / radius**2).clamp(max=1.0)
    return (1.0 - rho2).square()


def translation(
    height: int, width: int, dx: float, dy: float = 0.0, *, device: Device = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Every pixel moves by ``(dx, dy)``."""
    flow = torch.empty((2, height, width), device=device, dtype=dtype)
    flow[0], flow[1] = dx, dy
    return flow


def rotation(
    height: int,
    width: int,
    degrees: float,
    center: Center = None,
    *,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Rigid rotation about ``center``; positive ``degrees`` turn counter-clockwise on screen."""
    offsets = _offsets(height, width, center, device, dtype)
    return _turn(offsets, math.radians(degrees)) - offsets


def scaling(
    height: int,
    width: int,
    factor: float,
    center: Center = None,
    *,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform zoom about ``center``: ``factor > 1`` enlarges, ``factor < 1`` shrinks."""
    if factor <= 0:
        raise ValueError(f"scale factor must be positive, got {factor}")
    return (factor - 1.0) * _offsets(height, width, center, device, dtype)


def stretch(
    height: int,
    width: int,
    factor: float,
    angle_degrees: float = 0.0,
    center: Center = None,
    *,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Scale by ``factor`` along one axis only; the axis leaves +x at ``angle_degrees`` counter-clockwise.

    Distances across the axis are kept, so ``angle_degrees=0`` widens (or narrows) and 90 makes taller.
    """
    if factor <= 0:
        raise ValueError(f"stretch factor must be positive, got {factor}")
    offsets = _offsets(height, width, center, device, dtype)
    angle = math.radians(angle_degrees)
    axis = torch.tensor([math.cos(angle), -math.sin(angle)], device=device, dtype=dtype).view(2, 1, 1)
    along = (offsets * axis).sum(0, keepdim=True)
    return (factor - 1.0) * along * axis


def shear(
    height: int,
    width: int,
    shx: float,
    shy: float = 0.0,
    center: Center = None,
    *,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Linear shear about ``center``: ``x' = x + shx (y - cy)``, ``y' = y + shy (x - cx)``."""
    if math.isclose(shx * shy, 1.0):
        raise ValueError(f"shear ({shx}, {shy}) has shx * shy = 1 and flattens the image onto a line")
    dx, dy = _offsets(height, width, center, device, dtype)
    return torch.stack((shx * dy, shy * dx))


def homography(
    height: int,
    width: int,
    matrix: torch.Tensor | Sequence[Sequence[float]],
    *,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Projective map ``[x', y', 1] ~ matrix @ [x, y, 1]`` in pixel coordinates.

    Raises ``ValueError`` when the map's horizon line crosses the image, because pixels on its far
    side would be sent through infinity and the flow stops being a motion.
    """
    matrix = torch.as_tensor(matrix, dtype=torch.float64)
    if matrix.shape != (3, 3) or not torch.isfinite(matrix).all():
        raise ValueError(f"a homography is a finite 3x3 matrix, got shape {tuple(matrix.shape)}")
    grid = pixel_grid(height, width, dtype=torch.float64)
    points = torch.cat((grid, torch.ones_like(grid[:1]))).flatten(1)
    mapped = matrix @ points
    depth = mapped[2]
    if depth.min() * depth.max() <= 0 or (depth.abs().min() < 1e-12 * depth.abs().max()):
        raise ValueError("the homography's horizon crosses the image: part of it would go through infinity")
    flow = (mapped[:2] / depth).view(2, height, width) - grid
    return flow.to(device=device, dtype=dtype)


def homography_from_points(
    source: torch.Tensor | Sequence[Sequence[float]], target: torch.Tensor | Sequence[Sequence[float]]
) -> torch.Tensor:
    """The 3x3 homography (float64, ``[2, 2] = 1``) sending four ``(x, y)`` points onto four others.

    Normalised direct linear transform (Hartley): both point sets are centred and scaled before the
    8x9 system is solved by SVD, which keeps the solution accurate for pixel-sized coordinates.
    """
    src = torch.as_tensor(source, dtype=torch.float64)
    dst = torch.as_tensor(target, dtype=torch.float64)
    if src.shape != (4, 2) or dst.shape != (4, 2):
        raise ValueError(f"need 4 source and 4 target (x, y) points, got {tuple(src.shape)} and {tuple(dst.shape)}")
    src_norm, src_t = _normalise_points(src)
    dst_norm, dst_t = _normalise_points(dst)
    rows = []
    for (x, y), (u, v) in zip(src_norm.tolist(), dst_norm.tolist()):
        rows.append([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y, -u])
        rows.append([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y, -v])
    _, singular, vh = torch.linalg.svd(torch.tensor(rows, dtype=torch.float64))
    if singular[-1] < 1e-9 * singular[0]:
        raise ValueError("the four point pairs do not determine a unique homography")
    matrix = torch.linalg.inv(dst_t) @ vh[-1].view(3, 3) @ src_t
    return matrix / matrix[2, 2]


def _normalise_points(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre points at 0 with mean distance sqrt(2); also the 3x3 matrix doing that. Rejects collinear triples."""
    mean = points.mean(0)
    spread = (points - mean).norm(dim=1).mean()
    if spread == 0:
        raise ValueError("the four points coincide")
    scale = math.sqrt(2) / spread
    transform = torch.tensor(
        [[scale, 0.0, -scale * mean[0]], [0.0, scale, -scale * mean[1]], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    normalised = (points - mean) * scale
    for a, b, c in combinations(normalised, 3):
        if abs(float((b - a)[0] * (c - a)[1] - (b - a)[1] * (c - a)[0])) < 1e-9:
            raise ValueError(f"three of the points {points.tolist()} lie on one line")
    return normalised, transform


def twirl(
    height: int,
    width: int,
    degrees: float,
    radius: float,
    center: Center = None,
    *,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Swirl: pixels turn about ``center`` by ``degrees`` at the centre, falling smoothly to 0 at ``radius``.

    Each pixel keeps its distance from the centre, so ``twirl(-degrees)`` undoes ``twirl(degrees)`` exactly.
    """
    offsets = _offsets(height, width, center, device, dtype)
    return _turn(offsets, math.radians(degrees) * _bump(offsets, radius)) - offsets


def bulge(
    height: int,
    width: int,
    strength: float,
    radius: float,
    center: Center = None,
    *,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Magnify (``strength > 0``) or pinch (``strength < 0``) the disc of ``radius`` around ``center``.

    Distances from the centre become ``r (1 + strength * bump(r))``, a zoom by ``1 + strength`` at the
    centre fading to none at the radius; the map stays one-to-one for ``-1 < strength < 1.25``.
    """
    if not -1.0 < strength < 1.25:
        raise ValueError(f"bulge strength must lie in (-1, 1.25) to keep the image unfolded, got {strength}")
    offsets = _offsets(height, width, center, device, dtype)
    return strength * _bump(offsets, radius) * offsets


def wobble(
    height: int,
    width: int,
    amplitude: float,
    wavelength: float,
    seed: int = 0,
    *,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Smooth random jelly motion: each component is a seeded mix of plane waves, at most ``amplitude`` px.

    The Jacobian of the displacement is below 1 when ``amplitude < wavelength / (2 pi sqrt 2)``, which is
    what keeps the map one-to-one; larger amplitudes are rejected.
    """
    if wavelength <= 0 or not 0 <= amplitude < wavelength / (2 * math.pi * math.sqrt(2)):
        raise ValueError(f"wobble needs 0 <= amplitude < wavelength / 8.89, got {amplitude} and {wavelength}")
    waves = 4
    generator = torch.Generator().manual_seed(seed)
    directions, phases = torch.rand(2, 2, waves, generator=generator, dtype=torch.float64) * (2 * math.pi)
    weights = torch.rand(2, waves, generator=generator, dtype=torch.float64) + 0.5
    weights = weights / weights.sum(1, keepdim=True)
    grid = pixel_grid(height, width, dtype=torch.float64)
    along = torch.cos(directions)[..., None, None] * grid[0] + torch.sin(directions)[..., None, None] * grid[1]
    waves_at = torch.sin(along * (2 * math.pi / wavelength) + phases[..., None, None])
    flow = amplitude * (weights[..., None, None] * waves_at).sum(1)
    return flow.to(device=device, dtype=dtype)
