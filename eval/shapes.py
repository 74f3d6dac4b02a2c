"""A deterministic detector for the shapes world (``data.shapes``): background, objects, their shape,
colour and size, from pixels alone (NumPy and OpenCV, no model).

It judges generated and edited images; ``tests/test_shapes.py`` checks it on rendered scenes, where
the truth is known, before it judges anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from data.shapes import BACKGROUNDS, COLOURS, SIZES, WORLDS, size_band, square_fraction

# A pixel belongs to an object when its colour is this far (Euclidean, 0–255 RGB) from the
# background's; components smaller than MIN_AREA pixels are noise.
FOREGROUND_DISTANCE = 60.0
MIN_AREA = 12
# Fill ratio (area ÷ bounding-box area) of an upright triangle 0.5 (in both worlds: world 2's is
# shorter, its box too), circle π/4, square 1.
TRIANGLE_BELOW, SQUARE_ABOVE = 0.64, 0.89


@dataclass
class DetectedObject:
    """One object found: shape, colour, size words, bool mask [H, W], centroid (x, y) in pixels, area."""

    shape: str
    colour: str
    size: str
    mask: np.ndarray
    centroid: tuple[float, float]
    area: int


@dataclass
class Detection:
    """What the detector sees: the background word and the objects, largest first."""

    background: str
    objects: list[DetectedObject]

    def has(self, shape: str | None = None, colour: str | None = None, size: str | None = None) -> bool:
        """Whether some object matches every given word."""
        return any((shape is None or o.shape == shape) and (colour is None or o.colour == colour)
                   and (size is None or o.size == size) for o in self.objects)

    def union_mask(self) -> np.ndarray:
        """All objects' pixels, bool [H, W]."""
        if not self.objects:
            return np.zeros((0, 0), bool)
        return np.logical_or.reduce([o.mask for o in self.objects])


def _nearest(colour: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    distances = [np.linalg.norm(colour - np.asarray(palette[n], np.float32)) for n in names]
    return names[int(np.argmin(distances))]


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise TypeError(f"detect takes an RGB PIL image or a uint8 array [H, W, 3], got shape {array.shape}")
    return array.astype(np.float32)


def classify_shape(mask: np.ndarray) -> str:
    """circle, square or triangle from a component's fill ratio of its bounding box."""
    ys, xs = np.nonzero(mask)
    box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    fill = mask.sum() / box
    if fill < TRIANGLE_BELOW:
        return "triangle"
    return "square" if fill > SQUARE_ABOVE else "circle"


def object_radius(area: float, shape: str, side: int, world: int = 1) -> float:
    """The radius (half the bounding square's side, a fraction of the image side) of a ``shape``
    of ``world`` whose area is ``area`` pixels in an image ``side`` pixels wide."""
    return float(np.sqrt(area / square_fraction(shape, world)) / (2 * side))


def size_word(area: float, shape: str, side: int, world: int = 1) -> str:
    """The size word of an object read from its area: world 1, small or big, the size whose
    rendered area of this shape is nearer (in log area); world 2, small, medium or big, the band of
    the radius that area gives the shape (``data.shapes.size_band``)."""
    if world not in WORLDS:
        raise ValueError(f"unknown world version {world!r}")
    if world == 2:
        return size_band(object_radius(area, shape, side, world))
    expected = {name: square_fraction(shape) * (2 * r * side) ** 2 for name, r in SIZES.items()}
    return min(expected, key=lambda name: abs(np.log(area / expected[name])))


def half_covered(pixels: np.ndarray, mask: np.ndarray, colour: np.ndarray, background: np.ndarray) -> np.ndarray:
    """A component's mask redrawn as the pixels (of the component grown by one pixel) at least half
    way (less 0.01 for rounding) from the background colour to the object's, measured along the line between them: the
    renderer's rule for its masks (covered at least half), so that areas read sizes without the
    bias of a fixed colour distance. Arrays: pixels float [H, W, 3], mask bool [H, W], colours [3].
    Returns the new bool mask (the old one if none is left)."""
    step = colour - background
    norm = float(step @ step)
    if norm < 1.0:
        return mask
    share = (pixels - background) @ step / norm
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    redrawn = grown & (share >= 0.49)  # 0.49: a pixel covered exactly half, rounded to 8 bits
    return redrawn if redrawn.any() else mask


def detect(image: Image.Image | np.ndarray, world: int = 1) -> Detection:
    """Find the background and the objects of a shapes-world image (PIL RGB or uint8 [H, W, 3]);
    sizes are read as ``world`` names them (``size_word``)."""
    pixels = _as_array(image)
    side = pixels.shape[1]
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_colour = np.median(border, axis=0)
    background = _nearest(background_colour, BACKGROUNDS)
    distance = np.linalg.norm(pixels - background_colour, axis=2)
    foreground = (distance > FOREGROUND_DISTANCE).astype(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(foreground, connectivity=4)
    objects = []
    for label in range(1, count):
        area = int(stats[label, cv2.CC_STAT_AREA])
        if area < MIN_AREA:
            continue
        mask = labels == label
        core = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        measured = np.median(pixels[core if core.sum() >= 4 else mask], axis=0)
        colour = _nearest(measured, COLOURS)
        centroid = (float(centroids[label][0]), float(centroids[label][1]))
        if world == 2:  # the pixels at least half the object's colour, as the renderer's masks are
            mask = half_covered(pixels, mask, measured, background_colour)
            area = int(mask.sum())
            centroid = mask_centroid(mask)
        shape = classify_shape(mask)
        objects.append(DetectedObject(shape, colour, size_word(area, shape, side, world), mask, centroid, area))
    objects.sort(key=lambda o: -o.area)
    return Detection(background, objects)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def mask_centroid(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) mean pixel position of a bool mask."""
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())
