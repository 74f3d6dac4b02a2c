"""Classifier-free guidance: one UNet call on unconditional and conditional rows together."""

from __future__ import annotations

import torch


def guided_noise(pipe, z: torch.Tensor, t, cond: torch.Tensor, null: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """``ε_u + w (ε_c − ε_u)`` for B rows in one batch of 2B (unconditional rows first).

    Args:
        z: latents [B, 4, h, w], on the UNet's device in its dtype; cond: [B, 77, d];
            null: unconditional embeddings [B or 1, 77, d].

    Returns:
        The guided model output [B, 4, h, w] (what the scheduler's ``step`` takes).
    """
    # device and dtype from z: pipe.device and unet.dtype walk every module on each access
    null = null.to(z.device, z.dtype).expand(z.shape[0], -1, -1)
    model_in = pipe.scheduler.scale_model_input(torch.cat([z, z]), t)
    out = pipe.unet(model_in, t, encoder_hidden_states=torch.cat([null, cond.to(z.device, z.dtype)])).sample
    out_uncond, out_cond = out.chunk(2)
    return out_uncond + guidance_scale * (out_cond - out_uncond)
