"""Dataset manifests as ``EditJob`` records: a JSONL file, or PIE-Bench's mapping file.

A JSONL line: ``{"id": "cat1", "image": "photos/cat.jpg", "src": "...", "tgt": "..." | [...],
...options}``; relative image paths are resolved against the manifest's folder. Any other key is
a per-job edit option overriding the command line (``steps``, ``guidance``, ``mode``,
``cross_replace``, ``self_replace``, ``reweight``, ``blend``, ``inversion``, ``inner_steps``,
``crop``, ``size``, ``blend_threshold``, ``fixed_point_steps``, ``fixed_point_anchor``, ``prox``,
``prox_quantile``, ``latent_guard``). The file is read as UTF-8 (a leading byte-order mark is
allowed); every field's type is checked as it is read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
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
EDIT_MODES = ("auto", "replace", "refine")  # ``editing.spec.MODES``, without importing torch
# P2P settings of PIE-Bench's published runs (run_editing_p2p.py)
PIE_BENCH_OPTIONS = {"cross_replace": 0.4, "self_replace": 0.6, "steps": 50, "guidance": 7.5}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, which some editors put at the start of a file


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


def _kind(value) -> str:
    """What a JSON value is, in the words of a message: "null", "a number (5)", "a list ([1])", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({_shown(value)})"
    if isinstance(value, (int, float)):
        kind = "a number"
    elif isinstance(value, str):
        kind = "a string"
    elif isinstance(value, list):
        kind = "a list"
    elif isinstance(value, dict):
        kind = "an object"
    else:
        kind = type(value).__name__
    return f"{kind} ({_shown(value)})"


def _shown(value) -> str:
    """A value as the manifest writes it, cut to 40 characters."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _fractions(value, what: str, key: str, where: str) -> None:
    """A fraction or a [start, end] pair of fractions (their order is the EditSpec's to check)."""
    if isinstance(value, list) and len(value) != 2 or isinstance(value, dict) or value is None:
        raise ManifestError(f"{where}: {key} = {_shown(value)}: write a fraction of the steps such as 0.8, or a "
                            f"[start, end] pair such as [0.2, 0.8]")
    for v in value if isinstance(value, list) else [value]:
        limited("fraction", v, what, ManifestError)


def _check_blend(value, where: str) -> None:
    """Local-blend words: null, "SOURCE_WORD:TARGET_WORD", or a list of words (or word lists), one
    per prompt (whether the words are in the prompts is the EditSpec's to check)."""
    if value is None:
        return
    if isinstance(value, str):
        source, sep, target = value.partition(":")
        if sep and source.strip() and target.strip():
            return
    elif isinstance(value, list) and value:
        groups = [g if isinstance(g, list) else [g] for g in value]
        if all(g and all(isinstance(w, str) and w.strip() for w in g) for g in groups):
            return
    raise ManifestError(f"{where}: blend = {_shown(value)}: write \"SOURCE_WORD:TARGET_WORD\" such as \"cat:dog\", "
                        f"or a list of words per prompt such as [[\"cat\"], [\"dog\"]]")


def check_options(options: dict, where: str) -> None:
    """Refuse a manifest line's option whose numbers are not finite or out of range (the same
    limits as the command line's, from ``data.numbers.LIMITS``), whose choice is unknown (``mode``,
    ``inversion``, ``prox``) or whose value has the wrong shape (a window that is not a fraction
    or a [start, end] pair, a ``reweight`` that is not an object, a malformed ``blend``, ``crop``
    or ``size``), naming the line and the key.

    Structure beyond numbers (a word that is not in a prompt, start after end) is the
    ``EditSpec``'s to check, and fails that job alone.
    """
    for key in ("steps", "inner_steps", "guidance", "blend_threshold", "fixed_point_steps", "fixed_point_anchor",
                "prox_quantile", "latent_guard"):
        if key in options:
            limited(key, options[key], f"{where}: {key} =", ManifestError)
    for key, names, off in (("inversion", INVERSION_METHODS, ""), ("prox", PROX_MODES, " (or null: plain guidance)"),
                            ("mode", EDIT_MODES, "")):
        if key in options and not (isinstance(options[key], str) and options[key] in names) \
                and not (off and options[key] is None):
            raise ManifestError(f"{where}: {key} = {_shown(options[key])} is unknown: use one of "
                                f"{', '.join(names)}{off}")
    for key in ("cross_replace", "self_replace"):
        if key not in options:
            continue
        value = options[key]
        if isinstance(value, dict) and key == "cross_replace":
            for word, steps in value.items():
                _fractions(steps, f"{where}: cross_replace[{word!r}] =", f"cross_replace[{word!r}]", where)
        else:
            _fractions(value, f"{where}: {key} =", key, where)
    reweight = options.get("reweight")
    if reweight is not None:
        if not isinstance(reweight, dict):
            raise ManifestError(f"{where}: reweight must be an object of word: scale, e.g. {{\"dog\": 2}}")
        for word, scale in reweight.items():
            limited("reweight", scale, f"{where}: reweight[{word!r}] =", ManifestError)
    _check_blend(options.get("blend"), where)
    crop = options.get("crop", "center")
    if crop != "center":
        if not isinstance(crop, list) or len(crop) != 4:
            raise ManifestError(f"{where}: crop must be \"center\" or four pixel offsets [left, right, top, bottom]")
        for offset in crop:
            check_number(offset, f"{where}: crop offset", low=0, integer=True, error=ManifestError)
    if "size" in options:
        try:
            parse_size(options["size"], f"{where}: size")
        except SizeError as exc:
            raise ManifestError(str(exc)) from None


def manifest_lines(path: Path) -> Iterator[tuple[str, dict]]:
    """``("FILE:LINE", object)`` for each non-blank line of a JSONL file, read as UTF-8 (a leading
    byte-order mark is skipped).

    Raises:
        ManifestError: the file cannot be read, or a line is not UTF-8, not JSON or not a JSON
            object (the message names the line).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    skipped = len(_BOM) if data.startswith(_BOM) else 0
    for number, raw in enumerate(data[skipped:].splitlines(), start=1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            column = exc.start + 1 + (skipped if number == 1 else 0)
            raise ManifestError(f"{where}: not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {column} of the line): "
                                "save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{where}: not JSON ({exc.msg})") from None
        except (ValueError, RecursionError) as exc:  # a number of over 4300 digits, nesting too deep
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(":")[0]
            raise ManifestError(f"{where}: not JSON ({reason})") from None
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: a line must be a JSON object with id, image, src, tgt")
        yield where, entry


def _need_text(value, key: str, where: str, what: str, example: str, allow_empty: bool = True) -> None:
    """Refuse a field that is not a string (or, unless ``allow_empty``, is blank)."""
    if not isinstance(value, str):
        raise ManifestError(f"{where}: {key} is {_kind(value)}: write {what} as a string, "
                            f"e.g. {example}")
    if not allow_empty and not value.strip():
        raise ManifestError(f"{where}: {key} is empty: write {what}, e.g. {example}")


def check_fields(entry: dict, where: str) -> None:
    """Refuse a manifest line whose ``id``, ``image``, ``src``, ``tgt``, ``edit_type`` or ``mask``
    (those present) has the wrong JSON type, naming the line, the key and what to write instead.

    Raises:
        ManifestError: a field is not of its type (or is an empty text or list).
    """
    if "id" in entry:
        example = json.dumps(str(entry["id"])) if isinstance(entry["id"], int) and not isinstance(entry["id"], bool) \
            else '"cat1"'
        _need_text(entry["id"], "id", where, "the id (it names a folder)", example)
    if "image" in entry:
        _need_text(entry["image"], "image", where, "the photo's path", '"photos/cat.jpg"', allow_empty=False)
        if "\0" in entry["image"]:
            raise ManifestError(f"{where}: image {_shown(entry['image'])} holds a NUL character: write the photo's path")
    if "src" in entry:
        _need_text(entry["src"], "src", where, "the source prompt", '"a cat on a bench"')
    if "tgt" in entry:
        tgt = entry["tgt"]
        if isinstance(tgt, list):
            if not tgt:
                raise ManifestError(f"{where}: tgt is an empty list: give at least one target prompt, "
                                    'e.g. ["a dog on a bench"]')
            for k, prompt in enumerate(tgt):
                _need_text(prompt, f"tgt[{k}]", where, "each target prompt", '["a dog on a bench", "a fox on a bench"]')
        else:
            _need_text(tgt, "tgt", where, "the target prompt (or a list of them)", '"a dog on a bench"')
    edit_type = entry.get("edit_type", "")
    if not isinstance(edit_type, str) and (isinstance(edit_type, bool) or not isinstance(edit_type, int)):
        raise ManifestError(f"{where}: edit_type is {_kind(edit_type)}: write it as a string "
                            'or a whole number, e.g. "change object" or 1')
    mask = entry.get("mask")
    if mask is not None:
        runs = isinstance(mask, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in mask)
        if not runs and not (isinstance(mask, str) and mask.strip()):
            raise ManifestError(f"{where}: mask is {_kind(mask)}: write a list of whole numbers "
                                '(RLE start, length pairs) or a mask image\'s path, e.g. "masks/cat.png"')


def read_jsonl(path: str | Path) -> list[EditJob]:
    """Jobs of a JSONL manifest (UTF-8, a leading byte-order mark allowed).

    Raises:
        ManifestError: the file is missing, not UTF-8, or a line is not a job: a field of the
            wrong type, an option that is not a finite number in range or not one of its choices
            (the message names the line and the key).
    """
    path = Path(path)
    if path.is_dir():
        raise ManifestError(f"{path} is a folder: pass the JSONL manifest file itself (or --pie-bench ROOT for PIE-Bench)")
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    jobs, seen = [], set()
    for where, entry in manifest_lines(path):
        missing = [k for k in ("id", "image", "src", "tgt") if k not in entry]
        if missing:
            raise ManifestError(f"{where}: missing {', '.join(missing)} (each line needs id, image, src, tgt)")
        check_fields(entry, where)
        job_id = entry["id"]
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
        try:
            image = Path(entry["image"]).expanduser()
        except RuntimeError:  # "~name/..." for a user this machine does not know
            raise ManifestError(f"{where}: image {_shown(entry['image'])}: its ~ names no user here; "
                                "write the photo's full path") from None
        jobs.append(EditJob(job_id, image if image.is_absolute() else path.parent / image, entry["src"],
                            tuple(tgts), {k: v for k, v in entry.items() if k in OPTION_KEYS}))
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
