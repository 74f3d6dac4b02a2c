"""What the UNet is conditioned on besides the latent and the timestep.

SD 1.x and 2.x take one tensor, the text encoder's hidden states [B, 77, d]. SDXL takes three
things: the two text encoders' penultimate hidden states concatenated [B, 77, 2048], the second
encoder's pooled (projected) embedding [B, 1280], and six "time ids" per row (original height and
width, crop top and left, target height and width), the last two passed to the UNet as
``added_cond_kwargs``. ``Conditioning`` carries the three together; every stage accepts either a
plain tensor (SD 1.x/2.x, unchanged) or a ``Conditioning``.

A ``Conditioning`` indexes like its embedding tensor: ``c[i]`` indexes every field along the
leading axis, so per-step null embeddings ([T, N, 77, d] with pooled [T, N, p]) read as
``nulls[i]`` whether they are a tensor or a ``Conditioning``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Conditioning:
    """Prompt embeddings with SDXL's added conditions.

    Attributes:
        embeds: [..., 77, d] text embeddings (the UNet's ``encoder_hidden_states``).
        pooled: [..., p] pooled text embeddings (SDXL's ``text_embeds``), or None.
        time_ids: [..., 6] (original h, w, crop top, left, target h, w), or None: an unconditional
            row without its own takes the conditional rows' (as diffusers does).
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        """The embedding tensor's shape."""
        return self.embeds.shape

    @property
    def ndim(self) -> int:
        """The embedding tensor's number of axes."""
        return self.embeds.ndim

    @property
    def dtype(self) -> torch.dtype:
        """The embedding tensor's dtype."""
        return self.embeds.dtype

    def __getitem__(self, index) -> "Conditioning":
        """Every field indexed alike along the leading axes (``nulls[i]``: step i's input)."""
        return Conditioning(
            self.embeds[index],
            None if self.pooled is None else self.pooled[index],
            None if self.time_ids is None else self.time_ids[index],
        )

    def map(self, fn) -> "Conditioning":
        """Apply ``fn`` to every tensor present."""
        return Conditioning(fn(self.embeds), None if self.pooled is None else fn(self.pooled),
                            None if self.time_ids is None else fn(self.time_ids))

    def to(self, *args, **kwargs) -> "Conditioning":
        """``Tensor.to`` on every field."""
        return self.map(lambda x: x.to(*args, **kwargs))

    def detach(self) -> "Conditioning":
        """``Tensor.detach`` on every field."""
        return self.map(torch.Tensor.detach)

    def cpu(self) -> "Conditioning":
        """``Tensor.cpu`` on every field."""
        return self.map(torch.Tensor.cpu)


def as_conditioning(cond: torch.Tensor | Conditioning) -> Conditioning:
    """A ``Conditioning`` for a plain embedding tensor (no added conditions), or ``cond`` itself."""
    return cond if isinstance(cond, Conditioning) else Conditioning(cond)


def rows(x: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """``x`` [1 or n, ...] as n rows (expanded, not copied)."""
    return None if x is None else x.expand(n, *x.shape[1:])


def cat_rows(uncond: Conditioning, cond: Conditioning, n: int) -> Conditioning:
    """The UNet batch of classifier-free guidance: n unconditional rows, then n conditional ones.

    ``uncond`` fields are [1 or n, ...]; an unconditional row without time ids takes the
    conditional rows'. Returns a ``Conditioning`` of 2n rows.
    """
    embeds = torch.cat([rows(uncond.embeds, n), rows(cond.embeds, n)])
    if cond.pooled is None:
        return Conditioning(embeds)
    if uncond.pooled is None:
        raise ValueError("the conditional rows have pooled embeddings (SDXL) but the unconditional rows do not")
    time_ids = rows(cond.time_ids, n)
    uncond_ids = time_ids if uncond.time_ids is None else rows(uncond.time_ids, n)
    return Conditioning(embeds, torch.cat([rows(uncond.pooled, n), rows(cond.pooled, n)]),
                        torch.cat([uncond_ids, time_ids]))


def unet_output(unet, sample: torch.Tensor, t, cond: torch.Tensor | Conditioning) -> torch.Tensor:
    """One UNet call: ``sample`` [B, 4, h, w] at timestep ``t`` under ``cond`` (B rows).

    Embeddings are cast to the sample's device and dtype; SDXL's pooled embeddings and time ids go
    in as ``added_cond_kwargs``. Returns the model output [B, 4, h, w].
    """
    c = as_conditioning(cond)
    embeds = c.embeds.to(sample.device, sample.dtype)
    if c.pooled is None:
        return unet(sample, t, encoder_hidden_states=embeds).sample
    if c.time_ids is None:
        raise ValueError("SDXL conditioning needs time ids (original size, crop, target size)")
    added = {"text_embeds": c.pooled.to(sample.device, sample.dtype),
             "time_ids": c.time_ids.to(sample.device, sample.dtype)}
    return unet(sample, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
