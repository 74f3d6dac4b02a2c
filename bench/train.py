"""The shapes model's training speed levers side by side (``python -m bench train --seconds 120``).

Each configuration runs the real training loop (``models.shapes_training.train``) for a share of
the wall budget in the VAE phase and the rest in the UNet phase, in this process, one after
another, and reports seconds a step (median of the steps after the first few, which carry the
warm-up and, for ``torch.compile``, the compilation) and steps a second. Configurations differ
from the baseline (today's run: one thread, float32, every scene rendered per step) by one lever
at a time, then by the levers kept together.

What a lever buys in quality (Min-SNR-γ, the learning rate, the batch) is not a speed figure:
docs/benchmarks.md says what was measured at a fixed budget.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)

# the warm-up steps left out of each phase's median
SKIP_STEPS = 3


@dataclass
class BenchConfig:
    """One column: a name, the training config's fields that differ from the baseline, threads."""

    name: str
    overrides: dict = field(default_factory=dict)
    threads: int = 1
    # data-parallel processes (models.shapes_training.train_parallel), each of ``threads``
    processes: int = 1
    # the phases timed (a lever of the UNet phase alone is not timed on the VAE)
    phases: tuple[str, ...] = ("vae", "unet")


GROUNDED = dict(text_layers=0, grounding_weight=0.1, pixel_weight=0.03)
LOCAL = dict(GROUNDED, locality_weight=0.3, locality_max_t=500)
KEPT = dict(bf16=True, precompute=True)

CONFIGS = [
    BenchConfig("baseline (1 thread, fp32, render per step)"),
    BenchConfig("2 threads", threads=2),
    BenchConfig("2 processes", processes=2),
    BenchConfig("bf16 autocast", dict(bf16=True)),
    BenchConfig("scenes rendered once", dict(precompute=True)),
    BenchConfig("min-SNR-γ 5", dict(snr_gamma=5.0), phases=("unet",)),
    BenchConfig("kept: 2 processes + bf16 + once", KEPT, processes=2),
    BenchConfig("... + torch.compile", dict(KEPT, compile=True), processes=2, phases=("unet",)),
    BenchConfig("... + explicit attention", dict(KEPT, explicit_attention=True), processes=2, phases=("unet",)),
    BenchConfig("... UNet (32, 64)", dict(KEPT, unet_channels=(32, 64)), processes=2, phases=("unet",)),
    BenchConfig("... UNet (96, 192)", dict(KEPT, unet_channels=(96, 192)), processes=2, phases=("unet",)),
    BenchConfig("... batch 16", dict(KEPT, batch_size=16), processes=2),
    BenchConfig("... batch 64", dict(KEPT, batch_size=64), processes=2),
    BenchConfig("grounding + pixel terms, fp32 per step", GROUNDED, phases=("unet",)),
    BenchConfig("grounding + pixel terms, kept levers", dict(KEPT, **GROUNDED), processes=2, phases=("unet",)),
    BenchConfig("+ locality term, kept levers", dict(KEPT, **LOCAL), processes=2, phases=("unet",)),
]


def _phase_seconds(config, threads: int, processes: int, phase: str, seconds: float, workdir: Path) -> list[float]:
    """Per-step wall seconds of one phase of the training run for about ``seconds``."""
    from models.shapes_training import train_parallel

    stamps: list[float] = []

    def progress(name: str, step: int, total: int, loss: float) -> bool:
        if name != phase:
            return False
        stamps.append(time.perf_counter())
        return stamps[-1] - stamps[0] > seconds and len(stamps) > SKIP_STEPS + 2

    before = torch.get_num_threads()
    try:
        train_parallel(workdir / "out", config, processes=processes, threads=threads, checkpoint_dir=workdir / "ck",
                       resume=False, checkpoint_seconds=1e9, progress=progress)
    finally:
        torch.set_num_threads(before)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return gaps[SKIP_STEPS:] or gaps


def bench_config(bench: BenchConfig, seconds: float, latent_scenes: int = 512) -> dict:
    """One configuration's row: s/step of the VAE and the UNet phase (a third and two thirds of
    ``seconds``; all of it for a lever of one phase), steps/s (None for a phase not timed), the batch."""
    from models.shapes_training import TrainConfig

    base = TrainConfig(world=2, latent_scenes=latent_scenes, warmup_steps=10, **bench.overrides)
    row = {"config": bench.name, "processes": bench.processes, "threads": bench.threads, "batch": base.batch_size}
    share = {"vae": 1 / 3, "unet": 2 / 3} if len(bench.phases) == 2 else {bench.phases[0]: 1.0}
    timed = {}
    for phase in bench.phases:
        steps = dict(vae_steps=10**6, unet_steps=1) if phase == "vae" else dict(vae_steps=1, unet_steps=10**6)
        with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
            timed[phase] = _phase_seconds(replace(base, **steps), bench.threads, bench.processes, phase,
                                          seconds * share[phase], Path(tmp))
    for name in ("vae", "unet"):
        if name not in timed:
            row[f"{name}_s_per_step"] = row[f"{name}_steps_per_s"] = None
            continue
        gaps = timed[name]
        median = statistics.median(gaps)
        row[f"{name}_s_per_step"] = round(median, 3)
        row[f"{name}_steps_per_s"] = round(1 / median, 2)
        row[f"{name}_steps_timed"] = len(gaps)
    return row


def bench_train(seconds: float = 120.0, only: list[str] | None = None) -> list[dict]:
    """Every configuration of ``CONFIGS`` (or those whose names start with one of ``only``), one
    after another, each for about ``seconds``. Returns one row each (``bench_config``)."""
    chosen = [c for c in CONFIGS if not only or any(c.name.startswith(o) for o in only)]
    rows = []
    for bench in chosen:
        rows.append(bench_config(bench, seconds))
        log.info("%s: VAE %s s/step, UNet %s s/step", bench.name, rows[-1]["vae_s_per_step"],
                 rows[-1]["unet_s_per_step"])
    return rows


def print_train(rows: list[dict]) -> str:
    """The rows as a table: configuration, threads, batch, s/step and steps/s of each phase."""
    def cell(value) -> str:
        return "–" if value is None else f"{value}"

    lines = ["| configuration | processes × threads | batch | VAE s/step | VAE steps/s | UNet s/step | UNet steps/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['processes']} × {r['threads']} | {r['batch']} | {cell(r['vae_s_per_step'])} | "
                     f"{cell(r['vae_steps_per_s'])} | {cell(r['unet_s_per_step'])} | {cell(r['unet_steps_per_s'])} |")
    return "\n".join(lines)


def _timed_ms(step: Callable[[], None], repeats: int) -> float:
    step()
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    return round((time.perf_counter() - began) / repeats * 1000, 1)


def bench_step_costs(repeats: int = 20) -> list[dict]:
    """What the optimizer step and the EMA update cost each UNet step of the recipe (its UNet and
    text encoder, 7.4 M parameters, this process's threads), torch's per-tensor loop against its
    foreach and fused kernels, and whether each leaves the loop's weights to the bit after three
    steps from the same start and gradients. Returns rows {part, kernel, ms, bit_equal}."""
    from models.shapes_training import RECIPE, build_models, ema_update

    def weights() -> list[torch.nn.Parameter]:
        _, unet, text = build_models(RECIPE.seed, RECIPE.text_layers, RECIPE.unet_channels)
        return list(unet.parameters()) + list(text.parameters())

    gen = torch.Generator().manual_seed(0)
    reference = weights()
    grads = [[torch.randn(p.shape, generator=gen) * 1e-3 for p in reference] for _ in range(3)]
    kernels = {"per-tensor loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
    rows, ends = [], {}
    for name, kind in kernels.items():
        params = weights()
        optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01, **kind)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            optimizer.step()
        ends[name] = params
        rows.append({"part": "AdamW step", "kernel": name, "ms": _timed_ms(optimizer.step, repeats),
                     "bit_equal": all(torch.equal(a, b) for a, b in zip(params, ends["per-tensor loop"]))})
    start = [torch.randn(p.shape, generator=gen) for p in reference]  # away from the weights, so each update moves it
    averages = {name: [a.clone() for a in start] for name in ("per-tensor loop", "foreach")}

    def loop() -> None:
        with torch.no_grad():
            for a, p in zip(averages["per-tensor loop"], reference):
                a.mul_(RECIPE.ema_decay).add_(p, alpha=1 - RECIPE.ema_decay)

    named = {f"m.{i}": a for i, a in enumerate(averages["foreach"])}
    module = torch.nn.ParameterList(reference)
    updates = {"per-tensor loop": loop, "foreach": lambda: ema_update(named, {"m": module}, RECIPE.ema_decay)}
    for name, update in updates.items():
        update()
    for name, update in updates.items():
        rows.append({"part": "EMA update", "kernel": name, "ms": _timed_ms(update, repeats),
                     "bit_equal": all(torch.equal(a, b) for a, b in zip(averages[name], averages["per-tensor loop"]))})
    return rows


def print_step_costs(rows: list[dict]) -> str:
    """The rows of ``bench_step_costs`` as a table."""
    lines = ["| per UNet step | kernel | ms | the loop's weights to the bit |", "|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['kernel']} | {r['ms']} | {'yes' if r['bit_equal'] else 'no'} |" for r in rows]
    return "\n".join(lines)
