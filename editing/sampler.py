"""The denoising loop: every prompt's row in one batch, classifier-free guidance with per-step
unconditional (null) embeddings, a controller on the attention maps and after each step.

It does not know which controller runs; with none it is plain DDIM sampling.
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from editing.controllers import Controller
from editing.processor import controlled_attention
from editing.proximal import LatentGuard, Proximal, apply_guard, guard_keep, proximal_delta
from models.codec import check_finite
from models.conditioning import Conditioning
from models.guidance import noise_pair


@torch.no_grad()
def denoise(
    pipe,
    cond: torch.Tensor | Conditioning,
    uncond: torch.Tensor | Conditioning,
    latents: torch.Tensor,
    controller: Controller | None,
    num_steps: int,
    guidance_scale: float,
    progress: bool = False,
    on_step: Callable[[int, int], None] | None = None,
    source_offsets: torch.Tensor | None = None,
    prox: Proximal | None = None,
    guard: LatentGuard | None = None,
) -> tuple[torch.Tensor, dict]:
    """Run ``num_steps`` DDIM steps on B rows at once.

    Args:
        cond: conditional text embeddings [B, 77, d] (SDXL: a ``Conditioning`` with pooled
            [B, p] and time ids [B, 6]).
        uncond: unconditional embeddings, [1, 77, d] for every step or [T, 1, 77, d] one per step
            (null-text inversion's), shared by every row (SDXL: a ``Conditioning``, pooled
            [1, p] or [T, 1, p]).
        latents: starting latent [1, 4, h, w] (shared by every row) or [B, 4, h, w].
        controller: attention controller, or None.
        on_step: called after each step with (steps done, num_steps); it may raise to stop the
            loop between steps (cooperative cancellation).
        source_offsets: [T, 1, 4, h, w] added to row 0 (the source) after each scheduler step,
            before the controller's step end (DirectInversion's offsets); None: nothing added.
        prox: proximal guidance (``editing.proximal``): the guidance difference of the whole
            batch is thresholded before the guided step; None: plain guidance.
        guard: the latent guard: after each scheduler step at a timestep below ``guard.timestep``,
            every row is put back on ``guard.trajectory`` outside the region where the proximal
            step kept guidance (without ``prox``: where an l0 step would have, guidance plain).

    Order within a step: UNet, guidance (proximal or plain), scheduler step, source offset, latent
    guard, then the controller (local blend).

    Returns:
        (latents [B, 4, h, w], stats): stats counts UNet calls and explicit/fused attention calls.

    Raises:
        NonFiniteError: the latents became NaN or infinite at a step (checked once per step,
            before ``on_step``; float16 overflow on real weights is the usual cause).
    """
    rows = cond.shape[0]
    dtype = pipe.unet.dtype
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_steps, device=pipe.device)
    z = latents.to(pipe.device, dtype).expand(rows, -1, -1, -1).clone() * scheduler.init_noise_sigma
    per_step = uncond.ndim == 4
    if per_step and uncond.shape[0] < num_steps:
        raise ValueError(f"{uncond.shape[0]} null embeddings for {num_steps} steps: invert with the same number of steps")
    if source_offsets is not None and source_offsets.shape[0] != num_steps:
        raise ValueError(f"{source_offsets.shape[0]} offsets for {num_steps} steps: invert with the same number of steps")
    if guard is not None and guard.trajectory.shape[0] != num_steps + 1:
        raise ValueError(f"the latent guard needs a trajectory of {num_steps + 1} latents, not {guard.trajectory.shape[0]}")
    with controlled_attention(pipe.unet, controller) as hook:
        for i, t in enumerate(tqdm(scheduler.timesteps, desc="editing", disable=not progress, leave=False)):
            hook.step = i
            out_uncond, out_cond = noise_pair(pipe, z, t, cond, uncond[i] if per_step else uncond)
            delta = out_cond - out_uncond
            guarded = guard is not None and int(t) < guard.timestep
            if prox is not None or guarded:
                kept, tau = proximal_delta(delta, prox if prox is not None else guard.region_rule(None))
                delta = kept if prox is not None else delta  # without prox the guidance stays plain
            z = scheduler.step(out_uncond + guidance_scale * delta, t, z, eta=0.0).prev_sample
            if source_offsets is not None:
                z = torch.cat([z[:1] + source_offsets[i].to(z.device, z.dtype), z[1:]])
            if guarded:
                target = guard.trajectory[num_steps - i - 1]
                z = apply_guard(z, target, guard_keep(kept, tau, guard.radius), guard.rate)
            if controller is not None:
                z = controller.on_step_end(z, i)
            check_finite(z, "editing", i + 1, num_steps)
            if on_step is not None:
                on_step(i + 1, num_steps)
        stats = {"unet_calls": num_steps, "explicit_attention_calls": hook.explicit_calls,
                 "fused_attention_calls": hook.fused_calls}
    return z, stats
