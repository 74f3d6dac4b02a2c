"""Reading a user's photo into the square RGB image the model sees."""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 64 megapixels: larger than any camera photo people edit, small enough that decoding is safe.
MAX_PIXELS = 8192 * 8192

Crop = Union[str, tuple[int, int, int, int]]
log = logging.getLogger(__name__)


class ImageInputError(ValueError):
    """A photo could not be used; the message names the file, the problem and the fix."""


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


def square_crop(image: Image.Image, size: int, crop: Crop = "center") -> Image.Image:
    """Cut ``crop``'s offsets (left, right, top, bottom) off the borders, centre-crop to a square
    and resize to ``size``×``size`` (bicubic), as the reference implementation's ``load_512`` does."""
    left, right, top, bottom = _parse_crop(crop)
    width, height = image.size
    if left + right >= width or top + bottom >= height:
        raise ImageInputError(
            f"crop offsets (left={left}, right={right}, top={top}, bottom={bottom}) leave nothing of a "
            f"{width}×{height} image. Use smaller offsets."
        )
    image = image.crop((left, top, width - right, height - bottom))
    width, height = image.size
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    image = image.crop((x0, y0, x0 + side, y0 + side))
    out = image.resize((size, size), Image.Resampling.BICUBIC)
    # where the square came from, for SDXL's size and crop conditions (see ``photo_geometry``);
    # an image this function already made passes through it unchanged and keeps its own
    unchanged = (left, right, top, bottom) == (0, 0, 0, 0) and (width, height) == (size, size)
    if not (unchanged and "original_size" in out.info):
        scale = size / side
        out.info["original_size"] = (height + top + bottom, width + left + right)
        out.info["crop_top_left"] = (round((top + y0) * scale), round((left + x0) * scale))
    return out


def photo_geometry(image: Image.Image) -> tuple[tuple[int, int], tuple[int, int]]:
    """((height, width) of the photo before cropping, (top, left) of the crop in the resized
    frame) of an image made by ``load_image``/``square_crop``; an image made elsewhere counts as
    uncropped: (its own size, (0, 0))."""
    width, height = image.size
    return (tuple(image.info.get("original_size", (height, width))),  # type: ignore[return-value]
            tuple(image.info.get("crop_top_left", (0, 0))))


def load_image(
    path: str | Path | Image.Image,
    size: int = 512,
    crop: Crop = "center",
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Read a photo into a ``size``×``size`` RGB image.

    Args:
        path: a file path, or an already opened PIL image.
        size: side of the square output in pixels (the model's native size).
        crop: "center", or offsets (left, right, top, bottom) cut off before the centre crop.
        max_pixels: refuse images with more pixels than this before decoding them.

    Returns:
        An RGB PIL image of size×size, EXIF orientation applied.

    Raises:
        ImageInputError: a missing path, a folder, an empty, truncated or non-image file, or an
            image over the pixel cap; the message names the file and the problem.
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
    return square_crop(rgb, size, crop)


def image_hash(image: Image.Image) -> str:
    """SHA-256 of an image's size, mode and pixel bytes (a cache key part)."""
    digest = hashlib.sha256(f"{image.size}{image.mode}".encode())
    digest.update(np.asarray(image).tobytes())
    return digest.hexdigest()
