"""Pictures of attention: each token's averaged cross-attention map over the edited image."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data.prompts import normalize_prompt


def enlarged(image: Image.Image, minimum: int = 192) -> Image.Image:
    """``image`` scaled up by a whole factor (nearest pixels) until its longer side is at least
    ``minimum``, so that a small model's 64-px pictures and their captions can be read; larger
    images come back as they are."""
    factor = -(-minimum // max(image.size))
    return image if factor <= 1 else image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def captioned(image: Image.Image, caption: str, height: int = 18) -> Image.Image:
    """``image`` with ``caption`` written on a white band under it, on one line, shortened with
    "…" to fit. Any text draws: whitespace of every kind becomes one space, and characters the
    font cannot encode are written as escapes."""
    out = Image.new("RGB", (image.width, image.height + height), "white")
    out.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    text = normalize_prompt(str(caption))
    try:
        _draw_label(draw, font, text, image.width, image.height + 3)
    except (UnicodeError, ValueError, OSError):  # a font without those glyphs (Pillow's bitmap font: Latin-1)
        plain = text.encode("ascii", "backslashreplace").decode("ascii")
        _draw_label(draw, font, plain, image.width, image.height + 3, ellipsis="...")
    return out


def _draw_label(draw: ImageDraw.ImageDraw, font, text: str, width: int, top: int, ellipsis: str = "…") -> None:
    while text and draw.textlength(text, font=font) > width - 4:
        text = text[:-len(ellipsis) - 1] + ellipsis if len(text) > len(ellipsis) + 1 else ""
    draw.text(((width - draw.textlength(text, font=font)) / 2, top), text, fill="black", font=font)


def grid(images: list[Image.Image], columns: int | None = None, pad: int = 4) -> Image.Image:
    """Lay images out left to right, top to bottom, on white (all assumed the same size)."""
    columns = columns or len(images)
    rows = (len(images) + columns - 1) // columns
    w, h = images[0].size
    out = Image.new("RGB", (columns * w + (columns - 1) * pad, rows * h + (rows - 1) * pad), "white")
    for i, image in enumerate(images):
        out.paste(image, ((i % columns) * (w + pad), (i // columns) * (h + pad)))
    return out


def picture_size(image: Image.Image, size: int) -> tuple[int, int]:
    """(W, H) of a picture of ``image`` whose longer side is ``size`` px (its ratio kept)."""
    w, h = image.size
    scale = size / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def heatmap(attention: np.ndarray, background: Image.Image, size: int) -> Image.Image:
    """One token's map [rows, cols] scaled to its max, coloured, laid over ``background``, whose
    ratio the picture keeps, at ``size`` px on its longer side."""
    width, height = picture_size(background, size)
    peak = float(attention.max())
    gray = np.uint8(255 * attention / peak) if peak > 0 else np.zeros_like(attention, dtype=np.uint8)
    gray = cv2.resize(gray, (width, height), interpolation=cv2.INTER_NEAREST)
    colour = cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    base = np.asarray(background.convert("RGB").resize((width, height)), dtype=np.float32)
    return Image.fromarray(np.uint8(0.5 * base + 0.5 * colour))


def attention_maps(result, prompt_index: int = 0, size: int = 128) -> list[tuple[str, Image.Image]]:
    """(token, picture) for each token of prompt ``prompt_index`` (start and end tokens included):
    the token's averaged cross-attention map over that prompt's image, uncaptioned.

    ``result`` is an ``EditResult`` made with ``return_attention=True``.
    """
    if result.attention is None:
        raise ValueError("this result has no attention maps: call edit(..., return_attention=True)")
    maps = result.attention[prompt_index].float().cpu().numpy()  # [rows, cols, 77]
    tokens = result.tokens[prompt_index]
    return [(token, heatmap(maps[:, :, j], result.images[prompt_index], size)) for j, token in enumerate(tokens)]


def attention_pictures(result, prompt_index: int = 0, size: int = 128) -> Image.Image:
    """A picture of prompt ``prompt_index``'s averaged cross-attention map for each of its tokens
    (start and end tokens included), each over that prompt's image and captioned with the token.

    ``result`` is an ``EditResult`` made with ``return_attention=True``.
    """
    tiles = [captioned(picture, token) for token, picture in attention_maps(result, prompt_index, size)]
    return grid(tiles, columns=min(len(tiles), 8))
