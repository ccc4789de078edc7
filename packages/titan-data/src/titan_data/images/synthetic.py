"""`synthetic_shapes`: colored shapes on colored backgrounds with exact captions, drawn in memory.

Sample i depends only on (seed, i, size): it is drawn on demand at any size, so a loader at
resolution 512 draws 512-pixel images (no upscaling) and nothing is shipped or downloaded.
"""

from __future__ import annotations

import hashlib
import random

import PIL.Image
import PIL.ImageDraw

from titan_data.errors import DataError, check_positive
from titan_data.images.source import ImageSource

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 220), "yellow": (240, 210, 40),
    "purple": (140, 60, 180), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.28, 0.28), "top right": (0.72, 0.28), "center": (0.5, 0.5),
    "bottom left": (0.28, 0.72), "bottom right": (0.72, 0.72),
}
# split -> (number of samples, drawing seed): validation uses another seed, so other images.
SPLITS: dict[str, tuple[int, int]] = {"train": (256, 0), "validation": (64, 1)}


def draw_sample(i: int, size: int = 64, seed: int = 0) -> tuple[PIL.Image.Image, str]:
    """Sample i of the set chosen by `seed`, drawn at size x size."""
    # A string seed goes through sha512 in `random`, so it is stable across processes and runs.
    rng = random.Random(f"titan-synthetic-shapes:{seed}:{i}")
    shape, color, pos = rng.choice(SHAPES), rng.choice(sorted(COLORS)), rng.choice(list(POSITIONS))
    background = rng.choice([c for c in sorted(COLORS) if c != color])
    r = size * rng.uniform(0.14, 0.2)
    cx = size * (POSITIONS[pos][0] + rng.uniform(-0.04, 0.04))
    cy = size * (POSITIONS[pos][1] + rng.uniform(-0.04, 0.04))
    img = PIL.Image.new("RGB", (size, size), COLORS[background])
    draw = PIL.ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLORS[color])
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=COLORS[color])
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=COLORS[color])
    return img, f"{_a(color)} {color} {shape} on {_a(background)} {background} background, {pos}"


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_synthetic_image_captions(n: int = 256, size: int = 64, seed: int = 0) -> list[tuple[PIL.Image.Image, str]]:
    """`n` deterministic (image, caption) pairs of size x size pixels (`seed` picks the set)."""
    check_positive("n", n)
    check_positive("size", size)
    return [draw_sample(i, size, seed) for i in range(n)]


class SyntheticShapes(ImageSource):
    """The registry's `synthetic_shapes` dataset: one split, drawn at the loader's resolution."""

    name = "synthetic_shapes"

    def __init__(self, split: str, resolution: int):
        if split not in SPLITS:
            raise DataError(f"dataset 'synthetic_shapes' has splits {', '.join(SPLITS)}; got split={split!r}")
        self.split, self.resolution = split, resolution
        self.n, self.seed = SPLITS[split]
        self.description = f"synthetic_shapes ({split} split, {self.n} images)"

    def __len__(self) -> int:
        return self.n

    def fingerprint(self) -> str:
        return hashlib.sha256(f"synthetic_shapes:{self.split}:{self.n}:{self.seed}".encode()).hexdigest()[:16]

    def item(self, i: int):
        img, caption = draw_sample(i, self.resolution, self.seed)
        return img, caption, f"{self.description}, sample {i}"
