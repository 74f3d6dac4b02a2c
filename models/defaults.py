"""A model's own editing defaults: ``promptedit.json`` in its folder, read once per pipeline.

A model trained here can carry the settings measured to serve it best, used whenever the user
gives none. Today that is the local blend's map side and threshold: at 64 px (16×16 latents) the
SPEC's "quarter of the latent side" has no cross-attention layer, so the shapes model keeps what
``python -m bench shapes --blend-sweep`` measured (docs/benchmarks.md)::

    {"local_blend": {"map_side": 16, "threshold": 0.3}}

A model without the file (every hub model) has no defaults, and the SPEC's apply.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULTS_FILE = "promptedit.json"


@dataclass(frozen=True)
class BlendDefaults:
    """Local blend settings of a model: the side of the cross-attention maps it reads and the mask
    threshold; None where the model has no preference."""

    map_side: int | None = None
    threshold: float | None = None


def read_blend_defaults(folder: str | Path) -> BlendDefaults:
    """The local blend defaults in ``folder/promptedit.json`` (none when the file is absent).

    Raises:
        ValueError: the file exists but is not JSON, or its values are not a positive whole map
            side and a threshold strictly between 0 and 1.
    """
    path = Path(folder) / DEFAULTS_FILE
    if not path.is_file():
        return BlendDefaults()
    try:
        blend = json.loads(path.read_text()).get("local_blend", {})
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a JSON object ({exc}); fix or delete it") from None
    side, threshold = blend.get("map_side"), blend.get("threshold")
    if side is not None and (isinstance(side, bool) or not isinstance(side, int) or side < 1):
        raise ValueError(f"{path}: local_blend.map_side must be a positive whole number, not {side!r}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not 0 < threshold < 1):
        raise ValueError(f"{path}: local_blend.threshold must be a number strictly between 0 and 1, not {threshold!r}")
    return BlendDefaults(side, None if threshold is None else float(threshold))


def blend_defaults(pipe) -> BlendDefaults:
    """The local blend defaults of a loaded pipeline: from ``promptedit.json`` in the folder it was
    loaded from (``pipe.name_or_path``), read on the first call and kept on the pipeline."""
    cached = getattr(pipe, "_promptedit_blend_defaults", None)
    if cached is not None:
        return cached
    folder = Path(str(getattr(pipe, "name_or_path", "") or ""))
    found = read_blend_defaults(folder) if str(folder) and folder.is_dir() else BlendDefaults()
    if found != BlendDefaults():
        log.info("model defaults from %s: local blend %s", folder / DEFAULTS_FILE, found)
    try:
        object.__setattr__(pipe, "_promptedit_blend_defaults", found)
    except (AttributeError, TypeError):  # an object that takes no attributes: read again next time
        pass
    return found
