"""A tiny Stable-Diffusion-shaped pipeline, built offline from configs with seeded random weights.

It has SD v1's structure at a fraction of the size: a UNet with cross-attention in its down, mid
and up blocks at two resolutions (16×16 and 8×8 latents), a VAE that downsamples by 8 (128 px
images), a CLIP text encoder, and SD's real 49,408-token tokenizer. Its images are noise, but every
algorithm runs on it in seconds, which is what the tests need.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from models.tokenizer import build_clip_tokenizer

log = logging.getLogger(__name__)

# Bump when anything below changes, so that a stale cached build is never reused.
TINY_VERSION = "tiny-sd-v2"
TINY_V_VERSION = "tiny-v-v1"
CACHE_ENV = "PROMPTEDIT_CACHE_DIR"
SEED = 0

UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=2,
    norm_num_groups=8,
)
VAE_CONFIG = dict(
    sample_size=128,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(16, 32, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    norm_num_groups=8,
    # SD picks its factor (0.18215) so that latents have about unit variance; the random VAE's
    # latents are ~20× smaller, so the same rule gives 3.0 (the sample photo's latent std ≈ 0.8).
    scaling_factor=3.0,
)
# A trained UNet's noise prediction changes slowly with its input; a random one amplifies it, and
# DDIM inversion then drifts far more than with real weights. Damping the output layer gives the
# tiny model a trained model's behaviour here (DDIM inversion at w = 1 returns to within 1%).
UNET_OUTPUT_GAIN = 0.3
TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=77,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def build_tiny_pipeline() -> StableDiffusionPipeline:
    """Build the tiny pipeline in memory; bit-identical on every call (seeded weights).

    Returns a float32 StableDiffusionPipeline on the CPU with no safety checker.
    """
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    with torch.no_grad():
        unet.conv_out.weight.mul_(UNET_OUTPUT_GAIN)
        unet.conv_out.bias.mul_(UNET_OUTPUT_GAIN)
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(SEED + 2)
    return assemble_pipeline(unet, vae, CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)))


def assemble_pipeline(unet, vae, text_encoder) -> StableDiffusionPipeline:
    """A pipeline around the given models with SD's tokenizer, SPEC.md's DDIM scheduler and no
    safety checker."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=build_clip_tokenizer(),
        unet=unet.eval(),
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def cache_root() -> Path:
    """The project's cache folder: ``$PROMPTEDIT_CACHE_DIR``, else ``~/.cache/promptedit``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "promptedit"


def tiny_model_dir(version: str = TINY_VERSION, build: Callable[[], DiffusionPipeline] | None = None) -> Path:
    """Return the folder holding a saved offline model, building it there on first use.

    ``version`` names the folder in the cache (``TINY_VERSION`` and ``build_tiny_pipeline`` by
    default; ``tiny-xl`` and ``tiny-v`` pass theirs). The build is written to a temporary folder
    and renamed into place, so concurrent processes (accelerate workers) never see a half-written
    model.
    """
    build = build_tiny_pipeline if build is None else build
    target = cache_root() / version
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the offline test model %s in %s", version, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    try:
        build().save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tiny_v_pipeline() -> StableDiffusionPipeline:
    """The tiny model as a v-prediction model (SD 2.x at 768 px is one): the same weights, its
    scheduler's ``prediction_type`` set to "v_prediction". For the v-prediction code paths."""
    pipe = build_tiny_pipeline()
    pipe.scheduler = DDIMScheduler(**SCHEDULER_CONFIG, prediction_type="v_prediction")
    return pipe


def build_random_sd15_pipeline(dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """SD v1.5's exact architecture (860 M-parameter UNet, 512 px) with seeded random weights.

    For benchmarks only: it costs the same time and memory as the real model, and needs no
    download. Returns a StableDiffusionPipeline on the CPU.
    """
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
    )
    pipe = assemble_pipeline(unet, vae, text_encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=dtype)
