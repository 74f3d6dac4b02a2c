"""Edit a real photo from the shell:

    python -m pipelines.edit_real photo.jpg --src "a cat sitting on a bench" \\
        --tgt "a dog sitting on a bench" --out results/

Inverts the photo (null-text inversion by default), then edits it with Prompt-to-Prompt, and
writes input.png, reconstruction.png, edit_1.png …, grid.png, attention_*.png (with
--attention) and run.json into --out. The photo keeps its aspect ratio (--size auto, the default):
it is resized to about the model's native area with nothing cropped, and --original-size also
writes each edit at the photo's own pixel size.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from models.names import DEFAULT_MODEL
from pipelines.cli import (
    OneLineParser,
    UsageError,
    add_edit_options,
    add_inversion_options,
    add_size_options,
    check_edit_args,
    check_folder_option,
    default_out,
    parse_crop,
    parse_size_option,
    quiet_libraries,
    run_cli,
    spec_from_options,
    versions,
)

log = logging.getLogger(__name__)
PROG = "python -m pipelines.edit_real"


@dataclass
class RealEdit:
    """Everything one photo edit produced: the input as the model saw it, the inversion, the
    edit result, seconds per stage, and ``original_size``, the (W, H) of the part of the photo
    that was edited (the whole photo under --size auto)."""

    input_image: object
    inversion: object
    result: object
    seconds: dict = field(default_factory=dict)
    original_size: tuple[int, int] | None = None


def prepare_photo(pipe, photo, size="auto", crop="center", max_pixels: int | None = None):
    """The photo as the model will see it, and the (W, H) of the part of the photo it shows.

    ``size``: "auto" (the photo's ratio at the model's native area, nothing cropped), a side N or
    (W, H) (centre-cropped to that ratio); ``crop``: offsets cut off first (see ``data.images``);
    ``max_pixels``: refuse larger photos before decoding (default ``data.images.MAX_PIXELS``).

    Raises:
        ImageInputError: the photo cannot be read. SizeError: the size does not suit the model.
    """
    from data.images import MAX_PIXELS, crop_to_ratio, load_image, load_photo
    from models.loading import working_size

    whole = load_photo(photo, crop=crop, max_pixels=max_pixels or MAX_PIXELS)
    wh = working_size(pipe, whole.size, size)
    shown = whole.size if size == "auto" else crop_to_ratio(whole, *wh).size
    return load_image(whole, size=wh, keep_ratio=size == "auto"), shown


def run_real_edit(pipe, photo, spec, *, method="null-text", steps=50, guidance=7.5, inner_steps=10,
                  crop="center", cache_dir=None, attention=False, progress=True, size="auto",
                  fixed_point_steps=None, fixed_point_anchor=0.0) -> RealEdit:
    """Invert ``photo`` and edit it as ``spec`` says, on an already loaded pipeline, at the
    working size ``size`` asks for (see ``prepare_photo``); the inversion options are
    ``inversion.invert``'s."""
    from editing import edit
    from editing.edit import check_prompts
    from models.codec import tokenizers
    from inversion import invert

    check_prompts(tokenizers(pipe), spec)  # before the inversion, which is the long part
    image, shown = prepare_photo(pipe, photo, size, crop)
    started = time.perf_counter()
    inv = invert(pipe, image, spec.prompts[0], method=method, num_steps=steps, guidance_scale=guidance,
                 num_inner_steps=inner_steps, progress=progress, cache_dir=cache_dir, size=None,
                 fixed_point_steps=fixed_point_steps, fixed_point_anchor=fixed_point_anchor)
    inverted = time.perf_counter()
    result = edit(pipe, spec, inversion=inv, return_attention=attention, progress=progress)
    seconds = {"inversion": inverted - started, "edit": time.perf_counter() - inverted}
    return RealEdit(image, inv, result, seconds, original_size=shown)


def edit_real_photo(photo, src: str, tgts, *, model=DEFAULT_MODEL, pipe=None,
                    inversion="null-text", steps=50, guidance=7.5, inner_steps=10, cross_replace=0.8,
                    self_replace=0.4, reweight=None, blend=None, mode="auto", crop="center", seed=0,
                    device=None, dtype=None, cache_dir=None, attention=False, progress=True, size="auto",
                    fixed_point_steps=None, fixed_point_anchor=0.0, prox=None, prox_quantile=0.75, latent_guard=0):
    """Edit a photo from Python (a notebook), as the command does, without writing files.

    Args:
        photo: a path or PIL image. src: the prompt describing it. tgts: a target prompt or a list.
        pipe: an already loaded pipeline (else ``model`` is loaded on ``device`` in ``dtype``).
        size: "auto" (the photo's aspect ratio, nothing cropped), a side N or (W, H).
        inversion: "null-text", "negative-prompt", "ddim", "direct" or "fixed-point".
        prox, prox_quantile, latent_guard: proximal guidance and the latent guard (``EditSpec``).
        Other keywords: as the command's options (``blend`` is (source words, target words)).

    Returns:
        ``editing.EditResult``: ``images`` holds the reconstruction first, then one image per target.
    """
    import torch

    from editing import EditSpec
    from models.loading import load_pipeline

    torch.manual_seed(seed)
    spec = EditSpec(prompts=[src, *([tgts] if isinstance(tgts, str) else tgts)], mode=mode,
                    cross_replace_steps=cross_replace, self_replace_steps=self_replace, reweight=reweight,
                    blend_words=blend, prox=prox, prox_quantile=prox_quantile, latent_guard=latent_guard)
    pipe = pipe if pipe is not None else load_pipeline(model, device=device, dtype=dtype)
    return run_real_edit(pipe, photo, spec, method=inversion, steps=steps, guidance=guidance,
                         inner_steps=inner_steps, crop=crop, cache_dir=cache_dir, attention=attention,
                         progress=progress, size=size, fixed_point_steps=fixed_point_steps,
                         fixed_point_anchor=fixed_point_anchor).result


def write_outputs(out, run: RealEdit, spec, parameters: dict, seconds: dict, reconstruction: bool = True,
                  extra: dict | None = None, original_size: bool = False) -> list[Path]:
    """Write the pictures and run.json of one edit into ``out`` (staged, nothing half-written);
    ``extra`` adds top-level fields to run.json.

    Returns the published file paths.
    """
    from pipelines.outputs import StagedOutput

    with StagedOutput(out) as staged:
        fill_outputs(staged, run, spec, parameters, seconds, reconstruction, extra, original_size)
    return staged.published


def fill_outputs(staged, run: RealEdit, spec, parameters: dict, seconds: dict, reconstruction: bool = True,
                 extra: dict | None = None, original_size: bool = False) -> None:
    """Write the pictures and run.json of one edit into an open ``StagedOutput``, each file
    published as soon as it is written: the input, reconstruction and edits first, then the grid
    and the attention pictures, then run.json, which marks the folder complete. ``original_size``
    also writes each edit resized (bicubic) to ``run.original_size`` as edit_N_original.png.

    Raises:
        PartialOutputError: a picture could not be made; the edits are on disk, the other pictures
            too, run.json is not (the folder is incomplete), and the message names what failed.
    """
    from PIL import Image

    from editing import attention_pictures
    from editing.visualize import captioned, enlarged, grid
    from pipelines.outputs import PartialOutputError

    result = run.result
    out = staged.out
    started = time.perf_counter()
    images = []
    if run.input_image is not None:
        images.append(("input.png", run.input_image, "input"))
    first = "reconstruction.png" if reconstruction else "source.png"
    images.append((first, result.images[0], ("reconstruction: " if reconstruction else "") + spec.prompts[0]))
    for k, (image, prompt) in enumerate(zip(result.images[1:], spec.prompts[1:]), start=1):
        images.append((f"edit_{k}.png", image, prompt))
    for name, image, _ in images:
        staged.save_image(name, image)
        if name.startswith("edit_") and original_size and run.original_size is not None:
            staged.save_image(name.replace(".png", "_original.png"),
                              image.resize(tuple(run.original_size), Image.Resampling.BICUBIC))

    pictures = [("grid.png", lambda: grid([captioned(enlarged(image), label) for _, image, label in images]))]
    if result.attention is not None:
        pictures += [("attention_source.png", lambda: attention_pictures(result, 0))]
        pictures += [(f"attention_edit_{k}.png", lambda k=k: attention_pictures(result, k))
                     for k in range(1, len(spec.prompts))]
    failed = []
    for name, draw in pictures:
        try:
            staged.save_image(name, draw())
        except Exception as exc:  # a picture of the edit must not cost the edit itself
            log.debug("could not write %s", name, exc_info=True)
            failed.append(f"{name} ({type(exc).__name__}: {exc})")
    if failed:
        kept = ", ".join(p.name for p in staged.published)
        raise PartialOutputError(f"{out}: wrote {kept}, but could not make {'; '.join(failed)}; "
                                 "the edits are complete, run.json was not written")
    names = sorted(p.name for p in staged.published) + ["run.json"]
    record = {
        "parameters": parameters,
        "prompts": spec.prompts,
        "mode": spec.resolved_mode(),
        "size": {"working": list(result.images[0].size),
                 "photo": list(run.original_size) if run.original_size is not None else None},
        "versions": versions(),
        "seconds": {**seconds, "write": round(time.perf_counter() - started, 3)},
        "unet_calls": {
            "inversion_forward": run.inversion.stats.get("unet_forward", 0) if run.inversion else 0,
            "inversion_backward": run.inversion.stats.get("unet_backward", 0) if run.inversion else 0,
            "edit": result.stats.get("unet_calls", 0),
            "attention_explicit": result.stats.get("explicit_attention_calls", 0),
            "attention_fused": result.stats.get("fused_attention_calls", 0),
        },
        "outputs": [str(Path(out) / n) for n in names],
    }
    if run.inversion is not None:
        from eval.metrics import psnr

        value = psnr(result.images[0], run.input_image)
        record["inversion"] = {
            "method": run.inversion.method,
            "cache_hit": bool(run.inversion.stats.get("cache_hit")),
            "reconstruction_psnr_db": None if math.isinf(value) else round(value, 3),
            "latent_error": run.inversion.stats.get("latent_error"),
            "batch_size": run.inversion.stats.get("batch_size", 1),
        }
    staged.save_json("run.json", {**record, **(extra or {})})


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photo", help="the photo to edit (PNG, JPEG, WebP, …)")
    add_edit_options(parser)
    add_inversion_options(parser)
    add_size_options(parser)
    parser.add_argument("--crop", default="center",
                        help="LEFT,RIGHT,TOP,BOTTOM pixel offsets cut off the photo first ('center', the default: none)")
    parser.add_argument("--cache-dir", default=None, help="folder of cached inversions (invert once, edit many)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command; returns its exit code."""
    args = build_parser().parse_args(argv)  # numbers are checked here, as they are parsed

    def go() -> int:
        from data.images import load_image
        from pipelines.outputs import StagedOutput

        # everything a user can get wrong is checked first, with light imports only
        options = check_edit_args(args)
        crop = parse_crop(args.crop)
        size = parse_size_option(args.size)
        if args.cache_dir is not None:
            check_folder_option(args.cache_dir, "--cache-dir")
        if not args.photo.strip():
            raise UsageError("the photo path is empty: give a photo file (PNG, JPEG, WebP, …)")
        load_image(args.photo, size=8, crop=crop)  # a bad photo fails before the model loads
        args.out = args.out or default_out(Path(args.photo).stem or "photo")
        with StagedOutput(args.out) as staged:  # an output folder that cannot be written stops here
            quiet_libraries(args.quiet)
            import torch

            from models.loading import load_pipeline

            spec = spec_from_options([args.src, *args.tgt], options)
            torch.manual_seed(args.seed)
            started = time.perf_counter()
            pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
            loaded = time.perf_counter() - started
            run = run_real_edit(pipe, args.photo, spec, method=args.inversion, steps=args.steps,
                                guidance=args.guidance, inner_steps=args.inner_steps, crop=crop,
                                cache_dir=args.cache_dir, attention=args.attention, progress=not args.quiet,
                                size=size, fixed_point_steps=args.fixed_point_steps,
                                fixed_point_anchor=args.fixed_point_anchor)
            seconds = {"load_model": round(loaded, 3), **{k: round(v, 3) for k, v in run.seconds.items()}}
            fill_outputs(staged, run, spec, vars(args), seconds, original_size=args.original_size)
        print(f"wrote {len(staged.published)} files to {args.out}: grid.png shows input | reconstruction | edits")
        return 0

    return run_cli(PROG, go)


if __name__ == "__main__":
    sys.exit(main())
