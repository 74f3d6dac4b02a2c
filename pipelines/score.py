"""Score every edit in a results folder:

    python -m pipelines.score RESULTS_DIR [--manifest FILE | --pie-bench ROOT] --out REPORT_DIR

A result is any folder holding a ``run.json`` written by ``pipelines.edit_real`` (or the dataset
command): its ``input.png`` (or ``source.png``) is compared with each ``edit_K.png``. The item id is
the folder's name; masks and edit types come from PIE-Bench's mapping file or a JSONL manifest
(``{"id": ..., "edit_type": ..., "mask": [RLE pairs] | "mask.png"}``). Writes ``scores.csv``,
``summary.md`` and ``plot_*.png`` into REPORT_DIR; rows already in its scores.csv are kept and
not scored again.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pipelines.cli import OneLineParser, UsageError, quiet_libraries, run_cli

PROG = "python -m pipelines.score"


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
    """A result's method label: run.json's "method" if set, else "<inversion>+p2p"."""
    if run.get("method"):
        return str(run["method"])
    inversion = (run.get("parameters") or {}).get("inversion")
    return f"{inversion}+p2p" if inversion else "generated+p2p"


def load_masks(manifest: Path | None, pie_root: Path | None, border: bool) -> dict[str, tuple[str, np.ndarray | None]]:
    """id → (edit type, mask [H, W] with 1 = edited, or None) from either source."""
    out: dict[str, tuple[str, np.ndarray | None]] = {}
    if pie_root is not None:
        from data.pie_bench import EDIT_TYPES, load_mapping

        for item in load_mapping(pie_root):
            mask = item.mask(border=border) if item.mask_rle else None
            out[item.id] = (f"{item.edit_type} {EDIT_TYPES.get(item.edit_type, '')}".strip(), mask)
    if manifest is not None:
        from data.pie_bench import decode_mask

        for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                mask = entry.get("mask")
                if isinstance(mask, list):
                    mask = decode_mask(mask, border=border)
                elif isinstance(mask, str):
                    mask = (np.asarray(Image.open(manifest.parent / mask).convert("L")) > 127).astype(np.uint8)
                out[str(entry["id"])] = (str(entry.get("edit_type", "all")), mask)
            except (ValueError, KeyError, OSError) as exc:
                raise UsageError(f"{manifest}:{number}: cannot use this line ({exc})") from None
    return out


def find_edits(results: Path, masks: dict) -> list[Edit]:
    """Every (result folder, target) pair under ``results``."""
    edits = []
    for run_file in sorted(results.rglob("run.json")):
        folder = run_file.parent
        try:
            run = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        source = folder / "input.png" if (folder / "input.png").is_file() else folder / "source.png"
        edit_type, mask = masks.get(folder.name, ("all", None))
        for k, prompt in enumerate(run.get("prompts", [])[1:], start=1):
            edited = folder / f"edit_{k}.png"
            if edited.is_file() and source.is_file():
                edits.append(Edit(folder.name, method_of(run), k, source, edited, prompt, edit_type, mask))
    return edits


def _fit(mask: np.ndarray | None, size: tuple[int, int]) -> np.ndarray | None:
    if mask is None or mask.shape[::-1] == size:
        return mask
    return np.asarray(Image.fromarray(mask * 255).resize(size, Image.Resampling.NEAREST)) > 127


def score_edit(edit: Edit, args) -> dict:
    """All metrics of one edit (NaN where a metric does not apply, e.g. no mask)."""
    from eval import metrics

    src = Image.open(edit.source).convert("RGB")
    dst = Image.open(edit.edited).convert("RGB")
    mask = _fit(edit.mask, src.size)
    compat = args.pie_bench_compat
    net = "squeeze" if compat else args.lpips_net
    row = {"id": edit.id, "method": edit.method, "target": edit.target, "edit_type": edit.edit_type, "prompt": edit.prompt}
    row["clip_whole"] = metrics.clip_score([dst], [edit.prompt], model=args.clip_model)[0]
    row["clip_edited"] = (metrics.clip_score([dst], [edit.prompt], model=args.clip_model, masks=[mask])[0]
                          if mask is not None and mask.any() else math.nan)
    row["structure_distance"] = metrics.structure_distance(src, dst, model=args.dino_model, compat=compat)
    row["psnr"] = metrics.psnr(src, dst, mask, compat)
    row["lpips"] = metrics.lpips(src, dst, net=net, mask=mask, compat=compat, backbone=args.lpips_backbone)
    row["mse"] = metrics.mse(src, dst, mask, compat)
    row["ssim"] = metrics.ssim(src, dst, mask, compat)
    if compat and mask is not None and mask.all():
        for m in ("psnr", "lpips", "mse", "ssim"):
            row[m] = math.nan  # the evaluator's NaN items: nothing left unedited
    return row


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="folder of edit results (searched recursively for run.json)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--manifest", type=Path, help="JSONL with id, edit_type, mask per item")
    source.add_argument("--pie-bench", type=Path, metavar="ROOT", help="PIE-Bench root (mapping_file.json)")
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--pie-bench-compat", action="store_true",
                        help="reproduce PIE-Bench's evaluator conventions (see README)")
    parser.add_argument("--clip-model", default="openai/clip-vit-large-patch14", help="CLIP hub id or folder")
    parser.add_argument("--dino-model", default="facebook/dino-vitb8", help="DINO ViT hub id or folder")
    parser.add_argument("--lpips-net", default="alex", choices=["alex", "vgg", "squeeze"])
    parser.add_argument("--lpips-backbone", default=None,
                        help="torchvision ImageNet weights file for the LPIPS net (default: torch.hub's cache)")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command; returns its exit code."""
    args = build_parser().parse_args(argv)
    quiet_libraries(args.quiet)

    def go() -> int:
        from eval import report
        from eval.lpips import MetricModelError

        if not args.results.is_dir():
            raise UsageError(f"{args.results}: no such folder of results")
        masks = load_masks(args.manifest, args.pie_bench, border=args.pie_bench_compat)
        edits = find_edits(args.results, masks)
        if not edits:
            raise UsageError(f"{args.results}: no run.json with edit_K.png found; point at the --out folder of an edit run")
        args.out.mkdir(parents=True, exist_ok=True)
        scores_path = args.out / "scores.csv"
        rows = report.read_scores(scores_path)
        done = {(r["id"], r["method"], str(r["target"])) for r in rows}
        todo = [e for e in edits if (e.id, e.method, str(e.target)) not in done]
        try:
            for edit in tqdm(todo, desc="scoring", disable=args.quiet):
                rows.append(score_edit(edit, args))
                if len(rows) % 20 == 0:
                    report.write_scores(scores_path, rows)  # a killed run keeps what it scored
        except MetricModelError as exc:
            report.write_scores(scores_path, rows)
            raise UsageError(str(exc)) from None
        report.write_scores(scores_path, rows)
        report.atomic_write(args.out / "summary.md", report.summary_markdown(rows, args.pie_bench_compat))
        pictures = report.plots(rows, args.out)
        print(f"scored {len(todo)} new edits ({len(rows)} in all); report in {args.out}: "
              f"scores.csv, summary.md, {len(pictures)} plots")
        return 0

    return run_cli(PROG, go)


if __name__ == "__main__":
    sys.exit(main())
