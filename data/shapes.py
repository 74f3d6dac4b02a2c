"""The shapes world: seeded scenes of one or two flat shapes on a plain background, with captions in
Stable Diffusion's prompt style and each object's ground truth (mask, shape, colour, size, place).

It is simple enough for a small text-to-image model to learn on a CPU (``models.shapes``), and its
ground truth lets the benchmarks measure whether an edit kept the layout and made the change.

    scene = random_scene(seed=3)
    scene.image          # PIL RGB, 64×64, anti-aliased (4× supersampled)
    scene.caption        # "a big blue square and a small yellow triangle on a black background"
    scene.objects[0].mask  # bool [64, 64]: the pixels the object covers at least half
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 40),
}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
# An object's radius (half its bounding box side) as a fraction of the image side.
SIZES = {"small": 0.14, "big": 0.25}
# An object keeps this far (fraction of the side) from the image edge, beyond its radius.
EDGE_MARGIN = 0.03


@dataclass(frozen=True)
class ShapeObject:
    """One object: what it is and where. ``center`` and ``radius`` are fractions of the image side
    (the shape fills the square of half-side ``radius`` around ``center``)."""

    shape: str
    colour: str
    size: str
    center: tuple[float, float]

    @property
    def radius(self) -> float:
        return SIZES[self.size]


@dataclass
class Scene:
    """A rendered scene: the image, its caption and, per object, a bool mask [H, W] of the pixels it
    covers at least half (``masks[i]`` belongs to ``objects[i]``)."""

    objects: list[ShapeObject]
    background: str
    caption: str
    image: Image.Image
    masks: list[np.ndarray] = field(default_factory=list)


def object_phrase(obj: ShapeObject, with_size: bool = True) -> str:
    """"a big red circle" (or "a red circle" without the size)."""
    words = ["a"] + ([obj.size] if with_size else []) + [obj.colour, obj.shape]
    return " ".join(words)


def caption_for(objects: list[ShapeObject], background: str, with_size: bool = True) -> str:
    """The caption of a scene: objects from left to right, then the background.

    "a red circle on a white background", "a big blue square and a small yellow triangle on a black
    background"."""
    ordered = sorted(objects, key=lambda o: o.center[0])
    phrases = " and ".join(object_phrase(o, with_size) for o in ordered)
    return f"{phrases} on a {background} background"


def _outline(shape: str, center: tuple[float, float], radius: float, side: float) -> tuple[str, list[tuple[float, float]]]:
    cx, cy, r = center[0] * side, center[1] * side, radius * side
    if shape == "circle":
        return "ellipse", [(cx - r, cy - r), (cx + r, cy + r)]
    if shape == "square":
        return "rectangle", [(cx - r, cy - r), (cx + r, cy + r)]
    if shape == "triangle":  # upright, its base and apex on the bounding square
        return "polygon", [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    raise ValueError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")


def shape_coverage(shape: str, center: tuple[float, float], radius: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """The fraction of each pixel a shape covers, float [size, size] in [0, 1] (4× supersampled).

    ``center`` (x, y) and ``radius`` (half the bounding square's side) are fractions of the image
    side, any values (not only the world's two sizes): the benchmarks draw the shape an edit should
    have made at the place and size of the object it started from."""
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    kind, points = _outline(shape, center, radius, big)
    getattr(ImageDraw.Draw(canvas), kind)(points, fill=255)
    return np.asarray(canvas, dtype=np.float32).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean((1, 3)) / 255


def shape_mask(shape: str, center: tuple[float, float], radius: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """The pixels a shape covers at least half, bool [size, size]: the renderer's mask of a lone
    object (see ``shape_coverage`` for the arguments)."""
    return shape_coverage(shape, center, radius, size) >= 0.5


def coverage(obj: ShapeObject, size: int = IMAGE_SIZE) -> np.ndarray:
    """The fraction of each pixel the object covers, float [size, size] in [0, 1] (4× supersampled)."""
    return shape_coverage(obj.shape, obj.center, obj.radius, size)


def render(objects: list[ShapeObject], background: str, size: int = IMAGE_SIZE, with_size: bool = True) -> Scene:
    """Draw objects (later ones on top) on the background; anti-aliased by area coverage.

    Returns the Scene with its caption and one mask per object (pixels covered ≥ half, minus what
    later objects hide)."""
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}: use one of {', '.join(BACKGROUNDS)}")
    pixels = np.empty((size, size, 3), dtype=np.float32)
    pixels[:] = BACKGROUNDS[background]
    covers = []
    for obj in objects:
        if obj.colour not in COLOURS:
            raise ValueError(f"unknown colour {obj.colour!r}: use one of {', '.join(COLOURS)}")
        cover = coverage(obj, size)
        pixels = pixels * (1 - cover[..., None]) + np.asarray(COLOURS[obj.colour], np.float32) * cover[..., None]
        covers.append(cover)
    masks = []
    for i, cover in enumerate(covers):
        hidden = np.zeros_like(cover)
        for later in covers[i + 1:]:
            hidden = np.maximum(hidden, later)
        masks.append((cover - hidden) >= 0.5)
    image = Image.fromarray(np.rint(pixels).clip(0, 255).astype(np.uint8))
    return Scene(list(objects), background, caption_for(objects, background, with_size), image, masks)


def fits(size: str, center: tuple[float, float]) -> bool:
    """Whether an object of ``size`` centred at ``center`` (fractions of the side) is one the world
    draws: its bounding square at least ``EDGE_MARGIN`` inside every edge."""
    low, high = SIZES[size] + EDGE_MARGIN, 1 - SIZES[size] - EDGE_MARGIN
    return all(low - 1e-9 <= c <= high + 1e-9 for c in center)


def _place(rng: np.random.Generator, size: str, taken: list[ShapeObject]) -> tuple[float, float] | None:
    r = SIZES[size]
    for _ in range(50):
        center = (float(rng.uniform(r + EDGE_MARGIN, 1 - r - EDGE_MARGIN)),
                  float(rng.uniform(r + EDGE_MARGIN, 1 - r - EDGE_MARGIN)))
        if all(max(abs(center[0] - o.center[0]), abs(center[1] - o.center[1])) > r + o.radius + 0.04 for o in taken):
            return center
    return None


def random_scene(seed: int, max_objects: int = 2, size: int = IMAGE_SIZE, p_two: float = 0.35,
                 p_size_word: float = 0.6) -> Scene:
    """A seeded random scene: one object (or two, with probability ``p_two``) on a background.

    The caption names sizes with probability ``p_size_word`` ("a big red circle …"), so the model
    learns captions with and without them. Same seed, same scene."""
    rng = np.random.default_rng(seed)
    background = str(rng.choice(list(BACKGROUNDS)))
    count = 2 if max_objects >= 2 and rng.random() < p_two else 1
    objects: list[ShapeObject] = []
    while len(objects) < count:
        obj_size = str(rng.choice(list(SIZES)))
        center = _place(rng, obj_size, objects)
        if center is None:  # no room left for a second object: keep one
            break
        objects.append(ShapeObject(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))), obj_size, center))
    return render(objects, background, size, with_size=bool(rng.random() < p_size_word))


def single_object_captions() -> list[tuple[str, str, str, str]]:
    """Every single-object (size, colour, shape, background) of the required vocabulary, in a fixed
    order: 2 sizes × 4 colours × 3 shapes × 3 backgrounds = 72."""
    return [(s, c, sh, b) for s in SIZES for c in COLOURS for sh in SHAPES for b in BACKGROUNDS]


def centred(obj: ShapeObject, shape: str | None = None, colour: str | None = None) -> ShapeObject:
    """The same object with another shape or colour, at the same centre and size."""
    return replace(obj, shape=shape or obj.shape, colour=colour or obj.colour)


def equivalent_radius(area_pixels: float, size: int = IMAGE_SIZE) -> float:
    """The radius (fraction of the image side) of a circle of the given area."""
    return math.sqrt(area_pixels / math.pi) / size
