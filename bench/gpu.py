"""GPU figures in one command (``python -m bench gpu --out DIR``, issue #32): seconds per photo for
every inversion and edit at the real models' sizes, with random weights of the real architectures
(the same cost as real weights), in fp16 with PyTorch's fused attention (SDPA), 50 DDIM steps,
w = 7.5.

Rows, in the order they run (the cheap and most asked-for first, so that a budget cuts the dear ones):

- SD 1.5 at 512²: diffusers' own generation of the edit's two prompts; a Prompt-to-Prompt word
  swap of the same two prompts (its ratio to the generation of the same run); DDIM,
  negative-prompt and null-text inversion (10 inner steps, with and without early stop), direct
  and fixed-point inversion of one photo; an edit of the inverted photo with a local blend and
  the attention pictures; null-text of 8 photos in one batch (seconds per photo).
- SDXL base at 1024²: one edit, direct and null-text inversion of one photo.

Each row runs once at 1 step (the warm-up, discarded), then at 1 and at 2 steps: their difference
is the cost of a step, the rest a fixed cost (encoding, decoding), and the two give the estimate of
the full row. A row whose estimate exceeds what is left of ``--budget-s`` is skipped and listed
with its estimate; the others run ``repeats`` times (once when a run is longer than ``long_s``)
and report the median. GPU timings are synchronized (``bench.measure.measure``); peak memory is
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (weights included), on a CPU
the peak resident set above the row's start. The JSON and the markdown table are rewritten after
every row, so a run cut short by a timeout still leaves what it measured.

``--quick`` runs every row on the tiny models ("tiny", "tiny-xl") at 3 steps, 2 inner steps, one
repeat: the check, on a CPU, that the GPU run needs nothing but its command.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch

from bench.measure import load_bench_model, measure

log = logging.getLogger(__name__)

PHOTO = Path(__file__).resolve().parent.parent / "assets" / "chelsea.png"
SOURCE = "a cat sitting on a wooden floor"
TARGET = "a dog sitting on a wooden floor"
JSON_NAME = "bench-gpu.json"
TABLE_NAME = "bench-gpu.md"
PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "huggingface_hub", "safetensors", "numpy",
            "pillow", "opencv-python-headless", "requests")


@dataclass
class Settings:
    """What a run measures: models, steps, guidance, repeats and the time it may take."""

    models: tuple[str, ...] = ("sd15", "sdxl1024")
    steps: int = 50
    inner_steps: int = 10
    guidance: float = 7.5
    repeats: int = 3
    photos: int = 8
    budget_s: float | None = None
    long_s: float = 10.0  # a row whose single run takes longer runs once: GPU timings hardly vary, budgets do
    quick: bool = False

    @classmethod
    def quick_run(cls, **overrides: Any) -> "Settings":
        """The CPU check: tiny models, 3 steps (the fewest with self-attention injection), 2 inner
        steps, one repeat; ``overrides`` replace any of these."""
        base = dict(models=("tiny", "tiny-xl"), steps=3, inner_steps=2, repeats=1, quick=True)
        return cls(**{**base, **overrides})


class Budget:
    """Seconds left of a run's budget (None: no limit), on an injectable clock."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.perf_counter):
        self.seconds, self._clock = seconds, clock
        self._start = clock()

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return self._clock() - self._start

    def left(self) -> float:
        """Seconds left (infinite without a budget; negative once overspent)."""
        return math.inf if self.seconds is None else self.seconds - self.elapsed()


def plan_repeats(estimate_s: float, left_s: float, repeats: int, long_s: float) -> int:
    """How many full runs of a row to do: ``repeats``, once if a run takes longer than ``long_s``,
    and no more than fit in ``left_s``; 0 means skip (not even one fits)."""
    wanted = 1 if estimate_s > long_s else repeats
    if math.isinf(left_s):
        return wanted
    return max(0, min(wanted, int(left_s // max(estimate_s, 1e-9))))


def estimate_run(t1: float, t2: float, steps: int) -> tuple[float, float]:
    """(fixed seconds, seconds per step) from timed runs at 1 and at 2 steps, and the full run's
    estimate is fixed + steps × per step. The per-step cost is at least a quarter of t2 / 2, so that
    noise making t2 ≤ t1 does not estimate a free step."""
    per_step = max(t2 - t1, 0.25 * t2 / 2)
    return max(t1 - per_step, 0.0), per_step


class UnetCalls:
    """Counts a UNet's forward calls through a forward pre-hook (PyTorch's public module API)."""

    def __init__(self, unet: torch.nn.Module):
        self.calls = 0
        self._handle = unet.register_forward_pre_hook(self._count)

    def _count(self, *_: Any) -> None:
        self.calls += 1

    def close(self) -> None:
        """Remove the hook."""
        self._handle.remove()


@dataclass
class Row:
    """One line of the table.

    ``prepare(steps)`` builds what the timed part needs (untimed: e.g. the inversion an edit
    starts from) and ``work(steps, prepared)`` is the timed part; it returns extra figures for the
    row (``unet_backward``, ``inner_steps_mean``). ``available`` is None or why the row cannot run.
    """

    name: str
    model: str
    photos: int
    work: Callable[[int, Any], dict]
    key: str = ""  # the row's kind (``SD_ROWS``/``XL_ROWS``), for reading the JSON
    prepare: Callable[[int], Any] = lambda steps: None
    inner_steps: int = 0
    available: str | None = None
    ratio_to: str | None = None  # the name of the row this one's time is divided by


@dataclass
class Result:
    """What a row measured, or why it did not."""

    name: str
    model: str
    status: str  # "measured", "skipped" or "failed"
    steps: int
    key: str = ""
    inner_steps: int = 0
    photos: int = 1
    repeats: int = 0
    seconds: float | None = None
    seconds_min: float | None = None
    seconds_max: float | None = None
    seconds_per_photo: float | None = None
    unet_forward: int | None = None
    unet_backward: int | None = None
    peak_mb: float | None = None
    estimate_s: float | None = None
    ratio: float | None = None
    ratio_to: str | None = None
    extra: dict = field(default_factory=dict)
    reason: str | None = None


def _timed(pipe, row: Row, steps: int, device: torch.device) -> tuple[float, int, dict, float | None, float]:
    """Run a row once at ``steps``: (seconds of the timed part, UNet forward calls, extra figures,
    peak MiB, seconds of the preparation)."""
    started = time.perf_counter()
    prepared = row.prepare(steps)
    prepare_s = time.perf_counter() - started
    counter = UnetCalls(pipe.unet)
    try:
        with measure(device) as m:
            extra = row.work(steps, prepared)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20  # measure() reset it: this block's, weights included
        else:
            peak = m.peak_mb
    finally:
        counter.close()
    return m.seconds, counter.calls, extra, peak, prepare_s


def run_row(pipe, row: Row, settings: Settings, budget: Budget, device: torch.device) -> Result:
    """Warm up, estimate and (if it fits the budget) measure one row; never raises for the row's
    own failure (out of memory, a diverged optimization): the result says ``failed`` and why."""
    result = Result(row.name, row.model, "skipped", settings.steps, row.key, row.inner_steps, row.photos,
                    ratio_to=row.ratio_to)
    if row.available is not None:
        result.reason = row.available
        return result
    if budget.left() <= 0:
        result.reason = "budget spent before it started"
        return result
    try:
        warm, *_, warm_prep = _timed(pipe, row, 1, device)
        if 3 * (warm + warm_prep) > budget.left():  # not even the two timing runs fit
            result.reason = "over budget: its 1-step warm-up alone leaves no room"
            result.estimate_s = round((warm + warm_prep) * settings.steps, 3)
            return result
        t1, _, _, _, p1 = _timed(pipe, row, 1, device)
        t2, _, _, _, p2 = _timed(pipe, row, 2, device)
        fixed, per_step = estimate_run(t1, t2, settings.steps)
        estimate = fixed + per_step * settings.steps + max(p1, p2) / 2 * settings.steps  # preparing: ∝ steps
        result.estimate_s = round(estimate, 3)
        repeats = plan_repeats(estimate, budget.left(), settings.repeats, settings.long_s)
        if repeats == 0:
            result.reason = f"over budget: estimated {estimate:.1f} s, {max(budget.left(), 0):.1f} s left"
            return result
        runs = [_timed(pipe, row, settings.steps, device) for _ in range(repeats)]
    except Exception as exc:  # noqa: BLE001 - one row's failure must not cost the run's other rows
        if device.type == "cuda":
            torch.cuda.empty_cache()
        log.exception("row %r failed", row.name)
        result.status, result.reason = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return result
    seconds = [r[0] for r in runs]
    result.status, result.repeats = "measured", repeats
    result.seconds = round(statistics.median(seconds), 4)
    result.seconds_min, result.seconds_max = round(min(seconds), 4), round(max(seconds), 4)
    result.seconds_per_photo = round(result.seconds / row.photos, 4)
    result.unet_forward = runs[0][1]
    extra = runs[0][2]
    result.unet_backward = extra.pop("unet_backward", 0)
    result.extra = extra
    peaks = [r[3] for r in runs if r[3] is not None]
    result.peak_mb = round(max(peaks), 1) if peaks else None
    return result


def _photos(side: int, count: int) -> list:
    """``count`` distinct photos at side × side: the cat photo in its 4 rotations, each also mirrored."""
    from PIL import ImageOps

    from data.images import load_image

    base = load_image(PHOTO, size=side)
    variants = [im for k in range(4) for im in (base.rotate(90 * k), ImageOps.mirror(base.rotate(90 * k)))]
    return [variants[k % len(variants)] for k in range(count)]


def _inversion_figures(inv) -> dict:
    stats = inv.stats
    extra = {"unet_backward": int(stats.get("unet_backward", 0))}
    if stats.get("inner_steps"):
        extra["inner_steps_mean"] = round(statistics.fmean(stats["inner_steps"]), 2)
    return extra


SD_ROWS = ("generate", "edit", "ddim", "negative-prompt", "null-text", "null-text-no-stop", "direct", "fixed-point",
           "blend", "batch")
XL_ROWS = ("edit", "direct", "null-text")
LABELS = {
    "generate": "generate (diffusers, the edit's 2 prompts)",
    "edit": "P2P edit (word swap, 2 prompts)",
    "ddim": "DDIM inversion",
    "negative-prompt": "negative-prompt inversion",
    "null-text": "null-text inversion ({inner} inner, early stop)",
    "null-text-no-stop": "null-text inversion ({inner} inner, no early stop)",
    "direct": "direct inversion",
    "fixed-point": "fixed-point inversion",
    "blend": "edit with local blend and attention pictures",
    "batch": "null-text inversion, {photos} photos in one batch ({inner} inner, early stop)",
}


def looks_xl(model: str) -> bool:
    """Whether a model name is an SDXL one ("tiny-xl", "sdxl", "sdxl1024", or a name with "xl"),
    for listing its rows before it is loaded."""
    return "xl" in model.lower()


def row_names(model: str, settings: Settings, xl: bool) -> dict[str, str]:
    """key → the row's name in the table, in the order the rows run, for an SD or an SDXL model."""
    labels = {k: LABELS[k].format(inner=settings.inner_steps, photos=settings.photos) for k in LABELS}
    return {key: f"{model} {labels[key]}" for key in (XL_ROWS if xl else SD_ROWS)}


def rows_for(pipe, model: str, settings: Settings) -> list[Row]:
    """The rows measured on ``model`` (loaded as ``pipe``): ``SD_ROWS`` on SD 1.x-shaped models,
    ``XL_ROWS`` on SDXL's; a direct or fixed-point row says it is not available when
    ``inversion.METHODS`` lacks the method."""
    import inversion
    from editing import EditSpec, attention_pictures, edit
    from models.codec import is_xl
    from models.loading import image_size

    xl = is_xl(pipe)
    names = row_names(model, settings, xl)
    side = image_size(pipe)
    photo = _photos(side, 1)[0]
    n_in, w = settings.inner_steps, settings.guidance
    channels, latent_side = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    latents = torch.randn(1, channels, latent_side, latent_side, generator=torch.Generator().manual_seed(0))
    swap = EditSpec([SOURCE, TARGET])
    blend = EditSpec([SOURCE, TARGET], blend_words=(["cat"], ["dog"]))

    def inverting(method: str, images=photo, **kwargs) -> Callable[[int, Any], dict]:
        def work(steps: int, _: Any) -> dict:
            inv = inversion.invert(pipe, images, SOURCE, method=method, num_steps=steps, guidance_scale=w,
                                   progress=False, size=side, **kwargs)
            return _inversion_figures(inv[0] if isinstance(inv, list) else inv)
        return work

    def editing(steps: int, _: Any) -> dict:
        edit(pipe, swap, latents=latents, num_steps=steps, guidance_scale=w)
        return {}

    def generating(steps: int, _: Any) -> dict:
        pipe([SOURCE, TARGET], latents=latents.to(pipe.device, pipe.unet.dtype).expand(2, -1, -1, -1),
             num_inference_steps=steps, guidance_scale=w)
        return {}

    def inverted(steps: int):  # the blend row's photo, inverted outside its timing
        return inversion.invert(pipe, photo, SOURCE, method="ddim", num_steps=steps, guidance_scale=w,
                                progress=False, size=side)

    def blending(steps: int, inv) -> dict:
        result = edit(pipe, blend, inversion=inv, return_attention=True)
        pictures = [attention_pictures(result, k) for k in range(len(blend.prompts))]
        return {"attention_pictures": len(pictures)}

    def missing(method: str) -> str | None:
        return None if method in inversion.METHODS else "not available in this checkout"

    null_text = dict(num_inner_steps=n_in)
    make = {
        "generate": lambda: Row(names["generate"], model, 1, generating),
        "edit": lambda: Row(names["edit"], model, 1, editing, ratio_to=names.get("generate")),
        "ddim": lambda: Row(names["ddim"], model, 1, inverting("ddim")),
        "negative-prompt": lambda: Row(names["negative-prompt"], model, 1, inverting("negative-prompt")),
        "null-text": lambda: Row(names["null-text"], model, 1, inverting("null-text", **null_text), inner_steps=n_in),
        "null-text-no-stop": lambda: Row(names["null-text-no-stop"], model, 1,
                                         inverting("null-text", early_stop_epsilon=0, **null_text), inner_steps=n_in),
        "direct": lambda: Row(names["direct"], model, 1, inverting("direct"), available=missing("direct")),
        "fixed-point": lambda: Row(names["fixed-point"], model, 1, inverting("fixed-point"),
                                   available=missing("fixed-point")),
        "blend": lambda: Row(names["blend"], model, 1, blending, prepare=inverted),
        "batch": lambda: Row(names["batch"], model, settings.photos,
                             inverting("null-text", images=_photos(side, settings.photos), **null_text), inner_steps=n_in),
    }
    rows = []
    for key in names:
        row = make[key]()
        row.key = key
        rows.append(row)
    return rows


def load_model(name: str, device: torch.device, dtype: torch.dtype):
    """``load_bench_model`` with the random weights initialized on the device itself when it is a
    GPU (seconds instead of a minute of CPU initialization for SDXL), falling back to building on
    the CPU. Returns (pipeline, where its weights were built)."""
    if device.type == "cuda" and name not in ("tiny", "tiny-xl"):
        try:
            with torch.device(device):
                pipe = load_bench_model(name, device, dtype)
            from models.loading import ddim_scheduler

            pipe.scheduler = ddim_scheduler(dict(pipe.scheduler.config))  # its tensors on the CPU, as usual
            return pipe, "cuda"
        except Exception:  # noqa: BLE001 - the CPU build is the tested path
            log.warning("building %s on the GPU failed; building it on the CPU", name, exc_info=True)
            torch.cuda.empty_cache()
    return load_bench_model(name, device, dtype), "cpu"


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    """The machine, driver and package versions a run's figures belong to."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention"),
        "packages": {},
        "commit": _commit(),
    }
    for name in PACKAGES:
        try:
            env["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env["packages"][name] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_mib=round(props.total_memory / 2**20),
                   gpu_capability=f"{props.major}.{props.minor}",
                   driver=_driver_version(), sdpa_flash=torch.backends.cuda.flash_sdp_enabled(),
                   sdpa_mem_efficient=torch.backends.cuda.mem_efficient_sdp_enabled())
    return env


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _commit() -> str | None:
    if os.environ.get("PROMPTEDIT_COMMIT"):
        return os.environ["PROMPTEDIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _attention(pipe) -> list[str]:
    return sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def markdown(report: dict) -> str:
    """The report as a markdown table, skipped and failed rows listed with their reason (and the
    estimate that skipped them)."""
    env = report["environment"]
    where = env.get("gpu") or f"CPU ({env['cpu_count']} cores)"
    lines = [
        f"{report['title']}: {where}, {env['dtype']}, torch {env['packages'].get('torch')}, "
        f"diffusers {env['packages'].get('diffusers')}, {report['settings']['steps']} steps, w = "
        f"{report['settings']['guidance']}; {report['memory']}.",
        "",
        "| row | s/photo | s (min–max) | repeats | UNet fwd | UNet bwd | peak MiB | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if r["status"] == "measured":
            spread = f"{r['seconds']} ({r['seconds_min']}–{r['seconds_max']})" if r["repeats"] > 1 else f"{r['seconds']}"
            notes = [f"×{r['ratio']} of generate" if r.get("ratio") is not None else "",
                     *(f"{k} {v}" for k, v in r["extra"].items())]
            lines.append(f"| {r['name']} | {r['seconds_per_photo']} | {spread} | {r['repeats']} | {r['unet_forward']} | "
                         f"{r['unet_backward']} | {_cell(r['peak_mb'])} | {'; '.join(n for n in notes if n)} |")
        else:
            estimate = f" (estimate {r['estimate_s']} s)" if r.get("estimate_s") is not None else ""
            lines.append(f"| {r['name']} | | | | | | | {r['status']}: {r['reason']}{estimate} |")
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(report["skipped"]) + "."]
    budget = "no budget" if report["budget_s"] is None else f"budget {report['budget_s']} s"
    lines += ["", f"Run time {report['elapsed_s']} s ({budget}); model build: "
              + ", ".join(f"{k} {v['seconds']} s on {v['built_on']}" for k, v in report["models"].items()) + "."]
    return "\n".join(lines) + "\n"


def bench_gpu(settings: Settings, out_dir: str | Path, device: torch.device, dtype: torch.dtype,
              budget: Budget | None = None, argv: list[str] | None = None) -> dict:
    """Run every row of ``settings`` and write ``bench-gpu.json`` and ``bench-gpu.md`` into
    ``out_dir`` (rewritten after each row). Returns the report that the JSON holds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    budget = budget or Budget(settings.budget_s)
    cuda = device.type == "cuda"
    report: dict[str, Any] = {
        "title": "bench gpu" + (" --quick (tiny models: a check of the command, not figures)" if settings.quick else ""),
        "issue": 32,
        "command": "python -m bench " + " ".join(argv or ["gpu"]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "settings": asdict(settings),
        "environment": environment(device, dtype),
        "memory": ("peak MiB = torch.cuda.max_memory_allocated during the timed run (weights included)" if cuda else
                   "peak MiB = peak resident set above the row's start (bench.measure; CPU, not GPU memory)"),
        "memory_kind": "cuda_max_memory_allocated" if cuda else "cpu_rss_above_start",
        "budget_s": settings.budget_s,
        "models": {},
        "rows": [],
        "skipped": [],
        "elapsed_s": 0.0,
    }

    def save() -> None:
        report["elapsed_s"] = round(budget.elapsed(), 1)
        report["skipped"] = [f"{r['name']} ({r['reason']}"
                             + (f", estimate {r['estimate_s']} s)" if r.get("estimate_s") is not None else ")")
                             for r in report["rows"] if r["status"] != "measured"]
        _write(out / JSON_NAME, json.dumps(report, indent=2, default=str) + "\n")
        _write(out / TABLE_NAME, markdown(report))

    for model in settings.models:
        if budget.left() <= 0:
            for key, name in row_names(model, settings, looks_xl(model)).items():
                report["rows"].append(asdict(Result(name, model, "skipped", settings.steps, key,
                                                    reason="budget spent before the model was built")))
            save()
            continue
        started = time.perf_counter()
        pipe, built_on = load_model(model, device, dtype)
        report["models"][model] = {"seconds": round(time.perf_counter() - started, 1), "built_on": built_on,
                                   "attention_processors": _attention(pipe)}
        log.info("%s built in %.1f s", model, report["models"][model]["seconds"])
        done: dict[str, Result] = {}
        for row in rows_for(pipe, model, settings):
            result = run_row(pipe, row, settings, budget, device)
            base = done.get(row.ratio_to or "")
            if result.status == "measured" and base is not None and base.status == "measured":
                result.ratio = round(result.seconds / base.seconds, 3)
            done[row.name] = result
            log.info("%s: %s %s", row.name, result.status, result.seconds if result.seconds is not None else result.reason)
            report["rows"].append(asdict(result))
            save()
        del pipe
        if cuda:
            torch.cuda.empty_cache()
    save()
    return report


def run(args, argv: list[str] | None = None) -> int:
    """``python -m bench gpu`` from parsed arguments (``--out``, ``--budget-s``, ``--quick``,
    ``--models``, ``--steps``, ``--inner-steps``, ``--repeats``, ``--photos``, ``--device``,
    ``--dtype``) and the command line they came from (for the report); prints the table.
    Returns the exit code: 0, or 1 when a row failed."""
    from models.loading import pick_device, pick_dtype

    if not args.out:
        raise SystemExit("bench gpu needs --out DIR: the folder for bench-gpu.json and bench-gpu.md")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    overrides: dict[str, Any] = {}
    if args.models:
        overrides["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if args.steps != 50 or not args.quick:
        overrides["steps"] = args.steps
    for key, value in (("inner_steps", args.inner_steps), ("repeats", args.repeats), ("photos", args.photos),
                       ("budget_s", args.budget_s)):
        if value is not None:
            overrides[key] = value
    settings = Settings.quick_run(**overrides) if args.quick else Settings(**overrides)
    device = pick_device(args.device)
    dtype = pick_dtype(device, args.dtype)
    report = bench_gpu(settings, args.out, device, dtype, argv=argv)
    print(markdown(report), flush=True)
    return 1 if any(r["status"] == "failed" for r in report["rows"]) else 0
