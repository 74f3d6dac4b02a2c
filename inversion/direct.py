"""DirectInversion (Ju et al., ICLR 2024, "PnP Inversion"): no optimization, one guided pass.

After plain DDIM inversion, walk the trajectory from z*_T: from each z*_t take the guided step the
edit will take (guidance w, the empty prompt as unconditional), and keep how far it lands from the
trajectory's next latent. Adding that offset to the source row after each edit step puts it back
on the trajectory, so its attention maps are the photo's own and it ends at z*_0 exactly. Each
step restarts from the trajectory, never from the guided result (SPEC.md, "DirectInversion").
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from models.codec import check_finite
from models.conditioning import Conditioning
from models.guidance import guided_noise


@torch.no_grad()
def direct_offsets(
    pipe,
    trajectory: torch.Tensor,
    cond: torch.Tensor | Conditioning,
    null: torch.Tensor | Conditioning,
    num_steps: int,
    guidance_scale: float,
    progress: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """The per-step offsets that bring the guided source row back onto ``trajectory``.

    Args:
        trajectory: DDIM-inversion latents z*_0 … z*_T, [T+1, N, 4, h, w].
        cond: the source prompts' conditional input [N, 77, d] (SDXL: a ``Conditioning`` with the
            photos' time ids, exactly what the edit will use).
        null: the unconditional input of the edit: the empty prompt's [1, 77, d] (SDXL: the empty
            negative's ``Conditioning``).
        num_steps, guidance_scale: T and w of the edit.
        on_step: called after each step with (steps done, num_steps); it may raise to stop.

    Returns:
        offsets [T, N, 4, h, w] in float32 (float64 if the model is): step i's offset is
        z*_{T−i−1} − step(ε_u + w(ε_c − ε_u), t_i, z*_{T−i}).

    Raises:
        NonFiniteError: a guided step or its offset became NaN or infinite (float16 overflow).
    """
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_steps, device=pipe.device)
    dtype = pipe.unet.dtype
    work = torch.promote_types(dtype, torch.float32)
    offsets = torch.empty(num_steps, *trajectory.shape[1:], dtype=work)
    for i, t in enumerate(tqdm(scheduler.timesteps, desc="direct offsets", disable=not progress, leave=False)):
        z = trajectory[num_steps - i].to(pipe.device, dtype)
        noise = guided_noise(pipe, z, t, cond, null, guidance_scale)
        landed = scheduler.step(noise, t, z, eta=0.0).prev_sample
        target = trajectory[num_steps - i - 1].to(pipe.device)
        offset = target.to(work) - landed.to(work)
        check_finite(offset, "inversion", i + 1, num_steps, "direct offsets")
        offsets[i] = offset.cpu()
        if on_step is not None:
            on_step(i + 1, num_steps)
    return offsets
