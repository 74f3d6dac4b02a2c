"""A token grounding loss for training the shapes model: each object word's cross-attention should
fall on its object, the background words' on the background.

Stable Diffusion's word maps are localized because of its data's scale; Prompt-to-Prompt relies on
that (a word's map is where the word is drawn). A 64-pixel model trained on one or two shapes
learns the layout without it: its UNet can read "red" from anywhere. The loss here (the token term
of TokenCompose, Wang et al. 2024: one minus the share of a token's attention mass inside its
region, squared) teaches the property the paper assumes, from the renderer's masks.
``pixel_loss`` adds the shape of the map: the token term is met by a map peaked at the object's
centre, while Prompt-to-Prompt's pictures and local blend threshold the map at a fraction of its
maximum, so a word should cover its whole object evenly (each map, divided by its maximum, against
the region, by binary cross-entropy; our reading of TokenCompose's pixel term).
``locality_loss`` asks the same of self-attention: a pixel should attend within its own region
(its object, or the background), which Prompt-to-Prompt's self-attention injection assumes when it
carries the source's maps into an edit whose background or object has changed.

``GroundingProcessor`` is a diffusers attention processor for the cross-attention layers that
computes the maps explicitly and keeps them, with their graph, for the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from data.shapes import Scene


class GroundingProcessor:
    """Plain attention (softmax(QKᵀ/√d)·V) that appends each call's maps, averaged over heads
    ([B, HW, tokens]), to ``self.maps``; the caller clears it after each step."""

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] = []

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        residual = hidden_states
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.maps.append(probs.view(batch, -1, *probs.shape[1:]).mean(1))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install(unet, self_attention: GroundingProcessor | None = None) -> GroundingProcessor:
    """Put one shared ``GroundingProcessor`` on every cross-attention layer of ``unet``, and
    ``self_attention`` (if given) on every self-attention layer (else they keep their own
    processor). Returns the cross-attention one."""
    grounding = GroundingProcessor()
    unet.set_attn_processor({name: grounding if name.endswith("attn2.processor")
                             else self_attention if self_attention is not None and name.endswith("attn1.processor")
                             else proc for name, proc in unet.attn_processors.items()})
    return grounding


@dataclass
class Targets:
    """Where a caption's words should look: ``regions`` [77, 64, 64] float (a token's region, zero
    for tokens left free) and ``used`` [77] bool."""

    regions: torch.Tensor
    used: torch.Tensor


@lru_cache(maxsize=4096)
def _word_length(tokenizer, word: str) -> int:
    return len(tokenizer(word, add_special_tokens=False).input_ids)


def word_tokens(caption: str, tokenizer) -> list[tuple[str, list[int]]]:
    """Each word of ``caption`` with its token positions in the padded prompt (position 0 is the
    start token)."""
    out, position = [], 1
    for word in caption.split():
        count = _word_length(tokenizer, word)
        out.append((word, list(range(position, position + count))))
        position += count
    return out


def _background(scene: Scene) -> torch.Tensor:
    """The pixels no object of ``scene`` covers, float [H, W] (1 background, 0 object)."""
    side = scene.masks[0].shape[0] if scene.masks else scene.image.size[0]
    anything = np.zeros((side, side), bool)
    for m in scene.masks:
        anything |= m
    return torch.from_numpy(~anything).float()


def token_labels(scene: Scene, tokenizer, length: int = 77) -> torch.Tensor:
    """Which region of ``scene_labels`` each token of the scene's caption should look at, int64
    [length]: 0 the background, 1 + k the scene's k-th object, −1 a token left free.

    Size, colour and shape words → their object (objects in caption order, left to right); the
    background colour and "background" → the background. Articles, "and", "on" and padding are free."""
    labels = torch.full((length,), -1, dtype=torch.long)
    ordered = sorted(range(len(scene.objects)), key=lambda i: scene.objects[i].center[0])
    obj, after_on = 0, False
    for word, positions in word_tokens(scene.caption, tokenizer):
        if word == "and":
            obj += 1
            continue
        if word == "on":
            after_on = True
            continue
        if word == "a" or positions[-1] >= length:
            continue
        for p in positions:
            labels[p] = 0 if after_on else 1 + ordered[obj]
    return labels


def regions_from_labels(labels: torch.Tensor, tokens: torch.Tensor) -> Targets:
    """Grounding targets from region labels and token labels, for a batch.

    Args:
        labels: [B, R, H, W] one-hot regions (``scene_labels``), at any side.
        tokens: [B, T] int, each token's region index or −1 (``token_labels``).

    Returns:
        ``Targets`` with regions [B, T, H, W] (zero for free tokens) and used [B, T] bool."""
    used = tokens >= 0
    index = tokens.clamp_min(0)[..., None, None].expand(-1, -1, *labels.shape[2:])
    regions = torch.gather(labels, 1, index) * used[..., None, None].to(labels.dtype)
    return Targets(regions, used)


def scene_targets(scene: Scene, tokenizer, length: int = 77) -> Targets:
    """The regions of a scene's caption words (``token_labels``): size, colour and shape words →
    their object's mask, the background words → every pixel no object covers; ``regions``
    [length, 64, 64], ``used`` [length]."""
    found = regions_from_labels(scene_labels(scene)[None], token_labels(scene, tokenizer, length)[None])
    return Targets(found.regions[0], found.used[0])


def _per_layer(maps: list[torch.Tensor], regions: torch.Tensor):
    """Per layer, its maps as [B, tokens, h·w] and the regions average-pooled to its side, [B, tokens, h·w]."""
    for probs in maps:
        side = int(round(probs.shape[1] ** 0.5))
        yield probs.transpose(1, 2), F.adaptive_avg_pool2d(regions, side).flatten(2)


def grounding_loss(maps: list[torch.Tensor], regions: torch.Tensor, used: torch.Tensor,
                   count: torch.Tensor | float | None = None) -> torch.Tensor:
    """Mean over layers and grounded tokens of (1 − share of the token's attention inside its region)².

    Args:
        maps: cross-attention maps per layer, each [B, h·w, tokens] (h = w).
        regions: [B, tokens, H, W] target regions at pixel resolution, pooled to each layer's side.
        used: [B, tokens] bool, the tokens to ground (a dropped caption has none).
        count: what the sum over tokens is divided by; None: this batch's grounded tokens. A
            data-parallel process gives the whole batch's count over the processes, so that the
            processes' average is the whole batch's mean.

    Returns:
        A scalar (zero when no token is grounded).
    """
    if not used.any():
        return maps[0].sum() * 0
    weight = used.float()
    count = weight.sum() if count is None else count
    losses = []
    for mass, pooled in _per_layer(maps, regions):
        share = (mass * pooled).sum(-1) / mass.sum(-1).clamp_min(1e-8)
        losses.append((((1 - share) ** 2) * weight).sum() / count)
    return torch.stack(losses).mean()


def pixel_loss(maps: list[torch.Tensor], regions: torch.Tensor, used: torch.Tensor,
               count: torch.Tensor | float | None = None) -> torch.Tensor:
    """Mean over layers, grounded tokens and pixels of the binary cross-entropy between a token's
    map divided by its maximum and its region: zero for a map flat on its region and zero outside.

    Args:
        maps: cross-attention maps per layer, each [B, h·w, tokens] (h = w).
        regions: [B, tokens, H, W] target regions in [0, 1], pooled to each layer's side.
        used: [B, tokens] bool, the tokens to ground.
        count: the number of tokens the mean is over; None: this batch's grounded tokens (see
            ``grounding_loss``).

    Returns:
        A scalar (zero when no token is grounded).
    """
    if not used.any():
        return maps[0].sum() * 0
    count = used.sum() if count is None else count
    losses = []
    for mass, pooled in _per_layer(maps, regions):
        mass, pooled = mass[used], pooled[used]  # [N, h·w], the grounded tokens
        scaled = (mass / mass.amax(-1, keepdim=True).clamp_min(1e-8)).clamp(1e-6, 1 - 1e-6)
        losses.append(F.binary_cross_entropy(scaled, pooled, reduction="sum") / (count * mass.shape[-1]))
    return torch.stack(losses).mean()


def scene_labels(scene: Scene, regions: int = 3) -> torch.Tensor:
    """One-hot regions of a scene, [regions, H, W] float: 0 the background (no object), 1… each
    object's mask in the scene's order (channels past the objects stay zero)."""
    background = _background(scene)
    labels = torch.zeros(regions, *background.shape)
    labels[0] = background
    for k, m in enumerate(scene.masks[: regions - 1]):
        labels[1 + k] = torch.from_numpy(m).float()
    return labels


def locality_loss(maps: list[torch.Tensor], labels: torch.Tensor, keep: torch.Tensor | None = None,
                  count: torch.Tensor | float | None = None) -> torch.Tensor:
    """Mean over layers and pixels of (1 − share of a pixel's self-attention on its own region)².

    Args:
        maps: self-attention maps per layer, each [B, h·w, h·w] (queries × keys, h = w).
        labels: [B, R, H, W] one-hot regions (``scene_labels``), average-pooled to each layer's side,
            so a pixel on an edge counts as part of each region by its share.
        keep: [B] bool, the scenes that count (e.g. those noised below a timestep); None: all.
        count: the number of scenes the mean is over; None: those kept here (see ``grounding_loss``).

    Returns:
        A scalar: 0 when every pixel attends only within its region (or no scene counts)."""
    losses = []
    for probs in maps:
        side = int(round(probs.shape[1] ** 0.5))
        pooled = F.adaptive_avg_pool2d(labels, side).flatten(2)  # [B, R, h·w]
        on_region = torch.einsum("bqk,brk->brq", probs, pooled)  # each query's mass on each region
        share = (on_region * pooled).sum(1)  # [B, h·w]: on its own region, edges shared
        per_scene = ((1 - share) ** 2).mean(1)
        if keep is not None:
            per_scene = per_scene[keep]
        losses.append(per_scene.sum() / (max(per_scene.numel(), 1) if count is None else count))
    return torch.stack(losses).mean()
