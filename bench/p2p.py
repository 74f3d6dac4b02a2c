"""Prompt-to-Prompt's cost: ``edit`` (a word swap) against diffusers' own pipeline on the same prompts.

The two run in interleaved pairs (the order alternates, so neither always runs on a warm cache or
a quiet moment), and the ratio is taken within each pair: slow drifts of a shared machine's load
then cancel instead of landing on one side.

The pairs are spread over several fresh processes, one after another. On this 2-core VM, idle,
single runs vary by ±10 % (so 40 pairs, not 9), and a whole process can also sit about 5 % off
another: three one-process runs of 40 pairs read 1.104, 1.118 and 1.184. A process's memory layout
lasts as long as the process, so only more processes average it out (pyperf does the same).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import torch

from bench.measure import load_bench_model, measure, median_measure, spread


def timed_pairs(model: str, steps: int, repeats: int, device: torch.device, dtype: torch.dtype) -> tuple[list, list]:
    """``repeats`` interleaved runs of diffusers' pipeline and of ``edit`` on the same two prompts.

    Returns (plain runs, edit runs): two lists of ``bench.measure.Measure``, pair k at index k.
    """
    from editing import EditSpec, edit

    if int(0.4 * steps) < 1:  # the default self_replace_steps 0.4: injection in steps [0, int(0.4·T))
        raise SystemExit(f"p2p needs at least 3 steps ({steps} given): with fewer, self-attention injection "
                         "never runs and the ratio leaves out part of the edit's cost")
    pipe = load_bench_model(model, device, dtype)
    side = pipe.unet.config.sample_size
    latents = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(0))
    prompts = ["a cat sitting on a bench", "a dog sitting on a bench"]
    spec = EditSpec(prompts)

    def plain(n: int = steps) -> None:
        pipe(prompts, latents=latents.to(device, dtype).expand(2, -1, -1, -1), num_inference_steps=n, guidance_scale=7.5)

    def edited(n: int = steps) -> None:
        edit(pipe, spec, latents=latents, num_steps=n)

    plain(1), edited(1)  # warm-up: first calls pay one-time allocation costs
    runs_plain, runs_edit = [], []
    for k in range(repeats):
        pair = ((plain, runs_plain), (edited, runs_edit))
        for fn, runs in pair if k % 2 == 0 else pair[::-1]:
            with measure(device) as m:
                fn()
            runs.append(m)
    return runs_plain, runs_edit


def _pairs_in_child(model: str, steps: int, repeats: int, device: str, dtype: torch.dtype, threads: int) -> tuple:
    torch.set_num_threads(threads)
    return timed_pairs(model, steps, repeats, torch.device(device), dtype)


def spread_pairs(model: str, steps: int, repeats: int, device: torch.device, dtype: torch.dtype,
                 processes: int) -> tuple[list, list]:
    """``timed_pairs`` split over ``processes`` fresh processes run one at a time (1: this one),
    each with this process's torch thread count. Returns the runs of all, as ``timed_pairs``."""
    if processes <= 1:
        return timed_pairs(model, steps, repeats, device, dtype)
    shares = [repeats // processes + (k < repeats % processes) for k in range(processes)]
    runs_plain, runs_edit = [], []
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        for share in filter(None, shares):
            plain, edited = pool.submit(_pairs_in_child, model, steps, share, str(device), dtype,
                                        torch.get_num_threads()).result()
            runs_plain += plain
            runs_edit += edited
    return runs_plain, runs_edit


def bench_p2p(model: str, steps: int, repeats: int, device: torch.device, dtype: torch.dtype,
              processes: int = 1) -> dict:
    """Time ``edit`` (two prompts, default word swap) against diffusers' pipeline on the same prompts,
    in ``repeats`` interleaved pairs spread over ``processes`` fresh processes.

    Returns one row: median seconds of each, and the per-pair ratio's median, min and max, of
    wall time and of CPU time (the stable one on a shared machine; see ``bench.measure``).
    """
    runs_plain, runs_edit = spread_pairs(model, steps, repeats, device, dtype, processes)
    p, e = median_measure(runs_plain), median_measure(runs_edit)
    ratio = spread([a.seconds / b.seconds for a, b in zip(runs_edit, runs_plain)])
    ratio_cpu = spread([a.cpu_seconds / b.cpu_seconds for a, b in zip(runs_edit, runs_plain)])
    return {
        "model": model,
        "steps": steps,
        "seconds_edit": round(e.seconds, 3),
        "seconds_plain": round(p.seconds, 3),
        "repeats": repeats,
        "processes": processes,
        "ratio": ratio["median"],
        "ratio_min": ratio["min"],
        "ratio_max": ratio["max"],
        "ratio_cpu": ratio_cpu["median"],
        "ratio_cpu_min": ratio_cpu["min"],
        "ratio_cpu_max": ratio_cpu["max"],
        "peak_mb_edit": round(e.peak_mb, 1),
        "peak_mb_plain": round(p.peak_mb, 1),
    }
