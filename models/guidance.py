"""Classifier-free guidance: one UNet call on unconditional and conditional rows together."""

from __future__ import annotations

import torch

from models.conditioning import Conditioning, as_conditioning, cat_rows, unet_output


def guided_noise(
    pipe, z: torch.Tensor, t, cond: torch.Tensor | Conditioning, null: torch.Tensor | Conditioning,
    guidance_scale: float,
) -> torch.Tensor:
    """``ε_u + w (ε_c − ε_u)`` for B rows in one batch of 2B (unconditional rows first).

    Args:
        z: latents [B, 4, h, w], on the UNet's device in its dtype; cond: [B, 77, d] (or a
            ``Conditioning`` with SDXL's pooled embeddings and time ids); null: unconditional
            embeddings [B or 1, 77, d] (or a ``Conditioning``; its rows take cond's time ids).

    Returns:
        The guided model output [B, 4, h, w] (what the scheduler's ``step`` takes).
    """
    out_uncond, out_cond = noise_pair(pipe, z, t, cond, null)
    return out_uncond + guidance_scale * (out_cond - out_uncond)


def noise_pair(
    pipe, z: torch.Tensor, t, cond: torch.Tensor | Conditioning, null: torch.Tensor | Conditioning,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unconditional and conditional model outputs for B rows, from one UNet batch of 2B.

    Args: as ``guided_noise``. Returns (out_uncond, out_cond), each [B, 4, h, w].
    """
    model_in = pipe.scheduler.scale_model_input(torch.cat([z, z]), t)
    batch = cat_rows(as_conditioning(null), as_conditioning(cond), z.shape[0])
    out_uncond, out_cond = unet_output(pipe.unet, model_in, t, batch).chunk(2)
    return out_uncond, out_cond
