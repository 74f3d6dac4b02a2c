"""Prompt-to-Prompt attention control as tensor functions: no model in here.

A controller is asked, per attention layer and step, whether it needs that layer's attention
probabilities (``needs_maps``); if so it receives the conditional half, shaped
[B, heads, pixels, tokens] (row 0 the source prompt, rows 1.. the targets), and returns the maps
the layer should use (``on_attention``). After each scheduler step it may change the latents
(``on_step_end``; local blend does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

CrossEdit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LayerInfo:
    """One attention layer of the UNet: its processor name, its place and its kind."""

    name: str
    place: str  # "down" | "mid" | "up"
    is_cross: bool


def layer_info(processor_name: str) -> LayerInfo:
    """Describe a UNet attention layer from its processor name (e.g.
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor")."""
    place = "down" if processor_name.startswith("down") else "up" if processor_name.startswith("up") else "mid"
    return LayerInfo(processor_name, place, ".attn2." in processor_name)


class Controller(Protocol):
    """What the attention processors and the sampler call; see the module docstring."""

    def needs_maps(self, layer: LayerInfo, pixels: int, step: int) -> bool: ...

    def on_attention(self, maps: torch.Tensor, layer: LayerInfo, step: int) -> torch.Tensor: ...

    def on_step_end(self, latents: torch.Tensor, step: int) -> torch.Tensor: ...


# ---------------------------------------------------------------- cross-attention edits
def replace_edit(mapper: torch.Tensor) -> CrossEdit:
    """Word swap: ``Edit = M_src · P``. ``mapper`` is [K, L, L], one per target prompt."""

    def edit(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        return torch.einsum("hpi,kij->khpj", src, mapper.to(src.dtype))

    return edit


def refine_edit(mapper: torch.Tensor, alphas: torch.Tensor) -> CrossEdit:
    """Added phrase: aligned target tokens read the source token they align to, new tokens keep
    their own maps. ``mapper`` [K, L] int64 (source index per target token), ``alphas`` [K, L]."""

    def edit(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        copied = src[:, :, mapper].permute(2, 0, 1, 3)  # [K, H, P, L]
        a = alphas.to(src.dtype)[:, None, None, :]
        return copied * a + tgt * (1 - a)

    return edit


def reweight_edit(equalizer: torch.Tensor, previous: CrossEdit | None) -> CrossEdit:
    """Fader: scale token columns of the previous edit (or of the source maps) by ``equalizer``
    [K, L]. Maps are not renormalized."""

    def edit(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        base = previous(src, tgt) if previous is not None else src.expand_as(tgt)
        return base * equalizer.to(src.dtype)[:, None, None, :]

    return edit


# ---------------------------------------------------------------- attention store
@dataclass
class AttentionStore:
    """Running sums over steps of cross-attention maps, summed over heads, per layer.

    Layers with at most ``max_pixels`` pixels are kept (32² at 512 px, as the reference).
    ``sums[name]`` is [B, pixels, 77] (float32), ``heads[name]`` the head count, ``places[name]``
    the layer's place; ``steps`` counts finished steps. ``latent_hw`` is the latent's (h, w), from
    which each layer's map shape follows (a layer downsampled f times is (h/f, w/f)); None means
    square maps.
    """

    max_pixels: int = 32 * 32
    latent_hw: tuple[int, int] | None = None
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)
    places: dict[str, str] = field(default_factory=dict)
    steps: int = 0

    def wants(self, layer: LayerInfo, pixels: int) -> bool:
        return layer.is_cross and pixels <= self.max_pixels

    def add(self, maps: torch.Tensor, layer: LayerInfo) -> None:
        """Add one layer's maps [B, H, P, L] of the current step."""
        summed = maps.sum(1, dtype=torch.float32)
        if layer.name in self.sums:
            self.sums[layer.name] += summed
        else:
            self.sums[layer.name] = summed
            self.heads[layer.name] = maps.shape[1]
            self.places[layer.name] = layer.place

    def map_shape(self, pixels: int) -> tuple[int, int]:
        """(rows, columns) of a layer's map with ``pixels`` pixels."""
        if self.latent_hw is None:
            side = int(round(pixels**0.5))
            return side, side
        h, w = self.latent_hw
        factor = max(1, int(round((h * w / pixels) ** 0.5)))
        return h // factor, w // factor

    def shapes(self, places: tuple[str, ...] = ("down", "up")) -> list[tuple[int, int]]:
        """(rows, columns) of the stored maps in the given places, smallest first."""
        pixels = {s.shape[1] for n, s in self.sums.items() if self.places[n] in places}
        return [self.map_shape(p) for p in sorted(pixels)]

    def mean_map(self, shape: int | tuple[int, int], places: tuple[str, ...] = ("down", "up")) -> torch.Tensor:
        """Sum over steps of the head-and-layer average of the maps of ``shape`` (rows, columns),
        or of side ``shape`` when it is one number.

        Returns [B, rows, columns, L]; divide by ``steps`` for the average over steps.
        """
        rows, cols = (shape, shape) if isinstance(shape, int) else shape
        names = [n for n, s in self.sums.items() if self.places[n] in places and s.shape[1] == rows * cols]
        if not names:
            raise ValueError(f"no cross-attention maps of {rows}×{cols} were stored (have {self.shapes(places)})")
        total = sum(self.sums[n] for n in names) / sum(self.heads[n] for n in names)
        return total.reshape(total.shape[0], rows, cols, total.shape[-1])


def default_blend_shape(latent_hw: tuple[int, int], available: list[tuple[int, int]]) -> tuple[int, int]:
    """The maps local blend reads: a quarter of the latent's sides (16² at 512 px, 24×16 at
    768×512) where the down/up paths have cross layers that small, else the smallest they have."""
    quarter = (latent_hw[0] // 4, latent_hw[1] // 4)
    if quarter in available:
        return quarter
    if not available:
        raise ValueError("local blend needs cross-attention maps, but none were stored")
    return available[0]


# ---------------------------------------------------------------- local blend
@dataclass
class LocalBlend:
    """Confine edits to where the blend words attend.

    ``words`` [B, L]: 1 on each prompt's blend-word tokens; ``subtract`` [B, L] or None: tokens
    whose region is cut out of the mask. Applies after steps ``>= start_step``. ``factor``: read
    the maps downsampled this many times from the latent (4: a quarter of its sides), or None for
    ``default_blend_shape``.
    """

    words: torch.Tensor
    subtract: torch.Tensor | None
    threshold: float
    start_step: int
    factor: int | None = None

    def mask(self, store: AttentionStore, latent_hw: tuple[int, int]) -> torch.Tensor:
        """The blend mask [B, 1, h, w] (bool) from the maps stored so far."""
        if self.factor is None:
            shape = default_blend_shape(latent_hw, store.shapes())
        else:
            shape = (latent_hw[0] // self.factor, latent_hw[1] // self.factor)
        maps = store.mean_map(shape)  # [B, rows, cols, L]

        def region(weights: torch.Tensor, pool: bool) -> torch.Tensor:
            m = (maps * weights.to(maps)[:, None, None, :]).sum(-1)[:, None]  # [B, 1, rows, cols]
            if pool:
                m = F.max_pool2d(m, 3, stride=1, padding=1)
            m = F.interpolate(m, size=latent_hw, mode="nearest")
            m = m / m.amax(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)
            m = m > self.threshold
            return m[:1] | m

        mask = region(self.words, pool=True)
        if self.subtract is not None:
            mask = mask & ~region(self.subtract, pool=False)
        return mask

    def apply(self, latents: torch.Tensor, store: AttentionStore) -> torch.Tensor:
        """``z*_t ← z_src_t + mask · (z*_t − z_src_t)`` for every row."""
        mask = self.mask(store, tuple(latents.shape[-2:])).to(latents.dtype)
        return latents[:1] + mask * (latents - latents[:1])


# ---------------------------------------------------------------- the Prompt-to-Prompt controller
@dataclass
class PromptToPromptController:
    """Cross-attention edit with its per-step, per-token schedule, self-attention injection,
    an optional attention store and an optional local blend.

    Attributes:
        cross_edit: Edit(M_src [H,P,L], M* [K,H,P,L]) -> [K,H,P,L], or None for no cross edit.
        cross_alpha: [steps, K, L] schedule α (1 inside the cross-replace window).
        self_steps: (first, end) step indices of self-attention injection.
        self_max_pixels: inject self-attention only in layers with at most this many pixels.
        store: kept maps (for local blend and pictures), or None.
        blend: local blend, or None (needs ``store``).
    """

    cross_edit: CrossEdit | None
    cross_alpha: torch.Tensor | None
    self_steps: tuple[int, int] = (0, 0)
    self_max_pixels: int = 32 * 32
    store: AttentionStore | None = None
    blend: LocalBlend | None = None

    def __post_init__(self) -> None:
        # per-step lookups, computed once: the processors ask for every layer at every step
        self._alpha_steps: list[torch.Tensor | None] = []
        if self.cross_edit is not None and self.cross_alpha is not None:
            for alpha in self.cross_alpha:
                self._alpha_steps.append(alpha[:, None, None, :].clone() if bool(alpha.any()) else None)

    def _cross_active(self, step: int) -> bool:
        return step < len(self._alpha_steps) and self._alpha_steps[step] is not None

    def _self_active(self, pixels: int, step: int) -> bool:
        return self.self_steps[0] <= step < self.self_steps[1] and pixels <= self.self_max_pixels

    def needs_maps(self, layer: LayerInfo, pixels: int, step: int) -> bool:
        if layer.is_cross:
            return self._cross_active(step) or (self.store is not None and self.store.wants(layer, pixels))
        return self._self_active(pixels, step)

    def on_attention(self, maps: torch.Tensor, layer: LayerInfo, step: int) -> torch.Tensor:
        src, tgt = maps[0], maps[1:]
        if layer.is_cross and self._cross_active(step):
            alpha = self._alpha_steps[step].to(maps.device, maps.dtype)  # [K, 1, 1, L]
            tgt = self.cross_edit(src, tgt) * alpha + tgt * (1 - alpha)
            maps = torch.cat([src[None], tgt])
        elif not layer.is_cross and self._self_active(maps.shape[2], step):
            maps = torch.cat([src[None], src[None].expand_as(tgt)])
        if self.store is not None and self.store.wants(layer, maps.shape[2]):
            self.store.add(maps, layer)
        return maps

    def on_step_end(self, latents: torch.Tensor, step: int) -> torch.Tensor:
        if self.store is not None:
            self.store.steps += 1
        if self.blend is not None and step >= self.blend.start_step:
            latents = self.blend.apply(latents, self.store)
        return latents
