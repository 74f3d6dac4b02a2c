"""What the command-line entry points share: edit options, their parsing into an ``EditSpec``,
quiet library logging, and turning user mistakes into one line on stderr with exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable


class UsageError(ValueError):
    """A command-line value is malformed; the message says what was expected."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def _fraction(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what} '{text}' is not a number: give a fraction of the steps such as 0.8") from None
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{what} {text} is outside [0, 1]: give a fraction of the steps such as 0.8")
    return value


def parse_steps(text: str, what: str):
    """"0.8" → 0.8; "0.2,0.8" → (0.2, 0.8)."""
    parts = text.split(",")
    if len(parts) == 1:
        return _fraction(parts[0], what)
    if len(parts) == 2:
        start, end = (_fraction(p, what) for p in parts)
        if start > end:
            raise UsageError(f"{what} '{text}': start is after end; write START,END with START ≤ END")
        return (start, end)
    raise UsageError(f"{what} '{text}': write a fraction (0.8) or START,END (0.2,0.8)")


def parse_cross_replace(values: list[str] | None):
    """Repeated --cross-replace values: a fraction, START,END, or WORD=FRACTION / WORD=START,END."""
    if not values:
        return 0.8
    plain = [v for v in values if "=" not in v]
    words = [v for v in values if "=" in v]
    if len(plain) > 1:
        raise UsageError("--cross-replace is given twice without a word: give one default, then WORD=FRACTION entries")
    default = parse_steps(plain[0], "--cross-replace") if plain else 0.8
    if not words:
        return default
    schedule = {"default_": default}
    for entry in words:
        word, _, steps = entry.partition("=")
        if not word.strip():
            raise UsageError(f"--cross-replace '{entry}': write WORD=FRACTION, e.g. dog=0.4")
        schedule[word.strip()] = parse_steps(steps, f"--cross-replace {word}")
    return schedule


def parse_reweight(values: list[str] | None) -> dict[str, float] | None:
    """Repeated --reweight WORD=SCALE values."""
    if not values:
        return None
    out = {}
    for entry in values:
        word, sep, scale = entry.partition("=")
        if not sep or not word.strip():
            raise UsageError(f"--reweight '{entry}': write WORD=SCALE, e.g. --reweight fluffy=2")
        try:
            out[word.strip()] = float(scale)
        except ValueError:
            raise UsageError(f"--reweight '{entry}': the scale '{scale}' is not a number") from None
    return out


def parse_blend(values: list[str] | None):
    """Repeated --blend SRC_WORD:TGT_WORD values → (source words, target words)."""
    if not values:
        return None
    source, target = [], []
    for entry in values:
        src, sep, tgt = entry.partition(":")
        if not sep or not src.strip() or not tgt.strip():
            raise UsageError(f"--blend '{entry}': write SOURCE_WORD:TARGET_WORD, e.g. --blend cat:dog")
        source.append(src.strip())
        target.append(tgt.strip())
    return (source, target)


def parse_crop(text: str):
    """"center" or "LEFT,RIGHT,TOP,BOTTOM" pixel offsets."""
    if text == "center":
        return "center"
    parts = text.split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 0:
        raise UsageError(f"--crop '{text}': write 'center' or four pixel offsets LEFT,RIGHT,TOP,BOTTOM")
    return values


def add_edit_options(parser: argparse.ArgumentParser) -> None:
    """The options every edit command takes (model, schedule, edit kind, outputs)."""
    parser.add_argument("--src", required=True, help="source prompt: describes the photo")
    parser.add_argument("--tgt", action="append", required=True, help="target prompt (repeat for several)")
    parser.add_argument("--model", default="CompVis/stable-diffusion-v1-4",
                        help="hub id, local diffusers folder, or 'tiny' (offline test model)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--mode", choices=["auto", "replace", "refine"], default="auto",
                        help="replace: word swap; refine: add words; auto: by word count")
    parser.add_argument("--cross-replace", action="append", metavar="F|S,E|WORD=F",
                        help="cross-attention injection: a fraction of steps (0.8), START,END, or WORD=F (repeatable)")
    parser.add_argument("--self-replace", default="0.4", metavar="F|S,E", help="self-attention injection (default 0.4)")
    parser.add_argument("--reweight", action="append", metavar="WORD=SCALE", help="scale a target word's attention (repeatable)")
    parser.add_argument("--blend", action="append", metavar="SRC:TGT", help="local blend: edit only where these words are (repeatable)")
    parser.add_argument("--blend-threshold", type=float, default=0.3, help="local blend mask threshold (default 0.3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32", "fp64"],
                        help="default fp16 on CUDA, fp32 elsewhere")
    parser.add_argument("--out", default=None, help="output folder (default: outputs/<name>-<date>-<time>)")
    parser.add_argument("--attention", action="store_true", help="also save attention-map pictures")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, only the final line")


def default_out(name: str) -> str:
    """A fresh output folder under ./outputs for a run called ``name``."""
    import time

    return str(Path("outputs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def spec_from_args(args: argparse.Namespace):
    """Build the ``EditSpec`` the options describe (raises UsageError or EditSpecError)."""
    if args.steps < 1:
        raise UsageError(f"--steps {args.steps}: give at least 1 step (the papers use 50)")
    return spec_from_options([args.src, *args.tgt], {
        "mode": args.mode,
        "cross_replace": parse_cross_replace(args.cross_replace),
        "self_replace": parse_steps(args.self_replace, "--self-replace"),
        "reweight": parse_reweight(args.reweight),
        "blend": parse_blend(args.blend),
        "blend_threshold": args.blend_threshold,
    })


def spec_from_options(prompts: list[str], options: dict):
    """The ``EditSpec`` for ``prompts`` from option values as the command line parses them or a
    JSON manifest gives them (lists where the command line has tuples, "SRC:TGT" blends)."""
    from editing import EditSpec

    def steps(value):
        return tuple(value) if isinstance(value, list) else value

    cross = options["cross_replace"]
    cross = {k: steps(v) for k, v in cross.items()} if isinstance(cross, dict) else steps(cross)
    blend = options["blend"]
    if isinstance(blend, str):
        blend = parse_blend([blend])
    return EditSpec(prompts=list(prompts), mode=options["mode"], cross_replace_steps=cross,
                    self_replace_steps=steps(options["self_replace"]), reweight=options["reweight"],
                    blend_words=blend, blend_threshold=options["blend_threshold"])


def quiet_libraries(quiet: bool) -> None:
    """Keep diffusers' and transformers' own warnings and loading bars off the terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")


def versions() -> dict[str, str]:
    """Installed versions of the packages that decide the numbers."""
    out = {"python": sys.version.split()[0]}
    for name in ("promptedit", "torch", "diffusers", "transformers", "accelerate", "safetensors", "pillow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean the user gave something unusable (reported without traceback)."""
    from data.images import ImageInputError
    from data.pie_bench import ManifestError
    from editing import EditSpecError
    from eval.lpips import MetricModelError
    from inversion import InversionCacheError, InversionError
    from models.codec import PromptError
    from models.loading import ModelLoadError
    from pipelines.outputs import OutputError

    return (UsageError, ImageInputError, EditSpecError, PromptError, ModelLoadError, OutputError,
            InversionError, InversionCacheError, ManifestError, MetricModelError)


def run_cli(prog: str, main: Callable[[], int]) -> int:
    """Run ``main``; a user error becomes one line on stderr and exit code 2."""
    try:
        return main()
    except user_errors() as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted; nothing was written to the output folder\n")
        return 130
