"""Deterministic DDIM steps (η = 0) in both directions, and DDIM inversion of a latent."""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from models.codec import check_finite
from models.conditioning import Conditioning, unet_output


def alpha_bar(scheduler, t: int | torch.Tensor) -> torch.Tensor:
    """ᾱ_t, with ``final_alpha_cumprod`` for a negative timestep (the step past the last one)."""
    t = int(t)
    return scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod


def step_size(scheduler) -> int:
    """Δ = num_train_timesteps / T between consecutive DDIM timesteps."""
    return scheduler.config.num_train_timesteps // scheduler.num_inference_steps


def predicted_noise(scheduler, output: torch.Tensor, t: int | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """ε from the UNet's output: itself for ε-prediction, converted for v-prediction (SD 2.x 768)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return output
    if kind == "v_prediction":
        a = alpha_bar(scheduler, t).to(sample.device, sample.dtype)
        return a.sqrt() * output + (1 - a).sqrt() * sample
    raise ValueError(f"prediction type {kind!r} is not supported (use an epsilon or v-prediction model)")


def _move(sample: torch.Tensor, eps: torch.Tensor, a_from: torch.Tensor, a_to: torch.Tensor) -> torch.Tensor:
    a_from = a_from.to(sample.device, sample.dtype)
    a_to = a_to.to(sample.device, sample.dtype)
    x0 = (sample - (1 - a_from).sqrt() * eps) / a_from.sqrt()
    return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps


def ddim_prev(scheduler, eps: torch.Tensor, t: int | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """One denoising step z_t → z_{t−Δ} given ε (the same as ``DDIMScheduler.step`` at η = 0)."""
    return _move(sample, eps, alpha_bar(scheduler, t), alpha_bar(scheduler, int(t) - step_size(scheduler)))


def ddim_next(scheduler, eps: torch.Tensor, t: int | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """One inversion step z_{t−Δ} → z_t given ε predicted at (z_{t−Δ}, t)."""
    return _move(sample, eps, alpha_bar(scheduler, int(t) - step_size(scheduler)), alpha_bar(scheduler, t))


@torch.no_grad()
def ddim_inversion(
    pipe, latent: torch.Tensor, cond: torch.Tensor | Conditioning, num_steps: int, progress: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Invert latents with DDIM at guidance 1 (conditional prediction only).

    Args:
        latent: z_0 [N, 4, h, w], the photos' VAE latents.
        cond: the source prompts' embeddings [N, 77, d] (a ``Conditioning`` on SDXL).
        on_step: called after each step with (steps done, num_steps); it may raise to stop the
            inversion between steps (cooperative cancellation).

    Returns:
        The trajectory z_0 … z_T as [T+1, N, 4, h, w].

    Raises:
        NonFiniteError: a latent became NaN or infinite (float16 overflow).
    """
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_steps, device=pipe.device)
    z = latent.to(pipe.device, pipe.unet.dtype)
    cond = cond.to(z.device, z.dtype)
    trajectory = [z]
    for i, t in enumerate(tqdm(scheduler.timesteps.flip(0), desc="DDIM inversion", disable=not progress, leave=False)):
        out = unet_output(pipe.unet, z, t, cond)
        z = ddim_next(scheduler, predicted_noise(scheduler, out, t, z), t, z)
        check_finite(z, "inversion", i + 1, num_steps, "DDIM")
        trajectory.append(z)
        if on_step is not None:
            on_step(i + 1, num_steps)
    return torch.stack(trajectory)
