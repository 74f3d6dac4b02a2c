"""The web app's text fields, read into edit options, and the faders' words and values.

Every field of the page and of its API is text or a number; this module turns the text ones into
what ``EditSpec`` takes, and refuses malformed text with an ``AppInputError`` whose message says
what to write instead. Words and numbers are checked again by ``EditSpec`` (a word must be in its
prompt, a fraction in [0, 1]); here only the shape of each line is.
"""

from __future__ import annotations

import math
import re
import string

FADER_RANGE = (-2.0, 2.0)  # the paper's fader range; any finite scale can still be typed as text


class AppInputError(ValueError):
    """A field of the page cannot be read; the message says what to write."""


def target_prompts(text: str | None) -> list[str]:
    """The target prompts, one per non-empty line."""
    prompts = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not prompts:
        raise AppInputError("Write at least one target prompt, one per line (e.g. 'a dog sitting on a bench').")
    return prompts


def _number(text: str, what: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise AppInputError(f"{what}: {text.strip()!r} is not a number.")
    return value


def parse_window(text: str | None, what: str, default: float) -> float | tuple[float, float]:
    """A step window: "0.8" (the first 80 % of the steps) or "0.2,0.8" (from 20 % to 80 %)."""
    text = (text or "").strip()
    if not text:
        return default
    parts = re.split(r"\s*[,;]\s*|\s+", text)
    if len(parts) not in (1, 2):
        raise AppInputError(f"{what} '{text}': write a fraction of the steps (0.8) or START,END (0.2,0.8).")
    values = [_number(p, f"{what} '{text}'") for p in parts]
    if any(not 0.0 <= v <= 1.0 for v in values) or (len(values) == 2 and values[0] > values[1]):
        raise AppInputError(f"{what} '{text}': fractions lie in [0, 1] and START ≤ END, e.g. 0.8 or 0.2,0.8.")
    return values[0] if len(values) == 1 else (values[0], values[1])


def parse_cross_replace(text: str | None, default: float = 0.8):
    """The cross-replace field: a window for every word (first line), then WORD=WINDOW lines that
    give a word its own, e.g. "0.8" and "dog=0.4". Returns what ``EditSpec.cross_replace_steps`` takes."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    plain = [line for line in lines if "=" not in line]
    if len(plain) > 1:
        raise AppInputError("Cross-replace: write one window for all words (0.8), then one WORD=WINDOW per line (dog=0.4).")
    window = parse_window(plain[0], "Cross-replace", default) if plain else default
    words = {}
    for line in lines:
        if "=" in line:
            word, _, value = line.partition("=")
            if not word.strip():
                raise AppInputError(f"Cross-replace '{line}': write WORD=WINDOW, e.g. dog=0.4.")
            words[word.strip()] = parse_window(value, f"Cross-replace for '{word.strip()}'", default)
    return {"default_": window, **words} if words else window


def parse_reweights(text: str | None) -> dict[str, float] | None:
    """The reweight field: one WORD=SCALE per line (the sliders write it), e.g. "fluffy=2"."""
    found: dict[str, float] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        word, sep, value = line.partition("=")
        if not sep or not word.strip():
            raise AppInputError(f"Reweight '{line.strip()}': write one WORD=SCALE per line, e.g. fluffy=2.")
        found[word.strip()] = _number(value, f"Reweight for '{word.strip()}'")
    return found or None


def parse_blend(text: str | None) -> tuple[list[str], list[str]] | None:
    """The local-blend field: SOURCE:TARGET word pairs, one per line or comma-separated, e.g. "cat:dog"."""
    source, target = [], []
    for entry in re.split(r"[\n,]", text or ""):
        if not entry.strip():
            continue
        src, sep, tgt = entry.partition(":")
        if not sep or not src.strip() or not tgt.strip():
            raise AppInputError(f"Local blend '{entry.strip()}': write SOURCE_WORD:TARGET_WORD, e.g. cat:dog.")
        source.append(src.strip())
        target.append(tgt.strip())
    return (source, target) if source else None


def fader_words(targets_text: str | None, limit: int) -> list[str]:
    """The distinct words of the target prompts (lower case, without surrounding punctuation), in
    order of appearance, at most ``limit``: one fader each."""
    words: list[str] = []
    for line in (targets_text or "").splitlines():
        for word in line.split():
            core = word.strip(string.punctuation).lower()
            if core and core not in words:
                words.append(core)
    return words[:limit]


def reweight_text(words: list[str], values: list[float]) -> str:
    """The reweight field the faders describe: WORD=SCALE for every fader not at 1."""
    return "\n".join(f"{w}={v:g}" for w, v in zip(words, values) if w and v is not None and float(v) != 1.0)


def reweights_in(targets_text: str | None, text: str | None) -> str:
    """The reweight field with the lines whose words are in no target prompt dropped (the targets
    changed under them); text that cannot be read is left as it is, for the edit to report."""
    try:
        given = parse_reweights(text) or {}
    except AppInputError:
        return text or ""
    present = set(fader_words(targets_text, limit=10**6))
    kept = {w: v for w, v in given.items() if all(part.strip(string.punctuation).lower() in present for part in w.split())}
    return "\n".join(f"{w}={v:g}" for w, v in kept.items())


def fader_values(words: list[str], text: str | None) -> list[float]:
    """Each word's scale as the reweight field gives it (1 where it says nothing, or cannot be read),
    clipped to the faders' range."""
    try:
        given = {w.lower(): v for w, v in (parse_reweights(text) or {}).items()}
    except AppInputError:
        given = {}
    low, high = FADER_RANGE
    return [min(max(given.get(w, 1.0), low), high) for w in words]
