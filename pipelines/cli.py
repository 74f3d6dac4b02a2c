"""What the command-line entry points share: edit options, their parsing into an ``EditSpec``,
quiet library logging, and turning user mistakes into one line on stderr with exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable

from data.manifest import INVERSION_METHODS, PROX_MODES
from data.numbers import LIMITS, parse_number
from models.names import DEFAULT_MODEL

# Everything this module imports at the top is light: a command parses and checks its options
# before torch, diffusers or transformers are imported, so a refusal takes a fraction of a second.


class UsageError(ValueError):
    """A command-line value is malformed; the message says what was expected."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def option_number(text: str, option: str, limits: str):
    """Parse a command-line number with the shared ``LIMITS[limits]``; UsageError names ``option``."""
    return parse_number(text, option, **LIMITS[limits], error=UsageError)


def number_type(limits: str) -> Callable[[str], object]:
    """An argparse ``type=`` for a number with ``LIMITS[limits]`` (argparse names the option)."""

    def convert(text: str):
        try:
            return parse_number(text, "", **LIMITS[limits], error=UsageError)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = limits
    return convert


def _fraction(text: str, what: str) -> float:
    return option_number(text, what, "fraction")


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
        out[word.strip()] = option_number(scale, f"--reweight '{entry}': the scale", "reweight")
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
        raise UsageError(f"--crop '{text}': write 'center' or four pixel offsets LEFT,RIGHT,TOP,BOTTOM (whole numbers ≥ 0)")
    return values


def parse_size_option(text: str, option: str = "--size"):
    """--size: "auto", N or W,H (see ``data.images.parse_size``); a UsageError otherwise."""
    from data.images import SizeError, parse_size

    try:
        return parse_size(text, option)
    except SizeError as exc:
        raise UsageError(str(exc)) from None


def add_size_options(parser: argparse.ArgumentParser, original: bool = True) -> None:
    """--size (and --original-size): the working size of a photo edit."""
    parser.add_argument("--size", default="auto", metavar="auto|N|W,H",
                        help="auto (default): the photo's aspect ratio at the model's native area, nothing cropped; "
                             "N: a centre-cropped N×N square (the papers' setting); W,H: exactly that size "
                             "(centre-cropped to its ratio). Sides are multiples of the model's step (64 for SD)")
    if original:
        parser.add_argument("--original-size", action="store_true",
                            help="also write each edit resized back to the photo's own pixel size (edit_N_original.png)")


def check_folder_option(value, option: str, *, must_exist: bool = False) -> Path:
    """A folder option: not empty, not an existing file (and existing, if ``must_exist``)."""
    text = str(value) if value is not None else ""
    if not text.strip():
        raise UsageError(f"{option} is empty: give a folder")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {text} is a file, not a folder: give a folder")
    if must_exist and not path.is_dir():
        raise UsageError(f"{option} {text}: no such folder")
    return path


def check_file_option(value, option: str, what: str = "file") -> Path:
    """A file option that must exist: not empty, not a folder."""
    text = str(value) if value is not None else ""
    if not text.strip():
        raise UsageError(f"{option} is empty: give a {what}")
    path = Path(text).expanduser()
    if path.is_dir():
        raise UsageError(f"{option} {text} is a folder, not a {what}: give the file itself")
    if not path.is_file():
        raise UsageError(f"{option} {text}: no such {what}")
    return path


def check_model_option(value: str, option: str = "--model", kind: str = "diffusers") -> str:
    """A model option (hub id or local folder): not empty, not a file (a single-file checkpoint
    must first be converted). Whether it loads is the loader's to say."""
    text = str(value)
    if not text.strip():
        raise UsageError(f"{option} is empty: give a hub id or a local {kind} model folder")
    if Path(text).expanduser().is_file():
        hint = (" (convert a single-file checkpoint with `StableDiffusionPipeline.from_single_file(path)."
                "save_pretrained(folder)`)" if kind == "diffusers" else "")
        raise UsageError(f"{option} {text} is a file: give a hub id or a local {kind} model folder{hint}")
    return text


_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?|xpu(:\d+)?)$")


def check_device_option(value: str | None) -> str | None:
    """--device: cpu, mps, cuda, cuda:N (or None for the best available)."""
    if value is not None and not _DEVICE.match(value):
        raise UsageError(f"--device {value!r}: give cpu, cuda, cuda:N or mps (or leave it out for the best available)")
    return value


def add_edit_options(parser: argparse.ArgumentParser) -> None:
    """The options every edit command takes (model, schedule, edit kind, outputs)."""
    parser.add_argument("--src", required=True, help="source prompt: describes the photo")
    parser.add_argument("--tgt", action="append", required=True, help="target prompt (repeat for several)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="hub id (SD 1.x, 2.x, SDXL base; default %(default)s), local diffusers "
                             "folder, 'shapes' (the bundled model trained on flat shapes, offline), or an offline "
                             "random-weight test model: 'tiny', 'tiny-xl' (SDXL-shaped), 'tiny-v' (v-prediction)")
    parser.add_argument("--steps", type=number_type("steps"), default=50, help="DDIM steps, 1…1000 (default 50)")
    parser.add_argument("--guidance", type=number_type("guidance"), default=7.5,
                        help="classifier-free guidance scale, 0…100 (default 7.5)")
    parser.add_argument("--mode", choices=["auto", "replace", "refine"], default="auto",
                        help="replace: word swap; refine: add words; auto: by word count")
    parser.add_argument("--cross-replace", action="append", metavar="F|S,E|WORD=F",
                        help="cross-attention injection: a fraction of steps (0.8), START,END, or WORD=F (repeatable)")
    parser.add_argument("--self-replace", default="0.4", metavar="F|S,E", help="self-attention injection (default 0.4)")
    parser.add_argument("--reweight", action="append", metavar="WORD=SCALE", help="scale a target word's attention (repeatable)")
    parser.add_argument("--blend", action="append", metavar="SRC:TGT", help="local blend: edit only where these words are (repeatable)")
    parser.add_argument("--blend-threshold", type=number_type("blend_threshold"), default=None,
                        help="local blend mask threshold, strictly between 0 and 1 (default: the model's own "
                             "from promptedit.json in its folder, else 0.3)")
    add_guidance_options(parser)
    parser.add_argument("--seed", type=number_type("seed"), default=0, help="random seed, 0…2**64-1 (default 0)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32", "fp64"],
                        help="default fp16 on CUDA, fp32 elsewhere")
    parser.add_argument("--out", default=None, help="output folder (default: outputs/<name>-<date>-<time>)")
    parser.add_argument("--attention", action="store_true", help="also save attention-map pictures")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, only the final line")


def add_guidance_options(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """--prox, --prox-quantile, --latent-guard (``defaults=False``: None, "not given", for commands
    whose per-job settings fill them in)."""
    parser.add_argument("--prox", choices=PROX_MODES, default=None,
                        help="proximal guidance (ProxEdit): threshold ε_c − ε_u at its --prox-quantile before the "
                             "guided step; l0 and l1 are the authors' names (see README). Default off")
    parser.add_argument("--prox-quantile", type=number_type("prox_quantile"), default=0.75 if defaults else None,
                        metavar="Q", help="the quantile of |ε_c − ε_u| over the batch used as the threshold, or −τ "
                                          "for a fixed threshold τ (default 0.75, the authors' PIE-Bench runs)")
    parser.add_argument("--latent-guard", type=number_type("latent_guard"), default=0 if defaults else None,
                        metavar="T", help="below timestep T, put every row back on the inverted trajectory outside "
                                          "the region proximal guidance keeps (without --prox: where l0 at --prox-quantile would; the authors use 400; "
                                          "default 0: off)")


def add_inversion_options(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """--inversion, --inner-steps, --fixed-point-steps, --fixed-point-anchor (``defaults=False``:
    None, "not given")."""
    parser.add_argument("--inversion", choices=INVERSION_METHODS, default="null-text" if defaults else None,
                        help="how the photo is inverted (default null-text; see README: 'Which inversion')")
    parser.add_argument("--inner-steps", type=number_type("inner_steps"), default=10 if defaults else None,
                        help="null-text Adam steps per DDIM step, 0…1000 (default 10)")
    parser.add_argument("--fixed-point-steps", type=number_type("fixed_point_steps"), default=None, metavar="K",
                        help="fixed-point AdamW steps per DDIM step, 0…1000 (default 25, SPDInv's; 5 with an anchor)")
    parser.add_argument("--fixed-point-anchor", type=number_type("fixed_point_anchor"),
                        default=0.0 if defaults else None, metavar="λ",
                        help="fixed-point: DCI's pull of the predicted noise toward the photo's latent "
                             "(its paper: 2; default 0, SPDInv)")


def default_out(name: str) -> str:
    """A fresh output folder under ./outputs for a run called ``name``."""
    import time

    return str(Path("outputs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def check_edit_args(args: argparse.Namespace) -> dict:
    """Check the edit options without importing torch: numbers, windows, words' syntax, model,
    device and output folder. Returns the parsed edit options for ``spec_from_options``."""
    check_model_option(args.model)
    check_device_option(args.device)
    if args.out is not None:
        check_folder_option(args.out, "--out")
    return {
        "mode": args.mode,
        "cross_replace": parse_cross_replace(args.cross_replace),
        "self_replace": parse_steps(args.self_replace, "--self-replace"),
        "reweight": parse_reweight(args.reweight),
        "blend": parse_blend(args.blend),
        "blend_threshold": args.blend_threshold,
        "prox": args.prox,
        "prox_quantile": args.prox_quantile,
        "latent_guard": args.latent_guard,
    }


def spec_from_args(args: argparse.Namespace):
    """Build the ``EditSpec`` the options describe (raises UsageError or EditSpecError)."""
    return spec_from_options([args.src, *args.tgt], check_edit_args(args))


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
                    blend_words=blend, blend_threshold=options["blend_threshold"], prox=options.get("prox"),
                    prox_quantile=options.get("prox_quantile", 0.75), latent_guard=options.get("latent_guard", 0))


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


# (module, class) of every exception that means "the user gave something unusable"
_USER_ERRORS = (
    ("data.images", "ImageInputError"), ("data.images", "SizeError"), ("data.numbers", "NumberError"), ("data.pie_bench", "ManifestError"),
    ("editing.spec", "EditSpecError"), ("eval.lpips", "MetricModelError"), ("inversion", "InversionError"),
    ("inversion", "InversionCacheError"), ("models.codec", "PromptError"), ("models.codec", "NonFiniteError"),
    ("models.loading", "ModelLoadError"),
    ("pipelines.outputs", "OutputError"),
)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean the user gave something unusable (reported without traceback).

    Only from modules already imported: an exception of a module that was never imported cannot
    have been raised, and importing one here (and torch with it) would undo a fast refusal."""
    found: list[type[BaseException]] = [UsageError]
    for module, name in _USER_ERRORS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(getattr(loaded, name, None), type):
            found.append(getattr(loaded, name))
    return tuple(found)


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
