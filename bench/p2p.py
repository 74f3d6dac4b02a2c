"""Prompt-to-Prompt's cost: ``edit`` (a word swap) against diffusers' own pipeline on the same prompts."""

from __future__ import annotations

import torch

from bench.measure import load_bench_model, measure, median_measure


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
    p, e = median_measure(runs_plain), median_measure(runs_edit)
    return {
        "model": model,
        "steps": steps,
        "seconds_edit": round(e.seconds, 3),
        "seconds_plain": round(p.seconds, 3),
        "ratio": round(e.seconds / p.seconds, 3),
        "peak_mb_edit": round(e.peak_mb, 1),
        "peak_mb_plain": round(p.peak_mb, 1),
    }
