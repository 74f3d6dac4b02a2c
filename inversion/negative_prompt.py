"""Negative-prompt inversion (Miyake et al.): no optimization, the source prompt's own embedding
stands in for every step's null embedding, so guidance cancels on the source branch."""

from __future__ import annotations

import torch


def negative_prompt_embeddings(cond: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Per-step null embeddings for negative-prompt inversion.

    Args:
        cond: the source prompts' embeddings [N, 77, d].

    Returns:
        [T, N, 77, d]: ``cond`` repeated for every step.
    """
    return cond.detach()[None].expand(num_steps, -1, -1, -1).clone()
