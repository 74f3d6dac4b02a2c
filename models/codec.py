"""Moving between the user's world and the model's: prompts → embeddings, images ↔ latents."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


class PromptError(ValueError):
    """A prompt cannot be used as given; the message says how to fix it."""


def check_prompt(tokenizer, prompt: str, what: str = "prompt") -> None:
    """Raise PromptError if ``prompt`` is empty or longer than the text encoder's 77 tokens."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError(f"the {what} is empty: describe the image in words")
    count = len(tokenizer(prompt, add_special_tokens=True).input_ids)
    limit = tokenizer.model_max_length
    if count > limit:
        raise PromptError(
            f"the {what} '{prompt[:60]}…' is {count} tokens long, over the limit of {limit} "
            f"(start and end tokens included): shorten it by about {count - limit} tokens"
        )


@torch.no_grad()
def encode_text(pipe, prompts: list[str]) -> torch.Tensor:
    """Text-encoder last hidden states for ``prompts``, padded to 77 tokens.

    Returns [len(prompts), 77, d] in the pipeline's dtype, on its device.
    """
    ids = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return pipe.text_encoder(ids.to(pipe.device))[0].to(pipe.unet.dtype)


@torch.no_grad()
def encode_image(pipe, image: Image.Image) -> torch.Tensor:
    """VAE latent of an RGB image: ``x/127.5 − 1`` → encoder → mean × scaling factor.

    Returns [1, 4, h/8, w/8] in the pipeline's dtype.
    """
    array = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1)
    pixels = array.permute(2, 0, 1)[None].to(pipe.device, pipe.vae.dtype)
    latent = pipe.vae.encode(pixels).latent_dist.mean
    return latent * pipe.vae.config.scaling_factor


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> list[Image.Image]:
    """Images from latents [B, 4, h, w]: ``latent/scale`` → decoder → ``(x/2 + 0.5).clamp(0, 1)``."""
    images = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample
    images = (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.rint(im * 255).astype(np.uint8)) for im in images]
