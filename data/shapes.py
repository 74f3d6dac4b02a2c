"""The shapes world: seeded scenes of one or two flat shapes on a plain background, with captions in
Stable Diffusion's prompt style and each object's ground truth (mask, shape, colour, size, place).

It is simple enough for a small text-to-image model to learn on a CPU (``models.shapes``), and its
ground truth lets the benchmarks measure whether an edit kept the layout and made the change.

    scene = random_scene(seed=3)
    scene.image          # PIL RGB, 64×64, anti-aliased (4× supersampled)
    scene.caption        # "a big blue square and a small yellow triangle on a black background"
    scene.masks[0]       # bool [64, 64]: the pixels the first object covers at least half

Two versions of the world (``world=``): version 1, which the shipped model was trained on, has
two sizes (small, big) and is the default, drawn exactly as it always was; version 2 draws each
object's size from a continuous range in three bands (small and big, named in captions; medium,
never named) and places every object so that, grown to the largest big size about its own centre,
it stays inside the frame and off the other object (``fits_grown``). Every caption of version 1
is a caption of version 2. Version 2 also draws every shape about its centre of mass: its triangle
is world 1's (as wide as it is tall, half its bounding square) raised by a third of its radius, so
that its centroid, like a circle's or a square's, is the object's centre (``TRIANGLE_SPAN``); its
apex then stands above the square the other shapes of its radius fill, which the room rule counts
(``extent``).
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

# World version 2: radius bands (fractions of the side), drawn uniformly; "medium" is never named.
# The small band starts at world 1's small size: below 0.14 small triangles (then 3/8 of their
# square) were the ones the model drew round and the shape swaps lost (docs/benchmarks.md, #31).
# The big band keeps its upper end (GROWN_RADIUS), so the room rule and PAIR_RADIUS (0.22, the big
# band's lower end: a pair holds at most the smallest big object) are unchanged.
SIZE_BANDS = {"small": (0.14, 0.16), "medium": (0.18, 0.20), "big": (0.22, 0.24)}
NAMED_SIZES = ("small", "big")
# Version 2's room rule: an object grown to the largest big radius about its centre keeps
# EDGE_MARGIN_V2 from every edge and GAP_V2 (bounding boxes, ``extent``) from the other object.
EDGE_MARGIN_V2 = 0.02
GAP_V2 = 0.02
GROWN_RADIUS = SIZE_BANDS["big"][1]
# The largest radius two objects can share the frame with under the room rule, side by side (every
# shape reaches its radius left and right): 1 − 2·(grown + edge) − grown − gap.
PAIR_RADIUS = 1 - 2 * (GROWN_RADIUS + EDGE_MARGIN_V2) - GROWN_RADIUS - GAP_V2
WORLDS = (1, 2)
# An upright triangle's apex above and base below its centre, in radii (its base corners one radius
# to each side). World 1: on the bounding square's edges, so its centroid lies a third of a radius
# below the centre. World 2: the same triangle raised a third of a radius, so its centroid is the
# centre. Prompt-to-Prompt keeps an object's mass where it was (the attention maps hold it), so a
# shape swap must be judged about the centroid; and it keeps much of the object's footprint, so the
# world-2 triangle keeps world 1's area (half its square; the shorter 3/8 triangle drawn inside
# the square cost triangle swaps a tenth of IoU, docs/benchmarks.md).
TRIANGLE_SPAN = {1: (1.0, 1.0), 2: (4 / 3, 2 / 3)}


@dataclass(frozen=True)
class ShapeObject:
    """One object: what it is and where. ``center`` and ``radius`` are fractions of the image side
    (the shape fills the square of half-side ``radius`` around ``center``)."""

    shape: str
    colour: str
    size: str
    center: tuple[float, float]
    # world 2: the object's own radius inside its size band (None: the size's one radius, world 1)
    r: float | None = None

    @property
    def radius(self) -> float:
        return SIZES[self.size] if self.r is None else self.r


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
    """"a big red circle" (or "a red circle" without the size; a medium object is never named)."""
    words = ["a"] + ([obj.size] if with_size and obj.size in NAMED_SIZES else []) + [obj.colour, obj.shape]
    return " ".join(words)


def caption_for(objects: list[ShapeObject], background: str, with_size: bool = True) -> str:
    """The caption of a scene: objects from left to right, then the background.

    "a red circle on a white background", "a big blue square and a small yellow triangle on a black
    background"."""
    ordered = sorted(objects, key=lambda o: o.center[0])
    phrases = " and ".join(object_phrase(o, with_size) for o in ordered)
    return f"{phrases} on a {background} background"


def _outline(shape: str, center: tuple[float, float], radius: float, side: float,
             world: int = 1) -> tuple[str, list[tuple[float, float]]]:
    cx, cy, r = center[0] * side, center[1] * side, radius * side
    if shape == "circle":
        return "ellipse", [(cx - r, cy - r), (cx + r, cy + r)]
    if shape == "square":
        return "rectangle", [(cx - r, cy - r), (cx + r, cy + r)]
    if shape == "triangle":  # upright, as wide as its bounding square
        apex, base = TRIANGLE_SPAN[world]
        return "polygon", [(cx, cy - apex * r), (cx + r, cy + base * r), (cx - r, cy + base * r)]
    raise ValueError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")


def square_fraction(shape: str, world: int = 1) -> float:
    """The fraction of its bounding square (side 2 × radius) a shape covers in ``world``: circle
    π/4, square 1, triangle 1/2 (its height, apex to base, is the square's side in both worlds)."""
    _check_world(world)
    fractions = {"circle": math.pi / 4, "square": 1.0, "triangle": sum(TRIANGLE_SPAN[world]) / 4}
    if shape not in fractions:
        raise ValueError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")
    return fractions[shape]


def shape_coverage(shape: str, center: tuple[float, float], radius: float, size: int = IMAGE_SIZE,
                   world: int = 1) -> np.ndarray:
    """The fraction of each pixel a shape covers, float [size, size] in [0, 1] (4× supersampled).

    ``center`` (x, y) and ``radius`` (half the bounding square's side) are fractions of the image
    side, any values (not only the world's two sizes): the benchmarks draw the shape an edit should
    have made at the place and size of the object it started from. ``world`` picks the triangle's
    geometry (``TRIANGLE_SPAN``)."""
    _check_world(world)
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    kind, points = _outline(shape, center, radius, big, world)
    getattr(ImageDraw.Draw(canvas), kind)(points, fill=255)
    return np.asarray(canvas, dtype=np.float32).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean((1, 3)) / 255


def shape_mask(shape: str, center: tuple[float, float], radius: float, size: int = IMAGE_SIZE,
               world: int = 1) -> np.ndarray:
    """The pixels a shape covers at least half, bool [size, size]: the renderer's mask of a lone
    object (see ``shape_coverage`` for the arguments)."""
    return shape_coverage(shape, center, radius, size, world) >= 0.5


def coverage(obj: ShapeObject, size: int = IMAGE_SIZE, world: int = 1) -> np.ndarray:
    """The fraction of each pixel the object covers, float [size, size] in [0, 1] (4× supersampled)."""
    return shape_coverage(obj.shape, obj.center, obj.radius, size, world)


def render(objects: list[ShapeObject], background: str, size: int = IMAGE_SIZE, with_size: bool = True,
           world: int = 1) -> Scene:
    """Draw objects (later ones on top) on the background, with ``world``'s geometry; anti-aliased
    by area coverage.

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
        cover = coverage(obj, size, world)
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


def _check_world(world: int) -> None:
    if world not in WORLDS:
        raise ValueError(f"unknown world version {world!r}: use one of {', '.join(map(str, WORLDS))}")


def extent(shape: str, radius: float, world: int = 1) -> tuple[float, float, float, float]:
    """How far a ``shape`` of ``radius`` reaches from its centre: (left, up, right, down), fractions
    of the image side. A circle's and a square's reach is the radius every way; a world-2 triangle
    reaches a third of a radius higher and lower by as much (``TRIANGLE_SPAN``)."""
    _check_world(world)
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")
    if shape == "triangle":
        apex, base = TRIANGLE_SPAN[world]
        return radius, apex * radius, radius, base * radius
    return radius, radius, radius, radius


def _box(center: tuple[float, float], shape: str, radius: float, world: int) -> tuple[float, float, float, float]:
    left, up, right, down = extent(shape, radius, world)
    return center[0] - left, center[1] - up, center[0] + right, center[1] + down


def _inside(box: tuple[float, float, float, float], margin: float) -> bool:
    return all(v >= margin - 1e-9 for v in box[:2]) and all(v <= 1 - margin + 1e-9 for v in box[2:])


def _clear(a: tuple[float, float, float, float], b: tuple[float, float, float, float], gap: float) -> bool:
    """Whether boxes ``a`` and ``b`` (x0, y0, x1, y1) are at least ``gap`` apart along x or along y."""
    return (a[2] + gap <= b[0] + 1e-9 or b[2] + gap <= a[0] + 1e-9
            or a[3] + gap <= b[1] + 1e-9 or b[3] + gap <= a[1] + 1e-9)


def fits(size: str, center: tuple[float, float], world: int = 1, shape: str = "circle") -> bool:
    """Whether a ``shape`` of ``size`` centred at ``center`` (fractions of the side) is one the world
    draws: its bounding box at least the edge margin inside every edge (world 2: at every radius of
    the size's band, so the band's largest; a triangle's box reaches above its square, ``extent``)."""
    _check_world(world)
    radius, margin = (SIZES[size], EDGE_MARGIN) if world == 1 else (SIZE_BANDS[size][1], EDGE_MARGIN_V2)
    return _inside(_box(center, shape, radius, world), margin)


def _grown_misses(a: tuple[tuple[float, float], str], b: tuple[tuple[float, float], str, float]) -> bool:
    """Whether object ``a`` (centre, shape), grown to ``GROWN_RADIUS``, keeps ``GAP_V2`` off object
    ``b`` (centre, shape, radius) as drawn."""
    return _clear(_box(a[0], a[1], GROWN_RADIUS, 2), _box(*b, 2), GAP_V2)


def fits_grown(objects: list[ShapeObject]) -> bool:
    """World 2's room rule: every object, grown to ``GROWN_RADIUS`` about its own centre, keeps
    ``EDGE_MARGIN_V2`` inside every edge and ``GAP_V2`` off every other object as drawn (bounding
    boxes), so that a refinement to "big" can keep each object in place."""
    for i, obj in enumerate(objects):
        if not fits("big", obj.center, world=2, shape=obj.shape):
            return False
        for j, other in enumerate(objects):
            if i != j and not _grown_misses((obj.center, obj.shape), (other.center, other.shape, other.radius)):
                return False
    return True


def _place(rng: np.random.Generator, size: str, taken: list[ShapeObject]) -> tuple[float, float] | None:
    r = SIZES[size]
    for _ in range(50):
        center = (float(rng.uniform(r + EDGE_MARGIN, 1 - r - EDGE_MARGIN)),
                  float(rng.uniform(r + EDGE_MARGIN, 1 - r - EDGE_MARGIN)))
        if all(max(abs(center[0] - o.center[0]), abs(center[1] - o.center[1])) > r + o.radius + 0.04 for o in taken):
            return center
    return None


def _place_v2(rng: np.random.Generator, shape: str, radius: float, taken: list[ShapeObject]) -> tuple[float, float] | None:
    left, up, right, down = extent(shape, GROWN_RADIUS, 2)
    for _ in range(100 if taken else 1):
        center = (float(rng.uniform(left + EDGE_MARGIN_V2, 1 - right - EDGE_MARGIN_V2)),
                  float(rng.uniform(up + EDGE_MARGIN_V2, 1 - down - EDGE_MARGIN_V2)))
        # the new object grown must miss each taken one, and each taken one grown must miss it
        if all(_grown_misses((center, shape), (o.center, o.shape, o.radius))
               and _grown_misses((o.center, o.shape), (center, shape, radius)) for o in taken):
            return center
    return None


def random_object_v2(rng: np.random.Generator, taken: list[ShapeObject], max_radius: float = 1.0) -> ShapeObject | None:
    """A world-2 object: a size band drawn uniformly, a radius uniform inside it (and at most
    ``max_radius``), a shape, a centre that keeps the room rule with ``taken`` for that shape, and a
    colour (None when there is no room)."""
    band = str(rng.choice(list(SIZE_BANDS)))
    low, high = SIZE_BANDS[band]
    radius = float(rng.uniform(low, min(high, max_radius)))
    shape = str(rng.choice(SHAPES))
    center = _place_v2(rng, shape, radius, taken)
    if center is None:
        return None
    return ShapeObject(shape, str(rng.choice(list(COLOURS))), band, center, r=radius)


def random_scene(seed: int, max_objects: int = 2, size: int = IMAGE_SIZE, p_two: float = 0.35,
                 p_size_word: float = 0.6, world: int = 1) -> Scene:
    """A seeded random scene of world version ``world``: one object (or two, with probability
    ``p_two``) on a background.

    The caption names sizes with probability ``p_size_word`` ("a big red circle …"), so the model
    learns captions with and without them. Same seed and world, same scene."""
    _check_world(world)
    rng = np.random.default_rng(seed)
    background = str(rng.choice(list(BACKGROUNDS)))
    count = 2 if max_objects >= 2 and rng.random() < p_two else 1
    objects: list[ShapeObject] = []
    if world == 2:
        # two objects: both small enough that the room rule has room, the pair drawn again (20
        # times at most, then one object) while the second finds none beside the first
        for _ in range(20 if count == 2 else 1):
            objects = [random_object_v2(rng, [], PAIR_RADIUS if count == 2 else 1.0)]
            if count == 2:
                second = random_object_v2(rng, objects, PAIR_RADIUS)
                if second is not None:
                    objects.append(second)
                    break
        return render(objects, background, size, with_size=bool(rng.random() < p_size_word), world=2)
    while len(objects) < count:
        obj_size = str(rng.choice(list(SIZES)))
        center = _place(rng, obj_size, objects)
        if center is None:  # no room left for a second object: keep one
            break
        objects.append(ShapeObject(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))), obj_size, center))
    return render(objects, background, size, with_size=bool(rng.random() < p_size_word))


def single_object_captions() -> list[tuple[str, str, str, str]]:
    """Every single-object (size, colour, shape, background) of the required vocabulary, in a fixed
    order: 2 named sizes × 4 colours × 3 shapes × 3 backgrounds = 72 (the same in both worlds)."""
    return [(s, c, sh, b) for s in NAMED_SIZES for c in COLOURS for sh in SHAPES for b in BACKGROUNDS]


def size_band(radius: float) -> str:
    """World 2's size word for a radius (fraction of the side): the band it falls in, or, between
    bands, the nearer band's edge."""
    best, gap = "medium", math.inf
    for name, (low, high) in SIZE_BANDS.items():
        distance = max(low - radius, 0.0, radius - high)
        if distance < gap:
            best, gap = name, distance
    return best


def centred(obj: ShapeObject, shape: str | None = None, colour: str | None = None) -> ShapeObject:
    """The same object with another shape or colour, at the same centre and size."""
    return replace(obj, shape=shape or obj.shape, colour=colour or obj.colour)


def equivalent_radius(area_pixels: float, size: int = IMAGE_SIZE) -> float:
    """The radius (fraction of the image side) of a circle of the given area."""
    return math.sqrt(area_pixels / math.pi) / size
