"""Writing results so that a run that dies leaves nothing half-written and loses nothing finished.

Each file is written into a hidden staging folder beside the output folder and moved into the
output folder (one atomic rename) as soon as it is complete: an edit is on disk before its grid and
attention pictures are drawn, and a file is never seen half-written. ``run.json`` is written last
and marks a complete folder (``edit_dataset`` resumes on it). The commands create the staging
folder before they load a model, so an output folder that cannot be written is refused before the
work, not after it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from PIL import Image


class OutputError(OSError):
    """The output folder cannot be used; the message says why and what to do."""


def _refuse_file(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder: choose another output folder")


def _cannot(out: Path, folder: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or type(exc).__name__
    return OutputError(f"--out {out}: cannot create a folder in {folder} ({reason}); choose an output folder you can write to")


def check_writable(out: Path) -> None:
    """Raise OutputError unless files can be written inside ``out``, checked by doing: ``out``
    (and its parents) are created when missing, and a staging folder is made in it and removed.

    Permission bits are not enough (``os.access`` says yes to root for /proc or a read-only mount).
    ``out`` stays created: the commands that call this write into it next.
    """
    out = Path(out).absolute()
    _refuse_file(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tempfile.mkdtemp(prefix=".probe-", dir=out))
    except OSError as exc:
        raise _cannot(out, out, exc) from None


class PartialOutputError(OutputError):
    """Some outputs were written, then one could not be made; the message names what was kept and
    what failed."""


class StagedOutput:
    """A context manager that writes output files into ``out``, each published (renamed into
    place) as soon as it is written.

    Use ``path(name)`` + ``publish(name)`` for a file written by other code, or
    ``save_image``/``save_json``; ``published`` lists the final paths written so far. ``out`` is
    created with the first file; a block that fails keeps what it already published.
    """

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.staging: Path | None = None
        self.published: list[Path] = []

    def __enter__(self) -> "StagedOutput":
        """Create the staging folder beside ``out`` (its parents too): an output folder that cannot
        be written is refused here, before any work, with OutputError."""
        _refuse_file(self.out.absolute())
        parent = self.out.absolute().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=parent))
        except OSError as exc:
            raise _cannot(self.out, parent, exc) from None
        return self

    def path(self, name: str) -> Path:
        """Where to write the output called ``name`` before ``publish(name)`` (in the staging folder)."""
        assert self.staging is not None, "use StagedOutput as a context manager"
        return self.staging / name

    def publish(self, name: str) -> Path:
        """Move the finished file ``name`` from the staging folder into ``out``; returns its path."""
        self.out.mkdir(parents=True, exist_ok=True)
        target = self.out / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(self.path(name), target)
        self.published.append(target)
        return target

    def save_image(self, name: str, image: Image.Image) -> Path:
        """Write ``image`` as the PNG ``name`` and publish it; returns its final path."""
        image.save(self.path(name), format="PNG")
        return self.publish(name)

    def save_json(self, name: str, data: dict) -> Path:
        """Write ``data`` as the JSON file ``name`` and publish it; returns its final path."""
        self.path(name).write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        return self.publish(name)

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.staging is not None
        shutil.rmtree(self.staging, ignore_errors=True)
