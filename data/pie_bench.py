"""PIE-Bench (Ju et al., "Direct Inversion"): 700 photos, 10 edit types, one ``mapping_file.json``.

Each entry of the mapping file has ``image_path`` (relative to ``annotation_images/``),
``original_prompt``, ``editing_prompt`` (edited words in [brackets]), ``editing_instruction``,
``editing_type_id``, ``blended_word`` ("source target") and ``mask``: run-length pairs
(start, length) over the row-major flattened 512×512 image, 1 = edited.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EDIT_TYPES = {
    0: "random editing",
    1: "change object",
    2: "add object",
    3: "delete object",
    4: "change content",
    5: "change pose",
    6: "change color",
    7: "change material",
    8: "change background",
    9: "change style",
}


class ManifestError(ValueError):
    """A dataset manifest cannot be read; the message names the file and the entry."""


@dataclass(frozen=True)
class PieItem:
    """One PIE-Bench edit: the photo, both prompts (brackets removed), its type and mask."""

    id: str
    image: Path
    src: str
    tgt: str
    instruction: str
    edit_type: int
    blend_words: tuple[str, str] | None
    mask_rle: tuple[int, ...]

    def mask(self, border: bool = False) -> np.ndarray:
        """The edit mask [512, 512] (1 = edited); see ``decode_mask``."""
        return decode_mask(self.mask_rle, border=border)


def clean_prompt(text: str) -> str:
    """PIE-Bench marks edited words with [brackets]; the model sees the text without them."""
    return " ".join(text.replace("[", "").replace("]", "").split())


def decode_mask(rle, shape: tuple[int, int] = (512, 512), border: bool = False) -> np.ndarray:
    """Decode PIE-Bench's run-length mask.

    Args:
        rle: flat list of (start, length) pairs over the row-major flattened image.
        shape: image (height, width).
        border: also mark the one-pixel image border as edited, as PIE-Bench's evaluator does
            "to avoid annotation errors" (used by ``--pie-bench-compat``).

    Returns:
        uint8 array of ``shape``, 1 on edited pixels.
    """
    values = [int(v) for v in rle]
    if len(values) % 2:
        raise ValueError(f"a run-length mask needs (start, length) pairs; got {len(values)} numbers")
    flat = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for start, length in zip(values[::2], values[1::2]):
        if start < 0 or length < 0:
            raise ValueError(f"negative run ({start}, {length}) in a run-length mask")
        flat[start : start + length] = 1
    mask = flat.reshape(shape)
    if border:
        mask[0, :] = mask[-1, :] = 1
        mask[:, 0] = mask[:, -1] = 1
    return mask


def load_mapping(root: str | Path) -> list[PieItem]:
    """Read PIE-Bench's ``mapping_file.json`` (given directly, or the dataset root holding it).

    Image paths are resolved under ``ROOT/annotation_images``. Raises ManifestError on a missing
    file or an entry without the fields above.
    """
    root = Path(root)
    path = root if root.is_file() else root / "mapping_file.json"
    if not path.is_file():
        raise ManifestError(f"{path}: no PIE-Bench mapping_file.json here. Pass the dataset root (the folder with mapping_file.json and annotation_images/)")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not readable JSON ({exc})") from None
    images = path.parent / "annotation_images"
    items = []
    for key, entry in entries.items():
        try:
            words = entry.get("blended_word", "").split()
            items.append(
                PieItem(
                    id=str(key),
                    image=images / entry["image_path"],
                    src=clean_prompt(entry["original_prompt"]),
                    tgt=clean_prompt(entry["editing_prompt"]),
                    instruction=entry.get("editing_instruction", ""),
                    edit_type=int(entry["editing_type_id"]),
                    blend_words=(words[0], words[1]) if len(words) == 2 else None,
                    mask_rle=tuple(int(v) for v in entry.get("mask", [])),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{path}: entry {key!r} lacks or mangles a field ({exc})") from None
    return items


def by_edit_type(items: list[PieItem]) -> dict[int, list[PieItem]]:
    """Items grouped by edit type id, in id order."""
    groups: dict[int, list[PieItem]] = defaultdict(list)
    for item in items:
        groups[item.edit_type].append(item)
    return dict(sorted(groups.items()))
