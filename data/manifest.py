"""Dataset manifests as ``EditJob`` records: a JSONL file, or PIE-Bench's mapping file.

A JSONL line: ``{"id": "cat1", "image": "photos/cat.jpg", "src": "...", "tgt": "..." | [...],
...options}``; relative image paths are resolved against the manifest's folder. Any other key is
a per-job edit option overriding the command line (``steps``, ``guidance``, ``mode``,
``cross_replace``, ``self_replace``, ``reweight``, ``blend``, ``inversion``, ``inner_steps``,
``crop``, ``size``, ``blend_threshold``, ``fixed_point_steps``, ``fixed_point_anchor``, ``prox``,
``prox_quantile``, ``latent_guard``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from data.images import SizeError, parse_size
from data.numbers import check_number, limited
from data.pie_bench import ManifestError, load_mapping

OPTION_KEYS = {"steps", "guidance", "mode", "cross_replace", "self_replace", "reweight", "blend", "inversion",
               "inner_steps", "crop", "size", "blend_threshold", "fixed_point_steps", "fixed_point_anchor", "prox",
               "prox_quantile", "latent_guard"}
# The names a user picks an inversion or a proximal mode by (torch-free, so that every entry point
# checks them before a model loads; ``inversion.METHODS`` and ``editing.proximal`` use these).
INVERSION_METHODS = ("null-text", "negative-prompt", "ddim", "direct", "fixed-point")
PROX_MODES = ("l0", "l1")
# P2P settings of PIE-Bench's published runs (run_editing_p2p.py)
PIE_BENCH_OPTIONS = {"cross_replace": 0.4, "self_replace": 0.6, "steps": 50, "guidance": 7.5}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class EditJob:
    """One photo to edit: id (a folder name), image path, prompts, the dataset's settings for it
    (``defaults``: PIE-Bench's published ones, which the command line overrides) and its own
    ``options`` (a manifest line's, which override the command line)."""

    id: str
    image: Path
    src: str
    tgts: tuple[str, ...]
    options: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)


def _fractions(value, what: str) -> None:
    """A fraction or a [start, end] pair of fractions (their order is the EditSpec's to check)."""
    for v in value if isinstance(value, list) else [value]:
        limited("fraction", v, what, ManifestError)


def check_options(options: dict, where: str) -> None:
    """Refuse a manifest line's option whose numbers are not finite or out of range, naming the
    line and the key (the same limits as the command line's, from ``data.numbers.LIMITS``).

    Structure beyond numbers (a word that is not in a prompt, start after end) is the
    ``EditSpec``'s to check, and fails that job alone.
    """
    for key in ("steps", "inner_steps", "guidance", "blend_threshold", "fixed_point_steps", "fixed_point_anchor",
                "prox_quantile", "latent_guard"):
        if key in options:
            limited(key, options[key], f"{where}: {key} =", ManifestError)
    for key, names, off in (("inversion", INVERSION_METHODS, ""), ("prox", PROX_MODES, " (or null: plain guidance)")):
        if key in options and options[key] not in names and not (off and options[key] is None):
            raise ManifestError(f"{where}: {key} = {json.dumps(options[key])} is unknown: use one of "
                                f"{', '.join(names)}{off}")
    for key in ("cross_replace", "self_replace"):
        value = options.get(key)
        if isinstance(value, dict) and key == "cross_replace":
            for word, steps in value.items():
                _fractions(steps, f"{where}: cross_replace[{word!r}] =")
        elif value is not None:
            _fractions(value, f"{where}: {key} =")
    reweight = options.get("reweight")
    if reweight is not None:
        if not isinstance(reweight, dict):
            raise ManifestError(f"{where}: reweight must be an object of word: scale, e.g. {{\"dog\": 2}}")
        for word, scale in reweight.items():
            limited("reweight", scale, f"{where}: reweight[{word!r}] =", ManifestError)
    crop = options.get("crop")
    if crop is not None and crop != "center":
        if not isinstance(crop, list) or len(crop) != 4:
            raise ManifestError(f"{where}: crop must be \"center\" or four pixel offsets [left, right, top, bottom]")
        for offset in crop:
            check_number(offset, f"{where}: crop offset", low=0, integer=True, error=ManifestError)
    if "size" in options:
        try:
            parse_size(options["size"], f"{where}: size")
        except SizeError as exc:
            raise ManifestError(str(exc)) from None


def read_jsonl(path: str | Path) -> list[EditJob]:
    """Jobs of a JSONL manifest.

    Raises:
        ManifestError: the file is missing or a line is not a job, or one of its options is not a
            finite number in range (the message names the line and the key).
    """
    path = Path(path)
    if path.is_dir():
        raise ManifestError(f"{path} is a folder: pass the JSONL manifest file itself (or --pie-bench ROOT for PIE-Bench)")
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    jobs, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: a line must be a JSON object with id, image, src, tgt")
        missing = [k for k in ("id", "image", "src", "tgt") if k not in entry]
        if missing:
            raise ManifestError(f"{where}: missing {', '.join(missing)} (each line needs id, image, src, tgt)")
        job_id = str(entry["id"])
        if not _ID.match(job_id):
            raise ManifestError(f"{where}: id {job_id!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
        if job_id in seen:
            raise ManifestError(f"{where}: id {job_id!r} appears twice; ids must be unique")
        seen.add(job_id)
        unknown = set(entry) - {"id", "image", "src", "tgt", "mask", "edit_type"} - OPTION_KEYS
        if unknown:
            raise ManifestError(f"{where}: unknown keys {sorted(unknown)}; options are {sorted(OPTION_KEYS)}")
        check_options(entry, where)
        tgts = entry["tgt"] if isinstance(entry["tgt"], list) else [entry["tgt"]]
        image = Path(entry["image"]).expanduser()
        jobs.append(EditJob(job_id, image if image.is_absolute() else path.parent / image, str(entry["src"]),
                            tuple(str(t) for t in tgts), {k: v for k, v in entry.items() if k in OPTION_KEYS}))
    return jobs


def pie_bench_jobs(root: str | Path) -> list[EditJob]:
    """Jobs for every PIE-Bench item with the published P2P settings: cross-replace 0.4,
    self-replace 0.6, local blend on the blended words and the target word reweighted ×2 (where
    the item names blended words), 50 steps, guidance 7.5."""
    jobs = []
    for item in load_mapping(root):
        options = dict(PIE_BENCH_OPTIONS)
        if item.blend_words is not None:
            options["blend"] = [[item.blend_words[0]], [item.blend_words[1]]]
            options["reweight"] = {item.blend_words[1]: 2.0}
        jobs.append(EditJob(item.id, item.image, item.src, (item.tgt,), defaults=options))
    return jobs
