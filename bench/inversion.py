"""Inversion figures: seconds, UNet forward/backward counts, peak memory and reconstruction error
per method, with plain DDIM inversion as the same-run baseline (``python -m bench inversion``)."""

from __future__ import annotations

import torch

from bench.measure import load_bench_model, measure
from inversion import METHODS, invert, reconstruct_latent

PHOTO = "assets/chelsea.png"
PROMPT = "a cat sitting on a wooden floor"


def bench_inversion(model: str, steps: int, device: torch.device, dtype: torch.dtype, inner_steps: int = 10) -> list[dict]:
    """One row per method on ``model``: the inversion alone is timed; the error is the MSE between
    the reconstructed latent (guided sampling from x_T, w = 7.5) and the photo's latent."""
    pipe = load_bench_model(model, device, dtype)
    invert(pipe, PHOTO, PROMPT, method="ddim", num_steps=1, progress=False)  # warm-up
    rows = []
    for method in METHODS[::-1]:  # ddim first: the baseline
        with measure(device) as m:
            inv = invert(pipe, PHOTO, PROMPT, method=method, num_steps=steps, num_inner_steps=inner_steps, progress=False)
        error = (reconstruct_latent(pipe, inv).float().cpu() - inv.z_0.float()).pow(2).mean().item()
        rows.append({
            "model": model,
            "method": method,
            "steps": steps,
            "inner_steps": inner_steps if method == "null-text" else 0,
            "seconds": round(m.seconds, 3),
            "seconds_per_step": round(m.seconds / steps, 3),
            "unet_forward": inv.stats["unet_forward"],
            "unet_backward": inv.stats["unet_backward"],
            "peak_mb": round(m.peak_mb, 1),
            "latent_mse": float(f"{error:.4g}"),
        })
    base = rows[0]["seconds"]
    for row in rows:
        row["ratio_to_ddim"] = round(row["seconds"] / base, 2)
    return rows
