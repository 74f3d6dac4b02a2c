"""SDXL's null-text choice (``python -m bench pooled``): reconstruction with the pooled
unconditional embedding optimized along with the per-token one, and without, on the same DDIM
trajectories; plain DDIM as the floor. This measurement set ``inversion.null_text.OPTIMIZE_POOLED``.
"""

from __future__ import annotations

import time

import torch

from bench.measure import load_bench_model
from data.images import load_image
from inversion import Inversion, reconstruct_latent
from inversion.ddim import ddim_inversion
from inversion.invert import photo_time_ids
from inversion.null_text import null_text_optimization
from models.codec import encode_image, encode_null, encode_prompts
from models.loading import image_size

PHOTOS = (("assets/chelsea.png", "a cat sitting on a wooden floor"),
          ("assets/red_circle.png", "a red circle on a white background"))
GUIDANCE = 7.5


def bench_pooled(model: str, steps: int, inner_steps: int, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """For each sample photo: latent MSE of the guided (w = 7.5) reconstruction after plain DDIM
    inversion and after null-text with and without the pooled embedding optimized, with each
    optimization's CPU seconds. Returns one row per photo and method."""
    pipe = load_bench_model(model, device, dtype)
    rows = []
    for photo, prompt in PHOTOS:
        image = load_image(photo, size=image_size(pipe))
        ids = photo_time_ids(pipe, [image])
        if ids is None:
            raise SystemExit(f"pooled: {model} is not an SDXL model (it has no pooled embedding)")
        z0 = encode_image(pipe, image)
        cond = encode_prompts(pipe, [prompt], ids)
        trajectory = ddim_inversion(pipe, z0, cond, steps)

        def mse(nulls=None, pooled=None) -> float:
            inv = Inversion(trajectory.cpu(), nulls, prompt, "null-text", steps, GUIDANCE, null_pooled=pooled, time_ids=ids)
            return float(f"{(reconstruct_latent(pipe, inv).float().cpu() - z0.float().cpu()).pow(2).mean().item():.4g}")

        rows.append({"model": model, "photo": photo, "method": "ddim", "steps": steps, "latent_mse": mse(),
                     "cpu_s": "", "last_step_loss": ""})
        for optimize in (False, True):
            cpu = time.process_time()
            nulls, stats = null_text_optimization(pipe, trajectory, cond, encode_null(pipe), steps, GUIDANCE,
                                                  inner_steps, optimize_pooled=optimize)
            cpu = time.process_time() - cpu
            rows.append({"model": model, "photo": photo,
                         "method": f"null-text, pooled {'optimized' if optimize else 'fixed'}", "steps": steps,
                         "latent_mse": mse(nulls.embeds, nulls.pooled), "cpu_s": round(cpu, 1),
                         "last_step_loss": float(f"{stats['final_loss'][-1][0]:.3g}")})
    return rows
