"""Measuring a block of work: wall time and peak memory above its start, and the models benchmarks run on.

Peak memory is the CUDA allocator's peak on a GPU, and on a CPU the peak resident set size
above the level at the start of the measurement (sampled every 2 ms from /proc).
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch



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
        from models.loading import load_pipeline

        return load_pipeline("tiny", device=device, dtype=dtype)
    if name == "sd15":
        from models.loading import ddim_scheduler
        from models.tiny import build_random_sd15_pipeline

        pipe = build_random_sd15_pipeline(dtype).to(device)
        pipe.scheduler = ddim_scheduler(dict(pipe.scheduler.config))
        return pipe
    raise SystemExit(f"unknown model {name!r}: use tiny or sd15")


def median_measure(runs: list[Measure]) -> Measure:
    return Measure(statistics.median(r.seconds for r in runs), max(r.peak_mb for r in runs))


def print_rows(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"rows": rows}, indent=2))
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys))


