"""Writing results so that a run that dies leaves nothing half-written where the user looks.

Files are written into a hidden staging folder beside the output folder and moved in only when
the run succeeds (a folder rename when the output folder is new, else one atomic rename per file).
The commands create the staging folder before they load a model, so an output folder that cannot
be written is refused before the work, not after it.
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


class StagedOutput:
    """A context manager collecting output files, published into ``out`` only on success.

    Use ``path(name)`` for a file to write, or ``save_image``/``save_json``; ``published`` lists
    the final paths once the block has exited without error.
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
        """Where to write the output called ``name`` (inside the staging folder)."""
        assert self.staging is not None, "use StagedOutput as a context manager"
        return self.staging / name

    def save_image(self, name: str, image: Image.Image) -> None:
        image.save(self.path(name), format="PNG")

    def save_json(self, name: str, data: dict) -> None:
        self.path(name).write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.staging is not None
        if exc_type is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        names = sorted(p.name for p in self.staging.iterdir())
        if not self.out.exists():
            os.replace(self.staging, self.out)
        else:
            for name in names:
                target = self.out / name
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(self.staging / name, target)
            self.staging.rmdir()
        self.published = [self.out / name for name in names]
