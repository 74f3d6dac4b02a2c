"""Speed and memory figures, each against a baseline measured in the same run.

    python -m eval.bench p2p [--models tiny,sd15] [--steps 50] [--sd15-steps 2] [--json]
    python -m eval.bench inversion [--models tiny,sd15] [--steps 50] [--sd15-steps 2] [--inner-steps N] [--json]
    python -m eval.bench dataset [--jobs 8] [--steps 20] [--json]

Peak memory is the CUDA allocator's peak on a GPU, and on a CPU the peak resident set size
above the level at the start of the measurement (sampled every 2 ms from /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from pipelines.models import pick_device, pick_dtype


@dataclass
class Measure:
    seconds: float = 0.0
    peak_mb: float = 0.0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def measure(device: torch.device):
    """Time the block and record its peak memory above the starting level into the yielded Measure."""
    out = Measure()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        yield out
        torch.cuda.synchronize()
        out.seconds = time.perf_counter() - start
        out.peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        return
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        yield out
    finally:
        out.seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        out.peak_mb = (max(peak[0], _rss_bytes()) - base) / 2**20


def load_bench_model(name: str, device: torch.device, dtype: torch.dtype):
    """The tiny model, or SD 1.5's architecture with random weights ("sd15")."""
    if name == "tiny":
        from pipelines.models import load_pipeline

        return load_pipeline("tiny", device=device, dtype=dtype)
    if name == "sd15":
        from pipelines.models import ddim_scheduler
        from pipelines.tiny import build_random_sd15_pipeline

        pipe = build_random_sd15_pipeline(dtype).to(device)
        pipe.scheduler = ddim_scheduler(dict(pipe.scheduler.config))
        return pipe
    raise SystemExit(f"unknown model {name!r}: use tiny or sd15")


def _median(runs: list[Measure]) -> Measure:
    return Measure(statistics.median(r.seconds for r in runs), max(r.peak_mb for r in runs))


def bench_p2p(model: str, steps: int, repeats: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Time ``edit`` (two prompts, default word swap) against diffusers' pipeline on the same prompts."""
    from editing import EditSpec, edit

    pipe = load_bench_model(model, device, dtype)
    side = pipe.unet.config.sample_size
    latents = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(0))
    prompts = ["a cat sitting on a bench", "a dog sitting on a bench"]
    spec = EditSpec(prompts)

    def plain() -> None:
        pipe(prompts, latents=latents.to(device, dtype).expand(2, -1, -1, -1), num_inference_steps=steps, guidance_scale=7.5)

    def edited() -> None:
        edit(pipe, spec, latents=latents, num_steps=steps)

    plain()  # warm-up: first calls pay one-time allocation costs
    runs_plain, runs_edit = [], []
    for _ in range(repeats):
        for fn, runs in ((plain, runs_plain), (edited, runs_edit)):
            with measure(device) as m:
                fn()
            runs.append(m)
    p, e = _median(runs_plain), _median(runs_edit)
    return {
        "model": model,
        "steps": steps,
        "seconds_edit": round(e.seconds, 3),
        "seconds_plain": round(p.seconds, 3),
        "ratio": round(e.seconds / p.seconds, 3),
        "peak_mb_edit": round(e.peak_mb, 1),
        "peak_mb_plain": round(p.peak_mb, 1),
    }


def _print_rows(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"rows": rows}, indent=2))
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["p2p", "inversion", "dataset"])
    parser.add_argument("--jobs", type=int, default=8, help="dataset: jobs in the manifest")
    parser.add_argument("--models", default="tiny,sd15", help="comma-separated: tiny, sd15 (random-weight SD 1.5)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps on the tiny model")
    parser.add_argument("--sd15-steps", type=int, default=2, help="steps on sd15 (a CPU fits 1–3)")
    parser.add_argument("--inner-steps", type=int, default=None,
                        help="null-text Adam steps per DDIM step (default 10 on tiny, 2 on sd15)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement on tiny (median taken)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="fp32 (CPU default), fp16 (CUDA default), bf16")
    parser.add_argument("--json", action="store_true", help="print one JSON object {rows: [...]}")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = pick_device(args.device)
    dtype = pick_dtype(device, args.dtype)
    rows = []
    if args.what == "dataset":
        from eval.bench_dataset import bench_dataset

        steps = args.steps if args.steps != 50 else 20
        _print_rows(bench_dataset(args.jobs, steps, args.inner_steps or 5), args.json)
        return
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        steps = args.steps if model == "tiny" else args.sd15_steps
        repeats = args.repeats if model == "tiny" else 1
        if args.what == "p2p":
            rows.append(bench_p2p(model, steps, repeats, device, dtype))
        else:
            from eval.bench_inversion import bench_inversion

            inner = args.inner_steps if args.inner_steps is not None else (10 if model == "tiny" else 2)
            rows.extend(bench_inversion(model, steps, device, dtype, inner))
        if not args.json:
            print(f"[done] {model}", flush=True)
    _print_rows(rows, args.json)


if __name__ == "__main__":
    main()
