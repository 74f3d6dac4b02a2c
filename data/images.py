"""Reading a user's photo into the RGB image the model sees: at the photo's own aspect ratio
(``fit_size``) or cut to an exact size."""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 64 megapixels: larger than any camera photo people edit, small enough that decoding is safe.
MAX_PIXELS = 8192 * 8192

Crop = Union[str, tuple[int, int, int, int]]
# What a caller asks for: "auto" (the photo's ratio at the model's area), a square side, or (W, H).
SizeRequest = Union[str, int, tuple[int, int]]
# How far a working size's area may stray from the model's native area under "auto".
AREA_TOLERANCE = 1.5
log = logging.getLogger(__name__)


class ImageInputError(ValueError):
    """A photo could not be used; the message names the file, the problem and the fix."""


class SizeError(ValueError):
    """A requested working size cannot be used; the message says which would."""


MAX_SIDE = 8192


def parse_size(value, what: str = "--size") -> SizeRequest:
    """A size request from the command line or a manifest: "auto", a side N ("512", 512) or
    "W,H" / [W, H] (whole pixels, 8…8192). Whether the model can use it is ``resolve_size``'s
    to say. Raises SizeError naming ``what``."""
    text = value if isinstance(value, str) else None
    if text is not None and text.strip().lower() == "auto":
        return "auto"
    if text is not None:
        parts = text.replace("x", ",").replace("×", ",").split(",")
        try:
            value = [int(p) for p in parts] if len(parts) > 1 else int(parts[0])
        except ValueError:
            value = None
    sides = value if isinstance(value, (list, tuple)) else [value]
    if len(sides) not in (1, 2) or not all(isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= MAX_SIDE for v in sides):
        raise SizeError(f"{what} {value if text is None else text!r}: write auto (the photo's own aspect ratio), "
                        f"a side such as 512 (a centre-cropped square), or WIDTH,HEIGHT such as 576,384 "
                        f"(whole pixels, 8…{MAX_SIDE})")
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def _open(path: Path, max_pixels: int) -> Image.Image:
    if not path.exists():
        raise ImageInputError(f"{path}: no such file. Check the path (relative paths start at {Path.cwd()}).")
    if path.is_dir():
        raise ImageInputError(f"{path}: is a folder, not an image file. Pass one photo (PNG, JPEG, WebP, ...).")
    if path.stat().st_size == 0:
        raise ImageInputError(f"{path}: the file is empty (0 bytes). Re-copy or re-download the photo.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except UnidentifiedImageError:
        raise ImageInputError(f"{path}: not an image file Pillow can read. Pass a PNG, JPEG, WebP, TIFF or BMP photo.") from None
    except Image.DecompressionBombError:
        raise ImageInputError(f"{path}: the image is too large to decode safely. Downscale it below {max_pixels} pixels.") from None
    except Exception as exc:  # a damaged header can surface as OSError, ValueError, struct.error, ...
        raise ImageInputError(f"{path}: cannot be read ({type(exc).__name__}: {exc}).") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageInputError(
            f"{path}: {width}×{height} is {width * height} pixels, over the cap of {max_pixels}. "
            "Downscale the photo first (or raise max_pixels if you trust the file)."
        )
    try:
        image.load()
    except Exception as exc:  # Pillow's decoders raise many kinds on damaged data
        raise ImageInputError(f"{path}: the image data is damaged or truncated ({exc}). Re-copy or re-export the photo.") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Transparent images (RGBA, LA, P with transparency) are composited on white; 16- and 32-bit
    greyscale is scaled down to 8 bits rather than clipped; CMYK and YCbCr are converted.
    """
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        peak = values.max(initial=0)
        if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
            values = values / 65535.0 * 255.0  # 16-bit data (PNG 16-bit greyscale opens as I)
        elif image.mode == "F" and peak <= 1.0:
            values = values * 255.0
        grey = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
        return grey.convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _parse_crop(crop: Crop) -> tuple[int, int, int, int]:
    if crop == "center":
        return (0, 0, 0, 0)
    if isinstance(crop, str):
        raise ImageInputError(f"unknown crop {crop!r}: use 'center' or four offsets (left, right, top, bottom).")
    if len(crop) != 4 or any(int(c) < 0 for c in crop):
        raise ImageInputError(f"crop {crop!r}: give four non-negative pixel offsets (left, right, top, bottom).")
    return tuple(int(c) for c in crop)  # type: ignore[return-value]


def cut_offsets(image: Image.Image, crop: Crop = "center") -> Image.Image:
    """Cut ``crop``'s offsets (left, right, top, bottom) off the borders ("center": nothing)."""
    left, right, top, bottom = _parse_crop(crop)
    width, height = image.size
    if left + right >= width or top + bottom >= height:
        raise ImageInputError(
            f"crop offsets (left={left}, right={right}, top={top}, bottom={bottom}) leave nothing of a "
            f"{width}×{height} image. Use smaller offsets."
        )
    return _cropped(image, (left, top, width - right, height - bottom))


def _region(image: Image.Image) -> tuple[tuple[int, int], tuple[float, float, float, float]]:
    """((height, width) of the photo an image came from, (top, left, height, width) of the part
    of that photo it shows, in the photo's pixels); an image made elsewhere is a whole photo."""
    if "promptedit_region" in image.info:
        return image.info["promptedit_original"], image.info["promptedit_region"]
    return (image.height, image.width), (0.0, 0.0, float(image.height), float(image.width))


def _keep_region(image: Image.Image, original: tuple[int, int], region: tuple[float, float, float, float]) -> Image.Image:
    image.info["promptedit_original"] = tuple(original)
    image.info["promptedit_region"] = tuple(region)
    return image


def _cropped(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """``image.crop(box)`` that remembers which part of the original photo it shows."""
    original, (top, left, h, w) = _region(image)
    sy, sx = h / image.height, w / image.width
    x0, y0, x1, y1 = box
    return _keep_region(image.crop(box), original, (top + y0 * sy, left + x0 * sx, (y1 - y0) * sy, (x1 - x0) * sx))


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` resized (bicubic) to ``size`` = (W, H), still knowing where it came from."""
    original, region = _region(image)
    return _keep_region(image.resize(size, Image.Resampling.BICUBIC), original, region)


def photo_geometry(image: Image.Image) -> tuple[tuple[int, int], tuple[int, int]]:
    """SDXL's size and crop conditions for an image made by ``load_image``: ((height, width) of the
    photo before any cropping, (top, left) of the cut in the image's own pixel frame); an image
    made elsewhere counts as a whole photo: (its own size, (0, 0))."""
    original, (top, left, h, w) = _region(image)
    return (int(original[0]), int(original[1])), (round(top * image.height / h), round(left * image.width / w))


def crop_to_ratio(image: Image.Image, width: int, height: int) -> Image.Image:
    """The largest centred region of ``image`` with the aspect ratio ``width``:``height``."""
    w, h = image.size
    if w * height > h * width:  # too wide: trim the sides
        keep = max(1, round(h * width / height))
        x0 = (w - keep) // 2
        return _cropped(image, (x0, 0, x0 + keep, h))
    keep = max(1, round(w * height / width))
    y0 = (h - keep) // 2
    return _cropped(image, (0, y0, w, y0 + keep))


def fit_size(width: int, height: int, area: int, step: int, tolerance: float = AREA_TOLERANCE) -> tuple[int, int]:
    """The working size (W, H) for a ``width``×``height`` photo: both sides multiples of ``step``,
    the area within a factor ``tolerance`` of ``area`` (the model's native area, 512² for SD 1.x),
    and among those the aspect ratio closest to the photo's (ties: the area closest to ``area``).

    A 3:2 photo at 512² with step 64 gets 576×384; a square one 512×512. When no size is within
    the tolerance (a very long panorama), the closest area wins.
    """
    if width < 1 or height < 1 or area < 1 or step < 1:
        raise ValueError(f"fit_size needs positive numbers, got {width}×{height}, area {area}, step {step}")
    ratio = math.log(width / height)
    best: tuple[tuple[float, float], tuple[int, int]] | None = None
    most = max(1, math.isqrt(area * 16) // step)  # sides up to 4× the native side
    for kw in range(1, most + 1):
        for kh in range(1, most + 1):
            w, h = kw * step, kh * step
            off_area = abs(math.log(w * h / area))
            if off_area > math.log(tolerance) + 1e-12:
                continue
            score = (round(abs(math.log(w / h) - ratio), 12), off_area)
            if best is None or score < best[0]:
                best = (score, (w, h))
    if best is None:  # nothing near the area: one row or column of steps, as close as it gets
        side = max(1, round(math.sqrt(area) / step)) * step
        return (side, step) if width >= height else (step, side)
    return best[1]


def resolve_size(request: SizeRequest, width: int, height: int, native: int, step: int) -> tuple[int, int]:
    """The working size (W, H) for a photo of ``width``×``height``.

    Args:
        request: "auto" (the photo's ratio at the model's ``native``² area, ``fit_size``), a side N
            (N×N) or (W, H).
        native: the model's native side in pixels; step: what its sides must be multiples of.

    Raises:
        SizeError: an explicit size that is not a multiple of ``step``; the message gives the nearest.
    """
    if request == "auto":
        return fit_size(width, height, native * native, step)
    w, h = (request, request) if isinstance(request, int) else tuple(request)
    for side, name in ((w, "width"), (h, "height")):
        if side < step or side % step:
            near = max(step, round(side / step) * step)
            raise SizeError(f"a {name} of {side} px is not a multiple of {step}, which this model needs: use {near} "
                            "(or --size auto)")
    return int(w), int(h)


def load_image(
    path: str | Path | Image.Image,
    size: int | tuple[int, int] = 512,
    crop: Crop = "center",
    max_pixels: int = MAX_PIXELS,
    keep_ratio: bool = False,
) -> Image.Image:
    """Read a photo into an RGB image of the working size.

    Args:
        path: a file path, or an already opened PIL image.
        size: a side N (an N×N image, the reference's square) or (W, H).
        crop: "center", or offsets (left, right, top, bottom) cut off first.
        max_pixels: refuse images with more pixels than this before decoding them.
        keep_ratio: resize the whole photo to ``size`` without cropping (for a size ``fit_size``
            chose, whose ratio is the photo's to within a step); otherwise the largest centred
            region with the size's ratio is cut out first.

    Returns:
        An RGB PIL image of W×H, EXIF orientation applied.

    Raises:
        ImageInputError: a missing path, a folder, an empty, truncated or non-image file, or an
            image over the pixel cap; the message names the file and the problem.
    """
    rgb = load_photo(path, crop, max_pixels)
    width, height = (size, size) if isinstance(size, int) else size
    if not keep_ratio:
        rgb = crop_to_ratio(rgb, width, height)
    if rgb.size == (width, height):
        return rgb
    return _resized(rgb, (width, height))


def load_photo(path: str | Path | Image.Image, crop: Crop = "center", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read a photo as RGB at its own size: EXIF orientation applied, ``crop``'s offsets cut off.

    Raises:
        ImageInputError: as ``load_image``.
    """
    if isinstance(path, Image.Image):
        image = path
    else:
        image = _open(Path(path).expanduser(), max_pixels)
    try:
        image = ImageOps.exif_transpose(image) or image
    except Exception as exc:  # a damaged EXIF block should not cost the user the photo
        log.warning("ignoring the unreadable EXIF orientation of %s: %s", path, exc)
    try:
        rgb = to_rgb(image)
    except Exception as exc:
        raise ImageInputError(f"{path}: cannot convert {image.mode} pixels to RGB ({exc}).") from None
    return cut_offsets(rgb, crop)


def image_hash(image: Image.Image) -> str:
    """SHA-256 of an image's size, mode and pixel bytes (a cache key part)."""
    digest = hashlib.sha256(f"{image.size}{image.mode}".encode())
    digest.update(np.asarray(image).tobytes())
    return digest.hexdigest()
