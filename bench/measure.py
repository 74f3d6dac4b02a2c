"""Measuring a block of work: wall time and peak memory above its start, and the models benchmarks run on.

Peak memory is the CUDA allocator's peak on a GPU, and on a CPU the peak resident set size
above the level at the start of the measurement, after handing the heap's free pages back to the
system so that memory freed by an earlier measurement is not reused unseen by the next one. The
peak is the kernel's own high-water mark (VmHWM, reset through /proc/self/clear_refs) where Linux
allows it, else RSS sampled every 2 ms by a thread (which competes for the GIL with the measured
code: on the tiny model that alone is measurable noise).

Each measurement also records the process's CPU seconds. With one thread they equal the wall
time on an idle machine and, unlike it, hardly move when other processes share the cores: the
ratios computed from them are the stable ones on a busy machine.

On a CPU shared with other work, run with one thread (``--threads 1``): with two OpenMP threads
and a busy second core, each parallel region waits for the descheduled thread, and a 2-step
null-text run on the tiny model took 42 s instead of 0.9 s.
"""

from __future__ import annotations

import ctypes
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
    cpu_seconds: float = 0.0


def _trim_heap() -> None:
    """Return glibc's free heap pages to the system (a no-op elsewhere).

    Also pins glibc's mmap threshold at its default 128 KiB: glibc otherwise raises it after the
    first large free, later tensors then come from the heap instead of their own mappings, and a
    DDIM step measured after a null-text run read 557 MB instead of 218 MB.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _high_water_bytes() -> int | None:
    """The kernel's peak RSS since the last reset (VmHWM), or None where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_high_water() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _high_water_bytes() is not None


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
        out.seconds = out.cpu_seconds = time.perf_counter() - start  # on a GPU, CPU time means nothing
        out.peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        return
    _trim_heap()
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()
    sampler = None
    if not _reset_high_water():
        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_bytes())
                time.sleep(0.002)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    start, cpu = time.perf_counter(), time.process_time()
    try:
        yield out
    finally:
        out.seconds = time.perf_counter() - start
        out.cpu_seconds = time.process_time() - cpu
        if sampler is not None:
            done.set()
            sampler.join()
        else:
            peak[0] = _high_water_bytes() or peak[0]
        out.peak_mb = (max(peak[0], _rss_bytes()) - base) / 2**20


BENCH_MODELS = ("tiny", "tiny-xl", "sd15", "sdxl", "sdxl1024")


def load_bench_model(name: str, device: torch.device, dtype: torch.dtype):
    """The tiny models ("tiny", "tiny-xl"), a real architecture with random weights: SD 1.5
    ("sd15", 512 px), SDXL base 1.0 at 512 px ("sdxl": 64² latents) or at its native 1024 px
    ("sdxl1024"); anything else is loaded with ``load_pipeline`` (real weights)."""
    if name in ("tiny", "tiny-xl"):
        from models.loading import load_pipeline

        return load_pipeline(name, device=device, dtype=dtype)
    if name in ("sd15", "sdxl", "sdxl1024"):
        from models.loading import ddim_scheduler

        if name == "sd15":
            from models.tiny import build_random_sd15_pipeline

            pipe = build_random_sd15_pipeline(dtype)
        else:
            from models.tiny_xl import build_random_sdxl_pipeline

            pipe = build_random_sdxl_pipeline(dtype, sample_size=64 if name == "sdxl" else 128)
        pipe = pipe.to(device)
        if name != "sd15" and dtype == torch.float16:
            pipe.vae.to(torch.float32)  # as load_pipeline does: SDXL's VAE overflows in fp16
        pipe.scheduler = ddim_scheduler(dict(pipe.scheduler.config))
        return pipe
    from models.loading import ModelLoadError, load_pipeline

    try:  # real weights: a hub id in the local cache or a diffusers folder
        return load_pipeline(name, device=device, dtype=dtype)
    except ModelLoadError as exc:
        raise SystemExit(f"unknown model {name!r}: use one of {', '.join(BENCH_MODELS)}, or a loadable model ({exc})")


def median_measure(runs: list[Measure]) -> Measure:
    """The median times and the highest peak of repeated runs."""
    return Measure(statistics.median(r.seconds for r in runs), max(r.peak_mb for r in runs),
                   statistics.median(r.cpu_seconds for r in runs))


def spread(values: list[float], digits: int = 3) -> dict:
    """min / median / max of repeated measurements, rounded."""
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


def spread_text(values: list[float], digits: int = 3) -> str:
    """``median (min–max)`` for a table cell."""
    s = spread(values, digits)
    return f"{s['median']} ({s['min']}–{s['max']})" if len(values) > 1 else f"{s['median']}"


def print_rows(rows: list[dict], as_json: bool) -> None:
    """Print rows as an aligned table, or as one JSON object {rows: [...]}."""
    print_tables({"rows": rows}, as_json)


def print_tables(tables: dict[str, list[dict]], as_json: bool) -> None:
    """Print named tables one after another, or as one JSON object {name: [rows], …}."""
    if as_json:
        print(json.dumps(tables, indent=2))
        return
    for name, rows in tables.items():
        if len(tables) > 1:
            print(f"\n{name}:")
        if rows:
            _print_table(rows)


def _print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys))


