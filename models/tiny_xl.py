"""Offline SDXL-shaped pipelines with seeded random weights: ``tiny-xl`` for tests and SDXL's
real architecture for benchmarks.

``tiny-xl`` has what SDXL's conditioning and attention layout need at the tiny model's size: two
CLIP text encoders (the second with a projection, giving the pooled embedding; its tokenizer pads
with "!" as SDXL's does), a UNet with SDXL's block layout (no attention at full latent size,
cross-attention at half and quarter size, deeper transformers at the quarter), added "text_time"
conditioning (pooled embedding + six time ids), a VAE that downsamples by 8 (128 px images) and is
upcast to float32 under fp16 as SDXL's must be.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from models.tiny import SCHEDULER_CONFIG, SEED, TEXT_CONFIG, UNET_OUTPUT_GAIN, VAE_CONFIG
from models.tokenizer import build_clip_tokenizer

TINY_XL_VERSION = "tiny-xl-v1"
TIME_EMBED_DIM = 8
TEXT_DIM = TEXT_CONFIG["hidden_size"]

UNET_XL_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 1, 2),
    attention_head_dim=(2, 2, 4),
    cross_attention_dim=2 * TEXT_DIM,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_EMBED_DIM,
    projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_DIM,
    norm_num_groups=8,
)


def assemble_xl_pipeline(unet, vae, text_encoder, text_encoder_2, force_zeros: bool = True) -> StableDiffusionXLPipeline:
    """An SDXL pipeline around the given models with SD's tokenizer twice (the second padding
    with "!"), SPEC.md's DDIM scheduler and no watermarker."""
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(pad_token="!"),
        unet=unet.eval(),
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=force_zeros,
        add_watermarker=False,
    )


def build_tiny_xl_pipeline() -> StableDiffusionXLPipeline:
    """Build ``tiny-xl`` in memory; bit-identical on every call (seeded weights).

    Returns a float32 StableDiffusionXLPipeline on the CPU (128 px images, 16² latents,
    cross-attention at 8² and 4²).
    """
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(**UNET_XL_CONFIG)
    with torch.no_grad():  # the tiny model's damping, for the same reason (models/tiny.py)
        unet.conv_out.weight.mul_(UNET_OUTPUT_GAIN)
        unet.conv_out.bias.mul_(UNET_OUTPUT_GAIN)
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(**VAE_CONFIG, force_upcast=True)
    torch.manual_seed(SEED + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    torch.manual_seed(SEED + 3)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_CONFIG, projection_dim=TEXT_DIM, hidden_act="gelu"))
    return assemble_xl_pipeline(unet, vae, text_encoder, text_encoder_2)


def build_random_sdxl_pipeline(dtype: torch.dtype = torch.float32, sample_size: int = 128) -> StableDiffusionXLPipeline:
    """SDXL base 1.0's exact architecture (2.6 B-parameter UNet, both text encoders) with seeded
    random weights, for benchmarks: the real model's time and memory, no download.

    ``sample_size`` is the latent side (128: 1024 px, SDXL's native size; 64: 512 px). Returns a
    StableDiffusionXLPipeline on the CPU.
    """
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ).to(dtype)
    vae = AutoencoderKL(
        sample_size=sample_size * 8,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        scaling_factor=0.13025,
        force_upcast=True,
    ).to(dtype)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)).to(dtype)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)).to(dtype)
    pipe = assemble_xl_pipeline(unet, vae, text_encoder, text_encoder_2)
    pipe.set_progress_bar_config(disable=True)
    return pipe
