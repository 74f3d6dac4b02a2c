"""The diffusers attention processor that lets a controller read and edit attention maps.

Installed on every attention layer through ``unet.set_attn_processor`` (the public API); a layer
computes explicit probabilities only when the controller asks for them at this step, and otherwise
runs PyTorch's fused ``scaled_dot_product_attention`` like diffusers' own ``AttnProcessor2_0``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from editing.controllers import Controller, LayerInfo, layer_info


@dataclass
class Hook:
    """What every processor of one UNet shares: the controller and the current step."""

    controller: Controller | None
    step: int = 0
    explicit_calls: int = 0
    fused_calls: int = 0


def attention_probs(query: torch.Tensor, key: torch.Tensor, scale: float, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(Q Kᵀ · scale + mask) per head, computed in float32 at least.

    query [N, H, P, d], key [N, H, T, d] → probabilities [N, H, P, T] in the query's dtype.
    """
    work = torch.promote_types(query.dtype, torch.float32)
    scores = torch.matmul(query.to(work), key.to(work).transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask.to(work)
    return scores.softmax(dim=-1).to(query.dtype)


class ControlledAttnProcessor:
    """``AttnProcessor2_0`` with a controller on the conditional half of the attention maps."""

    def __init__(self, hook: Hook, layer: LayerInfo):
        self.hook = hook
        self.layer = layer

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, _, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        pixels = query.shape[2]
        controller = self.hook.controller
        if controller is not None and controller.needs_maps(self.layer, pixels, self.hook.step):
            # the controller sees the conditional half only: the unconditional half stays fused
            self.hook.explicit_calls += 1
            half = batch // 2
            mask_u, mask_c = (None, None) if attention_mask is None else (attention_mask[:half], attention_mask[half:])
            uncond = F.scaled_dot_product_attention(
                query[:half], key[:half], value[:half], attn_mask=mask_u, dropout_p=0.0, is_causal=False, scale=attn.scale
            )
            probs = attention_probs(query[half:], key[half:], attn.scale, mask_c)
            probs = controller.on_attention(probs, self.layer, self.hook.step)
            hidden_states = torch.cat([uncond, torch.matmul(probs.to(value.dtype), value[half:])])
        else:
            self.hook.fused_calls += 1
            hidden_states = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False, scale=attn.scale
            )

        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def controlled_attention(unet, controller: Controller | None) -> Iterator[Hook]:
    """Install a ``ControlledAttnProcessor`` on every attention layer of ``unet`` for the
    duration of the block, and put the original processors back afterwards, also on error.

    Yields the shared ``Hook``; the caller sets ``hook.step`` before each UNet call.
    """
    original = dict(unet.attn_processors)
    hook = Hook(controller)
    unet.set_attn_processor({name: ControlledAttnProcessor(hook, layer_info(name)) for name in original})
    try:
        yield hook
    finally:
        unet.set_attn_processor(dict(original))
