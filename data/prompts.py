"""Prompts as users type them: any whitespace (line breaks, tabs, carriage returns, non-breaking
spaces, runs of spaces) becomes one plain space, so that a prompt pasted from an editor counts its
words, matches its words and draws its label the same way as one typed on a line.

Every entry point (the commands, manifests, the Python API and the web app) reaches the model
through ``editing.EditSpec`` or ``inversion.invert``, and both normalise here; the user is told once
per prompt, with ``logging``.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def normalize_prompt(text: str) -> str:
    """``text`` with every run of whitespace (any Unicode space, tab or line break) replaced by
    one space and none at either end; a non-string comes back unchanged for the caller to refuse."""
    if not isinstance(text, str):
        return text
    return " ".join(text.split())


def normalized_prompt(text: str, what: str = "prompt") -> str:
    """``text`` normalised (see ``normalize_prompt``), with a warning naming ``what`` ("the source
    prompt", say) when its inside changed (not when spaces were only trimmed from its ends)."""
    clean = normalize_prompt(text)
    if isinstance(text, str) and clean != text.strip():
        log.warning("%s %r held line breaks, tabs or repeated spaces: it is used as %r", what, text, clean)
    return clean
