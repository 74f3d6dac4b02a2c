"""Negative-prompt inversion (Miyake et al.): no optimization, the source prompt's own embedding
stands in for every step's null embedding, so guidance cancels on the source branch."""

from __future__ import annotations

import torch

from models.conditioning import Conditioning


def negative_prompt_embeddings(cond: torch.Tensor | Conditioning, num_steps: int) -> torch.Tensor | Conditioning:
    """Per-step null embeddings for negative-prompt inversion.

    Args:
        cond: the source prompts' embeddings [N, 77, d], or SDXL's ``Conditioning``.

    Returns:
        [T, N, 77, d]: ``cond`` repeated for every step; on SDXL a ``Conditioning`` with those
        embeddings and the pooled ones [T, N, p] (no time ids: the rows keep the prompt's).
    """
    if isinstance(cond, Conditioning):
        pooled = cond.pooled.detach()[None].expand(num_steps, -1, -1).clone()
        return Conditioning(negative_prompt_embeddings(cond.embeds, num_steps), pooled)
    return cond.detach()[None].expand(num_steps, -1, -1, -1).clone()
