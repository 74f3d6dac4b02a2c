"""The web app's work without the web: one loaded model, one job on it at a time, an inversion
cache (invert once, edit many), a Stop per browser session, and each edit's files written into
the app's own output folder. ``pipelines.app`` puts a page and an API on it.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipelines.app_inputs import AppInputError

log = logging.getLogger(__name__)

Report = Callable[[str, int, int], None]  # (stage, steps done, steps in the stage)


class Stopped(RuntimeError):
    """Stop was pressed: the job ended between two steps; the message says where."""


@dataclass
class EditRequest:
    """One edit as the page or the API asks for it (text already read into options)."""

    photo: str
    source: str
    targets: list[str]
    mode: str = "auto"
    cross_replace: object = 0.8
    self_replace: object = 0.4
    blend: tuple[list[str], list[str]] | None = None
    reweight: dict[str, float] | None = None
    method: str = "null-text"
    steps: int = 50
    inner_steps: int = 10
    guidance: float = 7.5
    seed: int = 0
    fixed_point_steps: int | None = None
    fixed_point_anchor: float = 0.0
    prox: str | None = None
    prox_quantile: float = 0.75
    latent_guard: int = 0


@dataclass
class EditOutcome:
    """The files one edit wrote (all inside the app's output folder) and a line for the page."""

    folder: Path
    grid: Path
    reconstruction: Path
    edits: list[tuple[Path, str]]
    attention: list[tuple[Path, str]]
    files: list[Path]
    inversion_reused: bool
    status: str
    seconds: dict = field(default_factory=dict)


def _whole(value, what: str) -> int:
    number = float(value)
    if not number.is_integer():
        raise AppInputError(f"{what} must be a whole number, not {value}.")
    return int(number)


class EditSession:
    """Edits photos on one pipeline, one job at a time, writing into ``out_dir``.

    ``out_dir/inversions`` caches inversions (keyed on photo, prompt, model and settings), so a
    second edit of the same photo and source prompt runs only the sampler; ``out_dir/edits/<id>``
    holds each edit's pictures and run.json.
    """

    def __init__(self, pipe, out_dir: str | Path, max_bytes: int, max_pixels: int):
        self.pipe = pipe
        self.out_dir = Path(out_dir).resolve()
        self.cache_dir = self.out_dir / "inversions"
        self.edits_dir = self.out_dir / "edits"
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._model_lock = threading.Lock()
        self._stops: dict[str, threading.Event] = {}
        self._stops_lock = threading.Lock()
        self._ids = itertools.count(1)

    def stop(self, client: str) -> bool:
        """Ask the running job of ``client`` (a browser session) to end at its next step.
        Returns whether one was running."""
        with self._stops_lock:
            event = self._stops.get(client)
        if event is None:
            return False
        event.set()
        return True

    def check_photo(self, photo: str | Path | None) -> Path:
        """The uploaded file, if it is one within the byte cap (its pixels are checked on loading)."""
        if photo is None or not str(photo).strip():
            raise AppInputError("Upload a photo first (or pick one of the examples below the inputs).")
        path = Path(photo)
        if not path.is_file():
            raise AppInputError("The photo did not arrive: upload it again.")
        size = path.stat().st_size
        if size > self.max_bytes:
            raise AppInputError(f"The photo is {size / 1e6:.1f} MB, over this app's limit of "
                                f"{self.max_bytes / 1e6:.1f} MB: upload a smaller file.")
        return path

    def run(self, request: EditRequest, client: str = "", report: Report | None = None) -> EditOutcome:
        """Invert (or reuse the cached inversion of) the photo, edit it, and write the files.

        Raises:
            AppInputError, EditSpecError, ImageInputError, PromptError, ValueError: a bad input,
                found before any denoising. Stopped: ``stop(client)`` was called during the job.
        """
        import torch

        from data.images import ImageInputError
        from editing import EditSpec, edit
        from editing.edit import check_prompts
        from models.codec import tokenizers
        from inversion import invert
        from pipelines.edit_real import prepare_photo

        path = self.check_photo(request.photo)
        spec = EditSpec(prompts=[request.source.strip(), *request.targets], mode=request.mode,
                        cross_replace_steps=request.cross_replace, self_replace_steps=request.self_replace,
                        reweight=request.reweight, blend_words=request.blend, prox=request.prox,
                        prox_quantile=request.prox_quantile, latent_guard=_whole(request.latent_guard, "Latent guard"))
        check_prompts(tokenizers(self.pipe), spec)
        steps, inner = _whole(request.steps, "Steps"), _whole(request.inner_steps, "Inner steps")
        seed = _whole(request.seed, "Seed")
        fixed_steps = None if request.fixed_point_steps is None else _whole(request.fixed_point_steps, "Fixed-point steps")
        try:
            image, shown = prepare_photo(self.pipe, path, "auto", max_pixels=self.max_pixels)  # whole photo, its ratio
        except ImageInputError as exc:
            raise ImageInputError(str(exc).replace(str(path), "The photo")) from None

        stop = threading.Event()
        with self._model_lock:
            with self._stops_lock:
                self._stops[client] = stop
            try:
                def step(stage: str, done: int, total: int) -> None:
                    if stop.is_set():
                        raise Stopped(f"Stopped during {stage}, after step {done} of {total}: nothing was "
                                      "kept. Press Edit to start again.")
                    if report is not None:
                        report(stage, done, total)

                torch.manual_seed(seed)
                started = time.perf_counter()
                inv = invert(self.pipe, image, spec.prompts[0], method=request.method, num_steps=steps,
                             guidance_scale=request.guidance, num_inner_steps=inner, progress=False,
                             cache_dir=self.cache_dir, on_step=step, size=None, fixed_point_steps=fixed_steps,
                             fixed_point_anchor=request.fixed_point_anchor)
                inverted = time.perf_counter()
                result = edit(self.pipe, spec, inversion=inv, return_attention=True, progress=False,
                              on_step=lambda done, total: step("editing", done, total))
                seconds = {"inversion": inverted - started, "edit": time.perf_counter() - inverted}
            finally:
                with self._stops_lock:
                    if self._stops.get(client) is stop:
                        del self._stops[client]
        return self._write(image, inv, result, spec, request, seconds, shown)

    def _write(self, image, inv, result, spec, request: EditRequest, seconds: dict, shown=None) -> EditOutcome:
        from editing.visualize import attention_maps
        from pipelines.edit_real import RealEdit, write_outputs
        from pipelines.outputs import StagedOutput

        # time, count and a random part: unique also when two apps share the folder
        folder = self.edits_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self._ids)}-{secrets.token_hex(3)}"
        parameters = {k: v for k, v in vars(request).items() if k not in ("photo", "method")}
        parameters["inversion"] = request.method  # named as edit_real's run.json names it (and scoring reads it)
        parameters["model"] = str(self.pipe.name_or_path)
        rounded = {k: round(v, 3) for k, v in seconds.items()}
        write_outputs(folder, RealEdit(image, inv, result, seconds, original_size=shown), spec, parameters, rounded)
        attention = []  # (file, caption): one picture per token of each prompt, for the page's gallery
        with StagedOutput(folder) as staged:
            for k in range(len(spec.prompts)):
                who = "source" if k == 0 else f"edit {k}"
                for j, (token, picture) in enumerate(attention_maps(result, k)):
                    staged.save_image(f"token_{k}_{j:02d}.png", picture)
                    attention.append((f"token_{k}_{j:02d}.png", f"{who}: {token}"))
        reused = bool(inv.stats.get("cache_hit"))
        how = (f"Inversion reused from the cache ({inv.method}, {inv.num_steps} steps)" if reused else
               f"Inverted in {seconds['inversion']:.1f} s ({inv.method}, {inv.num_steps} steps)")
        status = f"{how}; edited in {seconds['edit']:.1f} s. Files: {folder}"
        log.info(status)
        files = [folder / n for n in ["run.json", "grid.png", "input.png", "reconstruction.png"]]
        files += [folder / f"edit_{k}.png" for k in range(1, len(spec.prompts))]
        files += [folder / "attention_source.png"]
        files += [folder / f"attention_edit_{k}.png" for k in range(1, len(spec.prompts))]
        return EditOutcome(
            folder=folder,
            grid=folder / "grid.png",
            reconstruction=folder / "reconstruction.png",
            edits=[(folder / f"edit_{k}.png", p) for k, p in enumerate(spec.prompts[1:], start=1)],
            attention=[(folder / name, caption) for name, caption in attention],
            files=[f for f in files if f.is_file()],
            inversion_reused=reused,
            status=status,
            seconds=seconds,
        )
