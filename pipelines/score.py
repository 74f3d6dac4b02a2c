"""Score every edit in a results folder:

    python -m pipelines.score RESULTS_DIR [--manifest FILE | --pie-bench ROOT] --out REPORT_DIR

A result is any folder holding a ``run.json`` written by ``pipelines.edit_real`` (or the dataset
command): its ``input.png`` (or ``source.png``) is compared with each ``edit_K.png``. The item id is
the folder's name; masks and edit types come from PIE-Bench's mapping file or a JSONL manifest
(``{"id": ..., "edit_type": ..., "mask": [RLE pairs] | "mask.png"}``). Writes ``scores.csv``,
``summary.md`` and ``plot_*.png`` into REPORT_DIR; rows already in its scores.csv are kept and
not scored again.

A damaged result folder (run.json unreadable, not JSON, not an object or without its prompts; an
image missing, truncated or unreadable, or an edit of another size than its input) is skipped with
one line on stderr naming it and the reason; the others are scored, and summary.md lists what was
skipped. Exit status: 0 when every result folder was scored, 1 when some were skipped and the
others scored, 2 when nothing could be scored (or an option is wrong).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from eval.report import METRICS, NEEDS_MODEL
from pipelines.cli import (
    OneLineParser,
    UsageError,
    check_file_option,
    check_folder_option,
    check_model_option,
    quiet_libraries,
    run_cli,
)

PROG = "python -m pipelines.score"
CLIP_MODEL = "openai/clip-vit-large-patch14"
DINO_MODEL = "facebook/dino-vitb8"
MODEL_OPTION = {"clip": "--clip-model", "dino": "--dino-model", "lpips": "--lpips-backbone"}


@dataclass
class Edit:
    """One edited image to score."""

    id: str
    method: str
    target: int
    source: Path
    edited: Path
    prompt: str
    edit_type: str
    mask: np.ndarray | None


def method_of(run: dict) -> str:
    """A result's method label: run.json's "method" if set, else "<inversion>+p2p" ("fixed-point-anchor"
    for fixed-point with DCI's anchor), with "+prox" and "+guard" when proximal guidance and the
    latent guard were on ("generated+p2p" for an edit of a generated image)."""
    if run.get("method"):
        return str(run["method"])
    parameters = run.get("parameters") or {}
    inversion = parameters.get("inversion")
    if not inversion:
        return "generated+p2p"
    label = f"{inversion}-anchor" if inversion == "fixed-point" and parameters.get("fixed_point_anchor") else inversion
    return (f"{label}+p2p" + ("+prox" if parameters.get("prox") else "")
            + ("+guard" if parameters.get("latent_guard") else ""))


@dataclass
class Skipped:
    """A result folder that could not be scored, and why (one line)."""

    folder: Path
    reason: str


class DamagedResult(Exception):
    """A result folder cannot be scored; the message is the reason, naming the file."""


@dataclass
class Annotation:
    """What a mapping file or manifest says about an item: its edit type, its edit mask (1 =
    edited, or None), and the photo PIE-Bench stores for it (None for a manifest)."""

    edit_type: str
    mask: np.ndarray | None
    photo: Path | None = None


def _with_border(mask: np.ndarray) -> np.ndarray:
    mask = np.array(mask, dtype=np.uint8)
    mask[0, :] = mask[-1, :] = 1
    mask[:, 0] = mask[:, -1] = 1
    return mask


def load_masks(manifest: Path | None, pie_root: Path | None, compat: bool) -> dict[str, Annotation]:
    """id → ``Annotation`` from either source.

    By default an empty mask list means no edit region (the whole image is background). With
    ``compat`` every mask, an empty one included, gets the one-pixel image border marked as
    edited, as PIE-Bench's evaluator does.

    Raises:
        ManifestError: a manifest line is not UTF-8, not a JSON object, lacks its id or has a
            field of the wrong type (the message names the line).
        UsageError: a line's mask cannot be decoded or read.
    """
    out: dict[str, Annotation] = {}
    if pie_root is not None:
        from data.pie_bench import EDIT_TYPES, load_mapping

        for item in load_mapping(pie_root):
            mask = item.mask(border=True) if compat else (item.mask() if item.mask_rle else None)
            out[item.id] = Annotation(f"{item.edit_type} {EDIT_TYPES.get(item.edit_type, '')}".strip(), mask, item.image)
    if manifest is not None:
        from data.manifest import check_fields, manifest_lines
        from data.pie_bench import ManifestError, decode_mask

        for where, entry in manifest_lines(manifest):  # UTF-8, JSON objects; else one line naming the line
            if "id" not in entry:
                raise ManifestError(f"{where}: missing id (each line needs the id of a result folder)")
            check_fields(entry, where)  # id, edit_type, mask (and any other field) of the right type
            try:
                mask = entry.get("mask")
                if isinstance(mask, list):
                    mask = decode_mask(mask, border=compat)
                elif isinstance(mask, str):
                    mask = (np.asarray(Image.open(manifest.parent / mask).convert("L")) > 127).astype(np.uint8)
                    mask = _with_border(mask) if compat else mask
                out[str(entry["id"])] = Annotation(str(entry.get("edit_type", "all")), mask)
            except (ValueError, KeyError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
                raise UsageError(f"{where}: cannot use this line ({exc})") from None
    return out


def scan_results(results: Path, masks: dict[str, Annotation], compat: bool = False) -> tuple[list[Edit], list[Skipped]]:
    """Every (result folder, target) pair under ``results``, and the folders that cannot be scored.

    The source photo is the folder's ``input.png`` (or ``source.png``); with ``compat`` and a
    PIE-Bench item it is PIE-Bench's stored photo, read as the evaluator reads it (no EXIF
    rotation), which must exist and have the edit's size. A folder whose run.json or images are
    damaged is skipped whole, with the reason (see ``folder_edits``).

    Raises:
        UsageError: in compat mode, a stored PIE-Bench photo is missing or of another size.
    """
    edits: list[Edit] = []
    skipped: list[Skipped] = []
    for run_file in sorted(results.rglob("run.json")):
        try:
            edits += folder_edits(run_file, masks, compat)
        except DamagedResult as exc:
            skipped.append(Skipped(run_file.parent, " ".join(str(exc).split())))
    return edits, skipped


_JSON_KINDS = {list: "a JSON list", str: "a JSON string", int: "a JSON number", float: "a JSON number",
               bool: "a JSON true/false", type(None): "JSON null"}


def read_run(run_file: Path) -> dict:
    """A result's run.json as an object with its prompts (the source, then at least one target).

    Raises:
        DamagedResult: it cannot be read, is not JSON or not an object, or lacks usable prompts.
    """
    try:
        text = run_file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise DamagedResult(f"run.json cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DamagedResult(f"run.json is not UTF-8 text (byte {exc.start + 1} is 0x{exc.object[exc.start]:02x})") from None
    if not text.strip():
        raise DamagedResult("run.json is empty")
    try:
        run = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DamagedResult(f"run.json is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError):  # a number of over 4300 digits, nesting too deep
        raise DamagedResult("run.json is not JSON that can be read") from None
    if not isinstance(run, dict):
        raise DamagedResult(f"run.json is {_JSON_KINDS.get(type(run), 'JSON')}, not an object")
    prompts = run.get("prompts")
    if prompts is None:
        raise DamagedResult('run.json has no "prompts" (the source prompt, then the target prompts)')
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise DamagedResult('run.json\'s "prompts" is not a list of prompts (strings)')
    if len(prompts) < 2:
        raise DamagedResult('run.json\'s "prompts" has no target prompt, so there is no edit to score')
    if not isinstance(run.get("parameters") or {}, dict):
        raise DamagedResult('run.json\'s "parameters" is not an object')
    return run


def _picture_size(path: Path, name: str) -> tuple[int, int]:
    """Decode the whole picture (a truncated file fails here, not while scoring); its size."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as picture:
                picture.load()
                return picture.size
    except Exception as exc:  # truncated or damaged data surfaces as OSError, SyntaxError, ValueError, ...
        reason = str(exc) if not isinstance(exc, UnidentifiedImageError) else "not an image file Pillow can read"
        raise DamagedResult(f"{name} cannot be decoded: {reason}") from None


def folder_edits(run_file: Path, masks: dict[str, Annotation], compat: bool = False) -> list[Edit]:
    """The edits of one result folder (the one holding ``run_file``), every picture decoded once.

    Raises:
        DamagedResult: run.json or a picture is damaged or missing, or an edit's size is not its
            input's; the message names the file and the reason.
        UsageError: in compat mode, the stored PIE-Bench photo is missing or of another size.
    """
    folder = run_file.parent
    run = read_run(run_file)
    method = method_of(run)
    source = folder / "input.png" if (folder / "input.png").is_file() else folder / "source.png"
    note = masks.get(folder.name, Annotation("all", None))
    stored = compat and note.photo is not None
    if stored:
        source = note.photo
    elif not source.is_file():
        raise DamagedResult("no input.png (or source.png): the photo the edits are compared with is missing")
    edited = [folder / f"edit_{k}.png" for k in range(1, len(run["prompts"]))]
    if stored and not source.is_file():
        _check_stored_photo(source, edited[0])  # refuses the run: compat mode needs every stored photo
    for path in edited:
        if not path.is_file():
            raise DamagedResult(f"{path.name} is missing (run.json has {len(edited)} target prompts)")
    source_size = _picture_size(source, str(source) if stored else source.name)
    for path in edited:
        size = _picture_size(path, path.name)
        if stored:
            _check_stored_photo(source, path)  # both decode; another size refuses the run, as documented
        elif size != source_size:
            raise DamagedResult(f"{path.name} is {size[0]}×{size[1]} pixels but {source.name} is "
                                f"{source_size[0]}×{source_size[1]}: an edit must have its input's size")
    return [Edit(folder.name, method, k, source, path, prompt, note.edit_type, note.mask)
            for k, (path, prompt) in enumerate(zip(edited, run["prompts"][1:]), start=1)]


def _folders(n: int) -> str:
    return f"{n} result folder" + ("" if n == 1 else "s")


def skipped_markdown(skipped: list[Skipped], total: int) -> str:
    """summary.md's section on the result folders this run could not score ("" when none)."""
    if not skipped:
        return ""
    lines = ["", "## Skipped result folders", "",
             f"Skipped: {len(skipped)} of {_folders(total)} could not be scored and are not in the tables above:", ""]
    lines += [f"- `{s.folder}`: {s.reason}" for s in skipped]
    return "\n".join(lines) + "\n"


def _check_stored_photo(photo: Path, edited: Path) -> None:
    """Compat mode compares PIE-Bench's stored photo with the edit pixel for pixel, as the
    evaluator does: the photo must be there and of the edit's size."""
    if not photo.is_file():
        raise UsageError(f"--pie-bench-compat reads each source photo from PIE-Bench, as its evaluator does, "
                         f"but {photo} is missing: pass the full dataset folder, or score without --pie-bench-compat")
    with Image.open(photo) as a, Image.open(edited) as b:
        if a.size != b.size:
            raise UsageError(f"--pie-bench-compat compares PIE-Bench's {photo} ({a.size[0]}×{a.size[1]}) with "
                             f"{edited} ({b.size[0]}×{b.size[1]}) pixel for pixel, as the evaluator does: edit at "
                             "the dataset's size, or score without --pie-bench-compat")


def _fit(mask: np.ndarray | None, size: tuple[int, int]) -> np.ndarray | None:
    if mask is None or mask.shape[::-1] == size:
        return mask
    return np.asarray(Image.fromarray(mask * 255).resize(size, Image.Resampling.NEAREST)) > 127


def lpips_net(args) -> str:
    """The LPIPS backbone: SqueezeNet in compat mode (the evaluator's), else --lpips-net."""
    return "squeeze" if args.pie_bench_compat else args.lpips_net


def score_edit(edit: Edit, args, wanted=METRICS) -> dict:
    """The ``wanted`` metrics of one edit (NaN where a metric does not apply, e.g. no mask)."""
    from eval import metrics

    src = Image.open(edit.source).convert("RGB")
    dst = Image.open(edit.edited).convert("RGB")
    mask = _fit(edit.mask, src.size)
    compat = args.pie_bench_compat
    nothing_kept = compat and mask is not None and mask.all()  # the evaluator's NaN items
    compute = {
        "clip_whole": lambda: metrics.clip_score([dst], [edit.prompt], model=args.clip_model)[0],
        "clip_edited": lambda: (metrics.clip_score([dst], [edit.prompt], model=args.clip_model, masks=[mask])[0]
                                if mask is not None and mask.any() else math.nan),
        "structure_distance": lambda: metrics.structure_distance(src, dst, model=args.dino_model, compat=compat),
        "psnr": lambda: metrics.psnr(src, dst, mask, compat),
        "lpips": lambda: metrics.lpips(src, dst, net=lpips_net(args), mask=mask, compat=compat,
                                       backbone=args.lpips_backbone),
        "mse": lambda: metrics.mse(src, dst, mask, compat),
        "ssim": lambda: metrics.ssim(src, dst, mask, compat),
    }
    row = {}
    for m in wanted:
        row[m] = math.nan if nothing_kept and m in ("psnr", "lpips", "mse", "ssim") else compute[m]()
    return row


def parse_metrics(text: str | None) -> list[str]:
    """--metrics "psnr,ssim" → ["psnr", "ssim"] (in report order); None → every metric."""
    if text is None:
        return list(METRICS)
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise UsageError(f"--metrics is empty: give a comma-separated choice of {','.join(METRICS)}")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise UsageError(f"--metrics: unknown {', '.join(unknown)}; choose from {','.join(METRICS)}")
    return [m for m in METRICS if m in names]


def check_score_options(args) -> list[str]:
    """Check the scoring options without importing torch (also for ``edit_dataset --score``):
    the metric names and the model options. Returns the chosen metrics."""
    chosen = parse_metrics(args.metrics)
    for option, value in (("--clip-model", args.clip_model), ("--dino-model", args.dino_model)):
        if value is not None:
            check_model_option(value, option, "transformers")
    if args.lpips_backbone is not None and args.lpips_backbone != "random":
        check_file_option(args.lpips_backbone, "--lpips-backbone", "weights file")
    return chosen


def load_models(needed: set[str], chosen: list[str], args) -> None:
    """Load the models the metrics still to score need; a missing one stops the run before any
    scoring, with one line naming it, how to get it, and the --metrics that scores without it."""
    from eval import metrics
    from eval.lpips import MetricModelError

    for kind in ("clip", "dino", "lpips"):
        wanted = [m for m in needed if NEEDS_MODEL.get(m) == kind]
        if not wanted:
            continue
        try:
            metrics.preload(wanted, clip_model=args.clip_model, dino_model=args.dino_model,
                            lpips_net=lpips_net(args), lpips_backbone=args.lpips_backbone)
        except MetricModelError as exc:
            rest = [m for m in chosen if NEEDS_MODEL.get(m) != kind]
            without = (f"To score without it: --metrics {','.join(rest)}" if rest else
                       "PSNR, MSE and SSIM need no model: --metrics psnr,mse,ssim")
            reason = " ".join(str(exc).split())  # one line, whatever the loader said
            raise UsageError(f"{reason} {without} (a later run with the model fills the rest in).") from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # paths stay text until checked: argparse's Path("") would quietly mean the current folder
    parser.add_argument("results", help="folder of edit results (searched recursively for run.json)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--manifest", help="JSONL with id, edit_type, mask per item")
    source.add_argument("--pie-bench", metavar="ROOT", help="PIE-Bench root (mapping_file.json, annotation_images/)")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--pie-bench-compat", action="store_true",
                        help="reproduce PIE-Bench's evaluator conventions (see README)")
    parser.add_argument("--metrics", default=None,
                        help=f"comma-separated metrics to score (default all: {','.join(METRICS)})")
    parser.add_argument("--clip-model", default=CLIP_MODEL, help="CLIP hub id or folder")
    parser.add_argument("--dino-model", default=DINO_MODEL, help="DINO ViT hub id or folder")
    parser.add_argument("--lpips-net", default="alex", choices=["alex", "vgg", "squeeze"])
    parser.add_argument("--lpips-backbone", default=None,
                        help="torchvision ImageNet weights file for the LPIPS net (default: torch.hub's cache)")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command; returns its exit code."""
    args = build_parser().parse_args(argv)

    def go() -> int:
        from eval import report
        from pipelines.outputs import check_writable

        # everything a user can get wrong is checked first, with light imports only
        chosen = check_score_options(args)
        results = check_folder_option(args.results, "RESULTS", must_exist=True)
        manifest = check_file_option(args.manifest, "--manifest", "JSONL file") if args.manifest is not None else None
        pie_bench = None
        if args.pie_bench is not None:
            if not args.pie_bench.strip():
                raise UsageError("--pie-bench is empty: give the PIE-Bench folder (with mapping_file.json)")
            pie_bench = Path(args.pie_bench).expanduser()
        out = check_folder_option(args.out, "--out")
        masks = load_masks(manifest, pie_bench, compat=args.pie_bench_compat)
        edits, skipped = scan_results(results, masks, compat=args.pie_bench_compat)

        def report_skipped() -> None:
            for item in skipped:
                sys.stderr.write(f"{PROG}: skipped {item.folder}: {item.reason}\n")

        if not edits:
            if skipped:
                report_skipped()
                raise UsageError(f"{results}: nothing could be scored: skipped {_folders(len(skipped))} (above)")
            raise UsageError(f"{results}: no run.json with edit_K.png found; point at the --out folder of an edit run")
        check_writable(out)  # by making (and removing) a folder in it
        scores_path = out / "scores.csv"
        rows = report.read_scores(scores_path)
        by_key = {(r["id"], r["method"], str(r["target"])): r for r in rows}
        todo = []  # (edit, its row or None, the chosen metrics that row lacks)
        for edit in edits:
            row = by_key.get((edit.id, edit.method, str(edit.target)))
            missing = [m for m in chosen if row is None or row.get(m) is None]
            if missing:
                todo.append((edit, row, missing))
        quiet_libraries(args.quiet)
        load_models({m for _, _, missing in todo for m in missing}, chosen, args)
        report_skipped()  # after the refusals above, which stay one line
        new = filled = 0
        for n, (edit, row, missing) in enumerate(tqdm(todo, desc="scoring", disable=args.quiet), start=1):
            values = score_edit(edit, args, missing)
            if row is None:
                rows.append({"id": edit.id, "method": edit.method, "target": edit.target, "edit_type": edit.edit_type,
                             "prompt": edit.prompt, **{m: None for m in METRICS}, **values})
                new += 1
            else:
                row.update(values)  # fills in what it lacks, keeps what it has
                filled += 1
            if n % 20 == 0:
                report.write_scores(scores_path, rows)  # a killed run keeps what it scored
        report.write_scores(scores_path, rows)
        report.atomic_write(out / "summary.md", report.summary_markdown(rows, args.pie_bench_compat)
                            + skipped_markdown(skipped, len({e.edited.parent for e in edits}) + len(skipped)))
        pictures = report.plots(rows, out)
        lacking = report.unscored(rows)
        print(f"scored {new} new edits ({len(rows)} in all)" + (f", filled in metrics of {filled} earlier rows" if filled else "")
              + f"; report in {out}: scores.csv, summary.md, {len(pictures)} plots"
              + (f"; not scored yet: {', '.join(lacking)} (rerun with --metrics {','.join(lacking)})" if lacking else "")
              + (f"; skipped {_folders(len(skipped))} (damaged, listed in summary.md)" if skipped else ""))
        return 1 if skipped else 0

    return run_cli(PROG, go)


if __name__ == "__main__":
    sys.exit(main())
