"""Reports from scored rows: ``scores.csv``, ``summary.md`` (with published PIE-Bench rows beside
ours) and PNG plots (each metric by edit type; CLIP score against background LPIPS)."""

from __future__ import annotations

import csv
import math
import os
import tempfile
from collections import defaultdict
from pathlib import Path

METRICS = ["structure_distance", "psnr", "lpips", "mse", "ssim", "clip_whole", "clip_edited"]
# The model each metric needs (PSNR, MSE and SSIM need none): "clip", "dino" or "lpips".
NEEDS_MODEL = {"clip_whole": "clip", "clip_edited": "clip", "structure_distance": "dino", "lpips": "lpips"}
COLUMNS = ["id", "method", "target", "edit_type", "prompt", *METRICS]
# How the published tables print each metric: (header, multiplier, lower is better)
SCALES = {
    "structure_distance": ("Structure ×10³ ↓", 1e3, True),
    "psnr": ("PSNR ↑", 1.0, False),
    "lpips": ("LPIPS ×10³ ↓", 1e3, True),
    "mse": ("MSE ×10⁴ ↓", 1e4, True),
    "ssim": ("SSIM ×10² ↑", 1e2, False),
    "clip_whole": ("CLIP whole ↑", 1.0, False),
    "clip_edited": ("CLIP edited ↑", 1.0, False),
}
# PIE-Bench, all 700 items, Table 1 of the Direct Inversion paper (Ju et al., ICLR 2024), as copied
# (identically) by several later papers' notes and paperswithcode; same column order as METRICS.
PUBLISHED = {
    "NTI+P2P (published)": [13.44, 27.03, 60.67, 35.86, 84.11, 24.75, 21.86],
    "DirectInversion+P2P (published)": [11.65, 27.22, 54.55, 32.86, 84.76, 25.02, 22.10],
    # structure, PSNR and LPIPS as the SPDInv (ECCV 2024) and DCI (NeurIPS 2025) papers report them
    # with SD 1.4 + P2P; the other columns are not given the same way there
    "SPDInv+P2P (published)": [8.81, 28.60, 36.01, math.nan, math.nan, math.nan, math.nan],
    "DCI+P2P (published)": [6.07, 29.38, 33.01, math.nan, math.nan, math.nan, math.nan],
}


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def read_scores(path: Path) -> list[dict]:
    """Rows of an existing scores.csv, or [] when there is none.

    A metric is a float ("nan" where it does not apply, e.g. no edit mask), or None where the
    cell is empty: not scored yet (a run with ``--metrics`` leaving it out); a rerun fills it in.
    """
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for m in METRICS:
            row[m] = float(row[m]) if row.get(m) not in (None, "") else None
    return rows


def write_scores(path: Path, rows: list[dict]) -> None:
    """Write rows as CSV with ``COLUMNS`` (temporary name, then rename): an unscored metric (None)
    as an empty cell, one that does not apply (NaN) as "nan"."""
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else "nan" if isinstance(v, float) and math.isnan(v) else v)
                         for k, v in row.items()})
    atomic_write(path, buffer.getvalue())


def value(row: dict, metric: str) -> float:
    """A row's metric as a float: NaN when it does not apply or was not scored."""
    v = row.get(metric)
    return math.nan if v is None else float(v)


def unscored(rows: list[dict]) -> dict[str, int]:
    """Metric → number of rows that lack it (not scored yet), for the metrics some row lacks."""
    counts = {m: sum(1 for r in rows if r.get(m) is None) for m in METRICS}
    return {m: n for m, n in counts.items() if n}


def means(rows: list[dict]) -> dict[str, float]:
    """Per-metric mean over rows, NaN, unscored (and infinite PSNR) items left out."""
    out = {}
    for m in METRICS:
        values = [value(r, m) for r in rows]
        values = [v for v in values if not math.isnan(v) and not math.isinf(v)]
        out[m] = sum(values) / len(values) if values else math.nan
    return out


def _fmt(value: float, metric: str) -> str:
    return "–" if math.isnan(value) else f"{value * SCALES[metric][1]:.2f}"


def summary_markdown(rows: list[dict], compat: bool) -> str:
    """The summary: one table over all items per method (published rows beside), then one table
    per method by edit type."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    head = "| method | items | " + " | ".join(SCALES[m][0] for m in METRICS) + " |"
    rule = "|" + "---|" * (len(METRICS) + 2)
    lines = ["# Edit scores", "",
             "Scoring: " + ("PIE-Bench-compatible conventions (`--pie-bench-compat`)" if compat
                            else "background metrics over unedited pixels only (default)"), "",
             "## All items", "", head, rule]
    for method, items in sorted(by_method.items()):
        avg = means(items)
        lines.append(f"| {method} | {len(items)} | " + " | ".join(_fmt(avg[m], m) for m in METRICS) + " |")
    for name, values in PUBLISHED.items():
        lines.append(f"| {name} | 700 | " + " | ".join("–" if math.isnan(v) else f"{v:.2f}" for v in values) + " |")
    lines += ["", "Published rows use PIE-Bench's evaluator conventions; compare them with a `--pie-bench-compat` run."]
    missing = unscored(rows)
    if missing:
        lines += ["", "**Not scored yet** (– above): " + ", ".join(f"{m} in {n} of {len(rows)} rows" for m, n in missing.items())
                  + f". Rerun the scoring command with `--metrics {','.join(missing)}` once their models are available."]
    for method, items in sorted(by_method.items()):
        lines += ["", f"## {method} by edit type", "", head.replace("| method |", "| edit type |"), rule]
        groups: dict[str, list[dict]] = defaultdict(list)
        for row in items:
            groups[str(row["edit_type"])].append(row)
        for edit_type, group in sorted(groups.items()):
            avg = means(group)
            lines.append(f"| {edit_type} | {len(group)} | " + " | ".join(_fmt(avg[m], m) for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def plots(rows: list[dict], out: Path) -> list[Path]:
    """Bar charts of each metric by edit type (one bar per method), and a scatter of CLIP score
    against background LPIPS per method. Returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r["method"] for r in rows})
    types = sorted({str(r["edit_type"]) for r in rows})
    written = []
    for metric in METRICS:
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(types) + 2), 4))
        width = 0.8 / max(len(methods), 1)
        for i, method in enumerate(methods):
            heights = [means([r for r in rows if r["method"] == method and str(r["edit_type"]) == t])[metric] * SCALES[metric][1]
                       for t in types]
            ax.bar([x + i * width for x in range(len(types))], [0 if math.isnan(h) else h for h in heights], width, label=method)
        ax.set_xticks([x + width * (len(methods) - 1) / 2 for x in range(len(types))], types, rotation=30, ha="right")
        ax.set_ylabel(SCALES[metric][0])
        ax.set_title(f"{SCALES[metric][0]} by edit type")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"plot_{metric}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    plotted = False
    for method in methods:
        pts = [(value(r, "lpips") * 1e3, value(r, "clip_whole")) for r in rows if r["method"] == method
               and not math.isnan(value(r, "lpips")) and not math.isnan(value(r, "clip_whole"))]
        if pts:
            ax.scatter(*zip(*pts), label=method, s=14, alpha=0.7)
            plotted = True
    ax.set_xlabel("background LPIPS ×10³ (lower keeps more)")
    ax.set_ylabel("CLIP score, whole image (higher follows the prompt)")
    ax.set_title("Edit strength against preservation" + ("" if plotted else " (LPIPS or CLIP not scored)"))
    if plotted:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "plot_clip_vs_lpips.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written
