"""Fixed-point inversion (SPDInv, Li et al., ECCV 2024) and its anchored variant (DCI, Dual-
Conditional Inversion, NeurIPS 2025).

DDIM inversion evaluates ε at the lower latent, so sampling back from its result does not land
where it started. Here each step's guess z_t is refined, by a few AdamW steps on the latent itself,
towards a fixed point of the inversion step: ``z_t = next(ε(z_t, t, c), t, z_{t−Δ})``. Where it is
reached, the conditional DDIM step from z_t lands on z_{t−Δ} exactly, so an edit that uses the
source prompt as every step's negative (negative-prompt guidance) retraces the trajectory.

DCI's anchor pulls the predicted noise toward the photo's latent by a unit step of size λ inside
the loop (``ε̂ = ε − λ (ε − z_0)/‖ε − z_0‖``, the correction not differentiated).

Several photos are inverted together in one UNet batch; each keeps its own optimizer and early
stop. The model's weights are frozen for the call, so gradients reach the latents only.
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from inversion.ddim import ddim_next, predicted_noise
from inversion.null_text import InversionError
from models.codec import check_finite
from models.conditioning import Conditioning, unet_output
from models.frozen import with_frozen_weights

# SPDInv's defaults (P2P/SPDInv.py): AdamW at lr 1e-3, at most 25 rounds, stop below 5e-6
LEARNING_RATE = 1e-3
STEPS = 25
THRESHOLD = 5e-6
# DCI's paper: λ = 2 with K = 5 rounds (its script's defaults are λ = 1, K = 10)
ANCHOR_STEPS = 5


def anchored(eps: torch.Tensor, anchor: torch.Tensor | None, strength: float) -> torch.Tensor:
    """DCI's reference anchor: ``ε − λ (ε − z_0) / ‖ε − z_0‖`` per item, the correction detached.

    Args:
        eps: predicted noise [N, 4, h, w]; anchor: the photos' latents z_0 [N, 4, h, w] (None or
            ``strength`` 0: ``eps`` unchanged).

    Returns:
        [N, 4, h, w], differentiable through ``eps`` only.
    """
    if anchor is None or strength == 0:
        return eps
    with torch.no_grad():
        diff = eps - anchor
        norm = diff.flatten(1).norm(dim=1).clamp_min(torch.finfo(diff.dtype).tiny).view(-1, 1, 1, 1)
        correction = strength * diff / norm
    return eps - correction


@with_frozen_weights
def fixed_point_inversion(
    pipe,
    latent: torch.Tensor,
    cond: torch.Tensor | Conditioning,
    num_steps: int,
    max_steps: int = STEPS,
    anchor: float = 0.0,
    lr: float = LEARNING_RATE,
    threshold: float = THRESHOLD,
    progress: bool = False,
    counts: dict | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Invert latents with fixed-point refinement of every DDIM-inversion step.

    Args:
        latent: the photos' latents z_0 [N, 4, h, w].
        cond: the source prompts' conditional input [N, 77, d] (SDXL: a ``Conditioning``).
        max_steps: K, the most AdamW steps per DDIM step (0: plain DDIM inversion).
        anchor: DCI's λ (0: SPDInv, no anchor).
        lr, threshold: AdamW's learning rate; a photo's step ends after the update whose loss
            (computed before it) is below ``threshold``.
        counts: optional dict whose "unet_forward" and "unet_backward" entries are incremented.
        on_step: called after each DDIM step with (steps done, num_steps); it may raise to stop.

    Returns:
        (trajectory [T+1, N, 4, h, w] in the model's dtype, stats) where stats holds, per step
        and item, "residual" (the last loss computed, ‖z − next(ε̂(z))‖² mean) and "iterations"
        (AdamW steps taken).

    Raises:
        InversionError: a refinement loss became NaN or infinite. NonFiniteError: a step's latent
            did (float16 overflow).
    """
    counts = counts if counts is not None else {}
    counts.setdefault("unet_forward", 0)
    counts.setdefault("unet_backward", 0)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_steps, device=pipe.device)
    unet, dtype = pipe.unet, pipe.unet.dtype
    work = torch.promote_types(dtype, torch.float32)  # latents and loss never in fp16/bf16
    cond = cond.detach().to(pipe.device, dtype)
    z = latent.detach().to(pipe.device, dtype)
    photo = z.to(work) if anchor else None
    n = z.shape[0]
    trajectory = [z]
    residual = [[0.0] * n for _ in range(num_steps)]
    iterations = [[0] * n for _ in range(num_steps)]

    def eps(sample, t, rows):
        counts["unet_forward"] += 1
        c = cond if rows is None else cond[rows]
        return predicted_noise(scheduler, unet_output(unet, sample, t, c), t, sample)

    bar = tqdm(total=num_steps, desc="fixed-point", disable=not progress, leave=False)
    for i, t in enumerate(scheduler.timesteps.flip(0)):
        start = z
        with torch.no_grad():
            guess = ddim_next(scheduler, eps(start, t, None), t, start)
        params = [guess[k : k + 1].detach().to(work).clone().requires_grad_(True) for k in range(n)]
        optimizers = [torch.optim.AdamW([p], lr=lr) for p in params]
        active = list(range(n))
        for j in range(max_steps):
            rows = torch.tensor(active, device=z.device)
            current = torch.cat([params[k] for k in active])
            with torch.enable_grad():
                predicted = eps(current.to(dtype), t, rows).to(work)
                predicted = anchored(predicted, None if photo is None else photo[rows], anchor)
                landed = ddim_next(scheduler, predicted, t, start[rows].to(work))
                item_loss = (current - landed).pow(2).flatten(1).mean(1)
                if not torch.isfinite(item_loss).all():
                    raise InversionError(
                        f"fixed-point inversion diverged at step {i} (loss {item_loss.tolist()}). This is "
                        "usually float16 overflow: run with --dtype fp32 (or bf16)."
                    )
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                item_loss.sum().backward()
            counts["unet_backward"] += 1
            values = item_loss.detach().tolist()
            for pos, k in enumerate(active):
                optimizers[k].step()
                residual[i][k] = values[pos]
                iterations[i][k] = j + 1
            active = [k for pos, k in enumerate(active) if values[pos] >= threshold]
            if not active:
                break
        z = torch.cat([p.detach() for p in params]).to(dtype)
        check_finite(z, "inversion", i + 1, num_steps, "fixed-point")
        trajectory.append(z)
        bar.set_postfix(step=i, residual=f"{max(residual[i]):.2e}")
        bar.update()
        if on_step is not None:
            on_step(i + 1, num_steps)
    bar.close()
    return torch.stack(trajectory), {"residual": residual, "iterations": iterations}
