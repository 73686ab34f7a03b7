"""A bar chart of where each variant's guided pass spends its time, drawn with PIL (no matplotlib).

One horizontal bar per variant, as long as its median pass; segments are the phases of ``split_s``
(forward and backward of the UNet, the VAE decoder and the flow estimator, and the rest). Variants
without a split (``torch.compile``) get a plain grey bar. Usage::

    python -m benchmarks.plot REPORT.json OUT.png      (from a checkout)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from mtransfer.files import atomic_path

PHASES = [
    ("unet_fwd", "UNet fwd", (66, 133, 244)),
    ("unet_bwd", "UNet bwd", (160, 195, 250)),
    ("vae_fwd", "VAE decoder fwd", (219, 68, 55)),
    ("vae_bwd", "VAE decoder bwd", (240, 165, 158)),
    ("flow_fwd", "flow fwd", (15, 157, 88)),
    ("flow_bwd", "flow bwd", (140, 210, 170)),
    ("other", "other", (150, 150, 150)),
]
UNSPLIT = (90, 90, 90)
WIDTH, BAR, GAP, LEFT, RIGHT, TOP = 1000, 26, 12, 230, 110, 60


def plot_split(report: dict[str, Any], path: str | Path) -> Path:
    """Draw the split of every measured variant in ``report`` (see ``mtransfer.bench.guided_step``) to ``path``."""
    variants = [v for v in report["variants"] if v.get("status") == "ok"]
    if not variants:
        raise ValueError("the report has no measured variant to plot")
    font = ImageFont.load_default(size=14)
    small = ImageFont.load_default(size=12)
    legend_rows = 2
    height = TOP + len(variants) * (BAR + GAP) + 40 + legend_rows * 22 + 20
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    device, settings = report["device"], report["settings"]
    title = f"guided pass split, {settings['size']}px, {device['name']} ({device['type']}), torch {device['torch']}"
    draw.text((10, 12), title, fill="black", font=font)
    draw.text((10, 32), "seconds per pass (median); label = speed-up over baseline", fill=(80, 80, 80), font=small)
    longest = max(v["step_s"] for v in variants)
    scale = (WIDTH - LEFT - RIGHT) / longest
    for row, variant in enumerate(variants):
        y = TOP + row * (BAR + GAP)
        draw.text((10, y + 5), variant["variant"][:30], fill="black", font=font)
        x = float(LEFT)
        split = variant.get("split_s")
        if split:
            for key, _, colour in PHASES:
                length = split[key] * scale
                draw.rectangle((x, y, x + length, y + BAR), fill=colour)
                x += length
        else:
            x = LEFT + variant["step_s"] * scale
            draw.rectangle((LEFT, y, x, y + BAR), fill=UNSPLIT)
        draw.text((x + 6, y + 5), f"{variant['step_s']:.3g}s  x{variant['speedup']:.2f}", fill="black", font=small)
    axis_y = TOP + len(variants) * (BAR + GAP)
    draw.line((LEFT, axis_y, WIDTH - RIGHT, axis_y), fill="black")
    for i in range(5):
        seconds = longest * i / 4
        x = LEFT + seconds * scale
        draw.line((x, axis_y, x, axis_y + 5), fill="black")
        draw.text((x - 12, axis_y + 8), f"{seconds:.3g}", fill="black", font=small)
    legend = [*PHASES, ("", "not split (compiled)", UNSPLIT)]
    per_row = -(-len(legend) // legend_rows)
    for i, (_, name, colour) in enumerate(legend):
        x = 10 + (i % per_row) * 160
        y = axis_y + 34 + (i // per_row) * 22
        draw.rectangle((x, y, x + 14, y + 14), fill=colour)
        draw.text((x + 20, y), name, fill="black", font=small)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
