"""ProxEdit's proximal guidance (Han et al., WACV 2024) and the latent guard ("inversion
guidance") that rests on it, as the authors' code computes them (cure-lab/PnPInversion,
``models/p2p/proximal_guidance_forward.py``; SPEC.md, "Proximal guidance", "Inversion guidance").

Pure tensor functions of the guidance difference δ = ε_c − ε_u and the latents; no model inside.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from data.manifest import PROX_MODES



@dataclass(frozen=True)
class Proximal:
    """Proximal guidance: ``mode`` "l0" or "l1" (the authors' names), ``quantile`` Q (τ is the
    Q-quantile of |δ| over the whole batch; Q ≤ 0: τ = −Q)."""

    mode: str
    quantile: float


@dataclass(frozen=True)
class LatentGuard:
    """The latent guard: at timesteps below ``timestep``, outside the proximal step's region
    (dilated by ``radius`` latent pixels), every row is pulled back onto ``trajectory``
    (z*_0 … z*_T, [T+1, 1, 4, h, w]) by ``rate`` (1: replaced). Without proximal guidance the
    region is where an "l0" step at ``quantile`` would keep guidance, and the guidance stays plain
    (the authors' code guards only with the proximal step on)."""

    trajectory: torch.Tensor
    timestep: int
    radius: int = 1
    rate: float = 1.0
    quantile: float = 0.75

    def region_rule(self, prox: Proximal | None) -> Proximal:
        """The thresholding whose kept guidance is the edit region: ``prox``, else l0 at ``quantile``."""
        return prox if prox is not None else Proximal("l0", self.quantile)


def proximal_delta(delta: torch.Tensor, prox: Proximal) -> tuple[torch.Tensor, torch.Tensor]:
    """Threshold the guidance difference as the authors' code does.

    τ is the ``prox.quantile``-quantile of |δ| over every element of the batch (source and target
    rows together), or −Q for Q ≤ 0. "l0": ``δ − clamp(δ, −τ, τ)`` (components within τ become 0,
    the others shrink by τ, despite the name). "l1": that, then the authors' two sequential
    ``where`` steps meant to shrink every nonzero component by τ once more: positive components
    take −τ and then, if that made them negative, +τ again (so those below τ stay as they are);
    negative components take +τ (so those above −τ change sign). This asymmetry is theirs.

    Args:
        delta: ε_c − ε_u, [B, 4, h, w].

    Returns:
        (the thresholded δ [B, 4, h, w] in δ's dtype, τ as a 0-d tensor).
    """
    if prox.mode not in PROX_MODES:
        raise ValueError(f"proximal mode {prox.mode!r} is unknown: use one of {', '.join(PROX_MODES)}")
    if prox.quantile > 0:
        work = torch.promote_types(delta.dtype, torch.float32)  # quantile takes no fp16; fp64 stays exact
        tau = delta.detach().abs().to(work).quantile(prox.quantile).to(delta.dtype)
    else:
        tau = torch.tensor(-prox.quantile, dtype=delta.dtype, device=delta.device)
    shrunk = delta - delta.clamp(-tau, tau)
    if prox.mode == "l1":
        shrunk = torch.where(shrunk > 0, shrunk - tau, shrunk)
        shrunk = torch.where(shrunk < 0, shrunk + tau, shrunk)
    return shrunk, tau


def guard_keep(delta: torch.Tensor, tau: torch.Tensor, radius: int) -> torch.Tensor:
    """Where the latent guard acts: 1 outside the edit region ``|δ| > τ`` (δ after the proximal
    step), the region dilated by ``radius`` pixels in each channel; [B, 4, h, w] in δ's dtype."""
    region = (delta.abs() > tau).to(delta.dtype)
    if radius > 0:
        region = F.max_pool2d(region, kernel_size=2 * radius + 1, stride=1, padding=radius)
    return 1 - region


def apply_guard(z: torch.Tensor, target: torch.Tensor, keep: torch.Tensor, rate: float) -> torch.Tensor:
    """``z − rate (z − target) · keep``: rows put back on the inverted trajectory where ``keep``.

    Args:
        z: latents after a scheduler step [B, 4, h, w]; target: z*_{t−Δ} [1, 4, h, w].
    """
    return z - rate * (z - target.to(z.device, z.dtype)) * keep
