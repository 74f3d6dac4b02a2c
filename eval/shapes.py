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

from data.shapes import BACKGROUNDS, COLOURS, SIZES

# A pixel belongs to an object when its colour is this far (Euclidean, 0–255 RGB) from the
# background's; components smaller than MIN_AREA pixels are noise.
FOREGROUND_DISTANCE = 60.0
MIN_AREA = 12
# Fill ratio (area ÷ bounding-box area) of an upright triangle 0.5, circle π/4, square 1.
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


def size_word(area: float, shape: str, side: int) -> str:
    """small or big: the size whose rendered area of this shape is nearer (in log area)."""
    fill = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[shape]
    expected = {name: fill * (2 * r * side) ** 2 for name, r in SIZES.items()}
    return min(expected, key=lambda name: abs(np.log(area / expected[name])))


def detect(image: Image.Image | np.ndarray) -> Detection:
    """Find the background and the objects of a shapes-world image (PIL RGB or uint8 [H, W, 3])."""
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
        colour = _nearest(np.median(pixels[core if core.sum() >= 4 else mask], axis=0), COLOURS)
        shape = classify_shape(mask)
        objects.append(DetectedObject(shape, colour, size_word(area, shape, side), mask,
                                      (float(centroids[label][0]), float(centroids[label][1])), area))
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
