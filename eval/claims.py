"""Measurements behind the papers' claims on the shapes world (``python -m bench shapes --claims``).

Masks are bool arrays [H, W]; images PIL RGB or uint8 arrays [H, W, 3]. An object's mask comes
from the renderer for a rendered photo and from the detector (``eval.shapes.detect``) for anything
a model made. Each ``judge_*`` function measures one edit and returns plain numbers, so the
benchmark only has to average them and compare with the thresholds (``THRESHOLDS``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data.shapes import Scene, fits, shape_mask
from eval.metrics import psnr
from eval.shapes import Detection, DetectedObject, detect, iou, mask_centroid

# The thresholds (#14), one place for the benchmark, the docs and the tests.
THRESHOLDS = {
    "detector": 0.85,             # (b) (c) (f): fraction of edits where the detector sees the change
    "layout_iou": 0.8,            # (b) colour / background swap: IoU of the object, source vs edit
    "shape_iou": 0.7,             # (b) shape swap: IoU against the target shape drawn in place
    "centroid_px": 3.0,           # (b) shape swap, (c): centroid distance in pixels
    "kept_inside": 0.85,          # (c): fraction of the source object's pixels inside the edit's
    "blend_psnr_db": 30.0,        # (d): background PSNR of a local-blend edit against its source
    "real_background_db": 28.0,   # (f): background PSNR of an edit of a rendered photo against it
    "attention_iou": 0.5,         # (g): the shape word's map at half its maximum against the object
}
# "Background pixels" are farther than this from every object of the source and of the edit.
BACKGROUND_MARGIN_PX = 2.0
# The distance recorded for an edit in which no object was found (larger than any threshold).
MISSING_PX = 64.0


def _array(image: Image.Image | np.ndarray) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)


# ---------------------------------------------------------------- masks and geometry
def centroid_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Distance in pixels between the centroids of two bool masks [H, W] (``MISSING_PX`` when either
    is empty)."""
    if not a.any() or not b.any():
        return MISSING_PX
    (ax, ay), (bx, by) = mask_centroid(a), mask_centroid(b)
    return math.hypot(ax - bx, ay - by)


def kept_inside(source: np.ndarray, edited: np.ndarray) -> float:
    """Fraction of the source mask's pixels that the edited mask still covers (both bool [H, W];
    0 for an empty source)."""
    total = int(source.sum())
    return float(np.logical_and(source, edited).sum() / total) if total else 0.0


def object_box(mask: np.ndarray, world: int = 1) -> tuple[tuple[float, float], float]:
    """The bounding square of a bool mask [H, W] as the renderer of ``world`` describes an object:
    centre (x, y) and radius (half the larger side of the bounding box), fractions of the image
    width. World 1 centres every shape in its bounding box; world 2 on its centre of mass (its
    triangle is raised a third of its radius, ``data.shapes.TRIANGLE_SPAN``), so there the centre is the
    mask's centroid."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise ValueError("the mask is empty: there is no object to take a box from")
    side = mask.shape[1]
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    radius = max(x1 - x0, y1 - y0) / 2 / side
    if world == 2:
        return ((xs.mean() + 0.5) / side, (ys.mean() + 0.5) / side), radius
    return ((x0 + x1) / 2 / side, (y0 + y1) / 2 / side), radius


def target_shape_mask(shape: str, source_mask: np.ndarray, world: int = 1) -> np.ndarray:
    """The renderer's mask [H, W] of ``shape`` drawn in the bounding square of ``source_mask``
    (both as ``world`` draws them): what a shape swap should make of the source object."""
    center, radius = object_box(source_mask, world)
    return shape_mask(shape, center, radius, source_mask.shape[1], world)


def background_mask(object_masks: list[np.ndarray], margin: float = BACKGROUND_MARGIN_PX) -> np.ndarray:
    """Pixels farther than ``margin`` pixels (Euclidean) from every pixel of every mask, bool [H, W]."""
    if not object_masks:
        raise ValueError("background_mask needs at least one mask (for the image's shape)")
    objects = np.logical_or.reduce([np.asarray(m, bool) for m in object_masks])
    if not objects.any():
        return np.ones_like(objects)
    # distance of every pixel to the nearest object pixel (objects are the zeros)
    distance = cv2.distanceTransform((~objects).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return distance > margin


def background_psnr(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray, object_masks: list[np.ndarray],
                    margin: float = BACKGROUND_MARGIN_PX) -> float:
    """PSNR in dB of two images over their background pixels (``background_mask`` of the masks of
    both images' objects); NaN if no pixel is left."""
    keep = background_mask(object_masks, margin)
    return psnr(_array(a), _array(b), mask=~keep)


def saturation(image: Image.Image | np.ndarray, mask: np.ndarray) -> float:
    """Mean HSV saturation (max − min) / max, in [0, 1], of the pixels under a bool mask [H, W]
    (0 for black pixels and for an empty mask)."""
    pixels = _array(image).astype(np.float32)[np.asarray(mask, bool)]
    if pixels.size == 0:
        return 0.0
    high, low = pixels.max(1), pixels.min(1)
    return float(np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0).mean())


def attention_mask(attention: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A word's attention map [h, w] upsampled (bilinear) to ``size`` (H, W) and thresholded at half
    its maximum: bool [H, W]."""
    m = torch.as_tensor(np.asarray(attention, np.float32))[None, None]
    up = F.interpolate(m, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    return up >= 0.5 * up.max() if up.max() > 0 else np.zeros(size, bool)


def is_monotonic(values: list[float], increasing: bool = True) -> bool:
    """Whether ``values`` never step back (non-decreasing, or non-increasing)."""
    steps = np.diff(np.asarray(values, np.float64))
    return bool((steps >= 0).all() if increasing else (steps <= 0).all())


# ---------------------------------------------------------------- judging one edit
@dataclass
class Source:
    """What an edit started from: its image, the object's mask [H, W], what the source prompt says
    (shape, colour, background) and the shapes world whose geometry the edit is judged by."""

    image: Image.Image
    mask: np.ndarray
    shape: str
    colour: str
    background: str
    world: int = 1

    @classmethod
    def from_detection(cls, image: Image.Image, found: Detection, world: int = 1) -> "Source | None":
        """A generated source as the detector sees it (its largest object), or None if it found none."""
        if not found.objects:
            return None
        main = found.objects[0]
        return cls(image, main.mask, main.shape, main.colour, found.background, world)

    @classmethod
    def from_scene(cls, scene: Scene, world: int = 1) -> "Source":
        """A rendered photo's first object as the source, with the renderer's own mask and words."""
        obj = scene.objects[0]
        return cls(scene.image, scene.masks[0], obj.shape, obj.colour, scene.background, world)


def main_object(found: Detection) -> DetectedObject | None:
    """The largest object the detector found, or None."""
    return found.objects[0] if found.objects else None


def judge_swap(kind: str, target: str, source: Source, edited: Image.Image,
               reference: Image.Image | None = None) -> dict:
    """Measure a word swap (``kind`` "colour", "shape" or "background" → ``target`` word).

    Returns ``changed`` (the detector sees the target word on the edit's largest object or
    background), ``iou`` (colour and background swaps: object mask, source against edit; shape
    swaps: against the target shape drawn in the source object's bounding square), ``centroid_px``
    (against the same reference mask), and ``background_db``: PSNR over background pixels against
    ``reference`` (default the source image), NaN for a background swap.
    """
    found = detect(edited)
    obj = main_object(found)
    edit_mask = obj.mask if obj is not None else np.zeros_like(source.mask)
    if kind == "colour":
        changed = obj is not None and obj.colour == target
    elif kind == "shape":
        changed = obj is not None and obj.shape == target
    elif kind == "background":
        changed = found.background == target
    else:
        raise ValueError(f"unknown swap kind {kind!r}: use colour, shape or background")
    expected = target_shape_mask(target, source.mask, source.world) if kind == "shape" else source.mask
    masks = [source.mask] + [o.mask for o in found.objects]
    background_db = (math.nan if kind == "background"
                     else background_psnr(reference if reference is not None else source.image, edited, masks))
    return {"changed": bool(changed), "iou": iou(expected, edit_mask),
            "centroid_px": centroid_distance(expected, edit_mask), "background_db": background_db}


def judge_refine(source: Source, edited: Image.Image, added_size: str, background: str) -> dict:
    """Measure a refinement that adds a size word and changes the background ("a red circle on a
    white background" → "a big red circle on a black background").

    Returns ``changed`` (the edit's largest object has ``added_size`` and the background is
    ``background``), its two parts ``size_changed`` and ``background_changed``, ``centroid_px``
    (source object against edited object), ``kept_inside`` (the fraction of the source object's
    pixels inside the edited object), and ``fits_in_place``: whether an object of ``added_size``
    centred where the source's is would be one the world draws (``data.shapes.fits``); where it
    would not, the size and the place cannot both be kept by a model of this world."""
    found = detect(edited)
    obj = main_object(found)
    edit_mask = obj.mask if obj is not None else np.zeros_like(source.mask)
    size_changed = obj is not None and obj.size == added_size
    background_changed = found.background == background
    center, _ = object_box(source.mask, source.world)
    return {"changed": bool(size_changed and background_changed), "size_changed": bool(size_changed),
            "background_changed": bool(background_changed),
            "centroid_px": centroid_distance(source.mask, edit_mask), "kept_inside": kept_inside(source.mask, edit_mask),
            "size_px": int(edit_mask.sum()), "fits_in_place": fits(added_size, center, source.world, source.shape)}


def judge_attention(word_map: torch.Tensor | np.ndarray, object_mask: np.ndarray) -> float:
    """IoU of a word's averaged attention map [h, w] (upsampled, at half its maximum) with the
    object's mask [H, W]."""
    return iou(attention_mask(word_map, object_mask.shape), object_mask)
