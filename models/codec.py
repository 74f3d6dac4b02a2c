"""Moving between the user's world and the model's: prompts → embeddings, images ↔ latents.

SD 1.x/2.x prompts become one tensor (``encode_text``); SDXL prompts become a ``Conditioning``
(``encode_prompts``): both text encoders' penultimate hidden states concatenated, the second
encoder's pooled embedding, and the time ids, built as diffusers' ``StableDiffusionXLPipeline``
builds them.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from models.conditioning import Conditioning


class PromptError(ValueError):
    """A prompt cannot be used as given; the message says how to fix it."""


class NonFiniteError(RuntimeError):
    """A latent or a decoded image became NaN or infinite (on real weights, almost always float16
    overflow); the message names the stage and the step and says to run again in float32."""


def check_finite(x: torch.Tensor, stage: str, step: int | None = None, total: int | None = None,
                 detail: str | None = None, what: str = "the latent") -> None:
    """Raise NonFiniteError unless every value of ``x`` is finite.

    One ``torch.isfinite(x).all()`` (a device sync on a GPU); ``x`` itself is left untouched.
    The message reads "``what`` became NaN at ``stage`` step ``step`` of ``total`` (``detail``)",
    or "during ``stage``" without a step.
    """
    if bool(torch.isfinite(x).all()):
        return
    kind = "NaN" if bool(torch.isnan(x).any()) else "infinite"
    where = f"during {stage}" if step is None else f"at {stage} step {step} of {total}"
    if detail:
        where += f" ({detail})"
    raise NonFiniteError(f"{what} became {kind} {where}; this usually means float16 overflowed: "
                         "run again with --dtype fp32")


def check_prompt(tokenizer, prompt: str, what: str = "prompt") -> None:
    """Raise PromptError if ``prompt`` is empty or longer than the text encoder's 77 tokens.

    ``tokenizer`` may be a list of tokenizers (SDXL's two, from ``tokenizers``): the prompt must
    fit each of them."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError(f"the {what} is empty: describe the image in words")
    for tok in tokenizer if isinstance(tokenizer, (list, tuple)) else [tokenizer]:
        count = len(tok(prompt, add_special_tokens=True).input_ids)
        limit = tok.model_max_length
        if count > limit:
            raise PromptError(
                f"the {what} '{prompt[:60]}…' is {count} tokens long, over the limit of {limit} "
                f"(start and end tokens included): shorten it by about {count - limit} tokens"
            )


def is_xl(pipe) -> bool:
    """Whether ``pipe`` is an SDXL pipeline (two text encoders, pooled embeddings, time ids)."""
    return getattr(pipe, "text_encoder_2", None) is not None


def tokenizers(pipe) -> list:
    """The pipeline's tokenizers: SD's one, or SDXL's two (a prompt must fit both)."""
    return [pipe.tokenizer, pipe.tokenizer_2] if is_xl(pipe) else [pipe.tokenizer]


@torch.no_grad()
def encode_text(pipe, prompts: list[str]) -> torch.Tensor:
    """Text-encoder last hidden states for ``prompts``, padded to 77 tokens.

    Returns [len(prompts), 77, d] in the pipeline's dtype, on its device.
    """
    ids = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return pipe.text_encoder(ids.to(pipe.device))[0].to(pipe.unet.dtype)


def _token_ids(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def _encode_xl(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's text embeddings [B, 77, d1 + d2] (penultimate hidden states of both encoders,
    concatenated) and pooled embeddings [B, p] (the second encoder's projected output)."""
    hidden = []
    pooled = None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        out = encoder(_token_ids(tokenizer, prompts).to(encoder.device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds [B, p]
            pooled = out[0]
    if pooled is None:
        raise ValueError("SDXL's second text encoder gave no pooled embedding: it must be a CLIPTextModelWithProjection")
    return torch.cat(hidden, dim=-1), pooled


def time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]) -> torch.Tensor:
    """SDXL's added time ids [1, 6]: (original h, w, crop top, left, target h, w) in pixels."""
    return torch.tensor([[*original_size, *crop_top_left, *target_size]], dtype=torch.float32)


def native_time_ids(pipe) -> torch.Tensor:
    """The time ids diffusers uses for a generated image of the model's native size: [1, 6]."""
    side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    return time_ids((side, side), (0, 0), (side, side))


def check_time_ids(pipe, ids: torch.Tensor) -> None:
    """Raise ValueError unless ``ids`` [.., 6] and the pooled size fill the UNet's added
    embedding (a model config that does not fit diffusers' SDXL conditioning)."""
    expected = pipe.unet.add_embedding.linear_1.in_features
    given = pipe.unet.config.addition_time_embed_dim * ids.shape[-1] + pipe.text_encoder_2.config.projection_dim
    if expected != given:
        raise ValueError(f"the UNet expects an added embedding of {expected} values, the time ids and pooled "
                         f"embedding give {given}: the model's config does not fit SDXL's conditioning")


def encode_prompts(pipe, prompts: list[str], ids: torch.Tensor | None = None) -> torch.Tensor | Conditioning:
    """The conditional input for ``prompts``: ``encode_text`` on SD 1.x/2.x; on SDXL a
    ``Conditioning`` with embeds [B, 77, 2048], pooled [B, 1280] and time ids [B, 6] (``ids``
    [1 or B, 6], default ``native_time_ids``), in the UNet's dtype (time ids in float32)."""
    if not is_xl(pipe):
        return encode_text(pipe, prompts)
    embeds, pooled = _encode_xl(pipe, prompts)
    ids = native_time_ids(pipe) if ids is None else ids.float()
    check_time_ids(pipe, ids)
    dtype = pipe.unet.dtype
    return Conditioning(embeds.to(dtype), pooled.to(dtype), ids.to(pipe.device).expand(len(prompts), -1))


def encode_null(pipe) -> torch.Tensor | Conditioning:
    """The unconditional input of one row: the empty prompt's embedding [1, 77, d] on SD; on
    SDXL what diffusers uses for an empty negative prompt, a ``Conditioning`` (embeds
    [1, 77, 2048], pooled [1, 1280], no time ids: it takes the conditional rows'), all zeros when
    the pipeline's config says ``force_zeros_for_empty_prompt``."""
    if not is_xl(pipe):
        return encode_text(pipe, [""])
    embeds, pooled = _encode_xl(pipe, [""])
    if pipe.config.get("force_zeros_for_empty_prompt", True):  # diffusers' default
        embeds, pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
    return Conditioning(embeds.to(pipe.unet.dtype), pooled.to(pipe.unet.dtype))


@torch.no_grad()
def encode_image(pipe, image: Image.Image) -> torch.Tensor:
    """VAE latent of an RGB image: ``x/127.5 − 1`` → encoder → mean × scaling factor.

    Returns [1, 4, h/8, w/8] in the pipeline's dtype.
    """
    array = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1)
    pixels = array.permute(2, 0, 1)[None].to(pipe.device, pipe.vae.dtype)
    latent = pipe.vae.encode(pixels).latent_dist.mean
    check_finite(latent, "encoding", what="the photo's latent")
    return latent * pipe.vae.config.scaling_factor


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> list[Image.Image]:
    """Images from latents [B, 4, h, w]: ``latent/scale`` → decoder → ``(x/2 + 0.5).clamp(0, 1)``.

    Raises:
        NonFiniteError: a latent or the decoded image holds NaN or infinite values (it would be
            written as a black image otherwise).
    """
    check_finite(latents, "decoding")
    images = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample.float()
    check_finite(images, "decoding", what="the decoded image")
    images = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.rint(im * 255).astype(np.uint8)) for im in images]
