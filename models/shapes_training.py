"""Training the shapes model: an SD-shaped text-to-image pipeline learnt from scratch on the shapes
world (``data.shapes``), small enough to train on a 2-core CPU in about two hours.

Two phases, one checkpoint file:
1. the VAE (×4 downsampling, 4 latent channels) as an autoencoder on rendered scenes (MSE, a tiny
   KL term), then its latents of a fixed set of scenes are computed once and ``scaling_factor`` is
   set so that they have unit variance, as SD's 0.18215 does;
2. the UNet (cross-attention at 16² and 8²) and the CLIP text encoder together, ε-prediction with
   SPEC.md's scaled-linear betas (so SPEC's DDIM scheduler runs it unchanged), the caption dropped
   to "" 10 % of the time for classifier-free guidance, an EMA of the weights.

Every batch is drawn from a generator seeded with (seed, step), so a resumed run sees exactly the
batches an uninterrupted one would, and its loss curve is the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from data.shapes import IMAGE_SIZE, Scene, random_scene
from models.grounding import GroundingProcessor, grounding_loss, install, locality_loss, pixel_loss, scene_labels, scene_targets
from models.tiny import SCHEDULER_CONFIG, assemble_pipeline, cache_root
from models.tokenizer import build_clip_tokenizer

log = logging.getLogger(__name__)

VAE_CONFIG = dict(
    sample_size=IMAGE_SIZE,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1,
    norm_num_groups=16,
)
UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 4,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(64, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=4,
    norm_num_groups=16,
)
TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
# Scenes seeded from here on are training data; benchmarks and tests draw photos below it.
TRAIN_SEED_OFFSET = 1_000_000


@dataclass
class TrainConfig:
    """What a training run does. Two runs with the same config produce the same weights."""

    seed: int = 0
    vae_steps: int = 900
    unet_steps: int = 6000
    batch_size: int = 32
    vae_lr: float = 1e-3
    unet_lr: float = 5e-4
    warmup_steps: int = 200
    latent_scenes: int = 10000
    p_uncond: float = 0.1
    ema_decay: float = 0.999
    kl_weight: float = 1e-6
    # 0 keeps every word in its own token (embedding + position only): Prompt-to-Prompt needs a
    # word's attention map to be where the word is drawn, and 2 causal layers spread each word
    # over the tokens after it (docs/benchmarks.md, #14)
    text_layers: int = 2
    # a trained shapes model folder whose VAE, UNet and token embeddings start the run; its VAE
    # is kept as it is, so the VAE phase is skipped
    init_from: str | None = None
    # weight of the token grounding loss (models/grounding.py); 0: none
    grounding_weight: float = 0.0
    # weight of the pixel grounding loss (a word's map even over its whole object); 0: none
    pixel_weight: float = 0.0
    # weight of the self-attention locality loss (a pixel attends within its own region); 0: none
    locality_weight: float = 0.0
    # the locality loss counts only scenes noised to a timestep below this (1000: all)
    locality_max_t: int = 1000

    def key(self) -> str:
        """A short hash naming this config's checkpoint folder. The step counts are left out, so a
        run can be resumed with more (or fewer) steps than it started with, and so are fields at
        the defaults they had before they existed, so older runs keep their folder."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("vae_steps", "unet_steps")}
        for name, before in (("text_layers", 2), ("init_from", None), ("grounding_weight", 0.0),
                             ("pixel_weight", 0.0), ("locality_weight", 0.0),
                             ("locality_max_t", 1000)):
            if fields[name] == before:
                del fields[name]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def build_models(seed: int, text_layers: int = 2) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel]:
    """Freshly initialised VAE, UNet and text encoder (seeded), the encoder with ``text_layers``
    transformer layers."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 2)
    text = CLIPTextModel(CLIPTextConfig(**{**TEXT_CONFIG, "num_hidden_layers": text_layers}))
    return vae, unet, text


def load_init(vae: AutoencoderKL, unet: UNet2DConditionModel, text: CLIPTextModel, folder: str | Path) -> None:
    """Copy a trained shapes model's VAE and UNet into ``vae`` and ``unet`` and its token and
    position embeddings into ``text`` (its transformer layers, if any, are left out)."""
    folder = Path(folder)
    trained = {
        "vae": AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32),
        "unet": UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32),
    }
    vae.load_state_dict(trained["vae"].state_dict())
    unet.load_state_dict(trained["unet"].state_dict())
    source = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32)
    text.embeddings.load_state_dict(source.embeddings.state_dict())


def default_checkpoint_dir(config: TrainConfig) -> Path:
    """Where a run keeps its checkpoint: the project's cache folder, keyed on the config."""
    return cache_root() / "shapes-training" / config.key()


def scenes_batch(seeds: list[int]) -> tuple[torch.Tensor, list[str]]:
    """Rendered scenes as pixels [B, 3, 64, 64] in [-1, 1] and their captions."""
    scenes = [random_scene(TRAIN_SEED_OFFSET + s) for s in seeds]
    pixels = np.stack([np.asarray(s.image, np.float32) for s in scenes]) / 127.5 - 1
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), [s.caption for s in scenes]


def _step_generator(seed: int, phase: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(hashlib.sha256(f"{seed}/{phase}/{step}".encode()).hexdigest()[:15], 16))


def _lr_factor(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup)


def _atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass
class TrainState:
    """Everything a checkpoint holds."""

    phase: str
    step: int
    vae: dict
    unet: dict
    text: dict
    ema: dict | None
    optimizer: dict | None
    scaling_factor: float | None
    losses: dict
    seconds: float


def _ema_update(ema: dict[str, torch.Tensor], models: dict[str, torch.nn.Module], decay: float) -> None:
    with torch.no_grad():
        for prefix, model in models.items():
            for name, p in model.named_parameters():
                ema[f"{prefix}.{name}"].mul_(decay).add_(p.detach(), alpha=1 - decay)


def _ema_init(models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{n}": p.detach().clone() for prefix, m in models.items() for n, p in m.named_parameters()}


def _load_ema(ema: dict[str, torch.Tensor], models: dict[str, torch.nn.Module]) -> None:
    with torch.no_grad():
        for prefix, model in models.items():
            for name, p in model.named_parameters():
                p.copy_(ema[f"{prefix}.{name}"])


@torch.no_grad()
def encode_scenes(vae: AutoencoderKL, count: int, batch: int = 250) -> torch.Tensor:
    """Latent means (unscaled) of the training scenes 0..count-1, [count, 4, 16, 16]."""
    out = []
    for start in range(0, count, batch):
        pixels, _ = scenes_batch(list(range(start, min(count, start + batch))))
        out.append(vae.encode(pixels).latent_dist.mean)
    return torch.cat(out)


def train(
    out: Path,
    config: TrainConfig = TrainConfig(),
    checkpoint_dir: Path | None = None,
    resume: bool = True,
    checkpoint_seconds: float = 180.0,
    stop_after: int | None = None,
    progress: Callable[[str, int, int, float], None] | None = None,
) -> dict:
    """Train (or continue training) the shapes model and write a diffusers folder to ``out``.

    Args:
        out: the folder to write (``load_pipeline(out)`` loads it); written only when training ends.
        config: the run's settings; the checkpoint folder is keyed on them.
        checkpoint_dir: default ``~/.cache/promptedit/shapes-training/<config hash>``.
        resume: continue from the checkpoint there if one exists (else start over).
        checkpoint_seconds: how often to write the checkpoint.
        stop_after: stop (after checkpointing) once this many steps of both phases together are
            done, without writing ``out``: for tests and for splitting a run.
        progress: called as progress(phase, step, total, loss) after every step.

    Returns:
        A summary: steps per phase, seconds, final losses, the scaling factor, whether ``out`` was written.
    """
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    checkpoint_dir = Path(checkpoint_dir or default_checkpoint_dir(config))
    ckpt_path = checkpoint_dir / "state.pt"
    vae, unet, text = build_models(config.seed, config.text_layers)
    tokenizer = build_clip_tokenizer()
    state = TrainState("vae", 0, {}, {}, {}, None, None, None, {"vae": [], "unet": []}, 0.0)
    if config.init_from:
        load_init(vae, unet, text, config.init_from)
        state.phase = "unet"
    if resume and ckpt_path.is_file():
        state = TrainState(**torch.load(ckpt_path, weights_only=False))
        vae.load_state_dict(state.vae)
        if state.unet:
            unet.load_state_dict(state.unet)
            text.load_state_dict(state.text)
        log.info("resumed from %s at %s step %d", ckpt_path, state.phase, state.step)
    started = time.perf_counter() - state.seconds
    last_save = time.perf_counter()
    vae_steps = 0 if config.init_from else config.vae_steps
    done_total = (state.step if state.phase == "vae" else vae_steps + state.step)

    def save(optimizer, ema) -> None:
        state.vae, state.unet, state.text = vae.state_dict(), unet.state_dict(), text.state_dict()
        state.optimizer = optimizer.state_dict() if optimizer is not None else None
        state.ema = ema
        state.seconds = time.perf_counter() - started
        _atomic_save(asdict(state), ckpt_path)

    # phase 1: the VAE
    if state.phase == "vae":
        optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
        if state.optimizer:
            optimizer.load_state_dict(state.optimizer)
        vae.train()
        while state.step < config.vae_steps:
            if stop_after is not None and done_total >= stop_after:
                save(optimizer, None)
                return {"finished": False, "phase": state.phase, "step": state.step, "losses": state.losses}
            gen = _step_generator(config.seed, "vae", state.step)
            seeds = torch.randint(0, 10**8, (config.batch_size,), generator=gen).tolist()
            pixels, _ = scenes_batch(seeds)
            for group in optimizer.param_groups:
                group["lr"] = config.vae_lr * _lr_factor(state.step, config.warmup_steps) * (
                    0.1 if state.step > 0.8 * config.vae_steps else 1.0)
            # the decoder learns from the posterior mean, the latent inversion starts from: sampling
            # (as SD's VAE training does) held reconstructions near 22 dB for the first 160 steps
            posterior = vae.encode(pixels).latent_dist
            recon = vae.decode(posterior.mean).sample
            mse = F.mse_loss(recon, pixels)
            loss = mse + config.kl_weight * posterior.kl().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            state.step += 1
            done_total += 1
            state.losses["vae"].append(round(float(mse.detach()), 6))
            if progress:
                progress("vae", state.step, config.vae_steps, float(mse))
            if time.perf_counter() - last_save > checkpoint_seconds:
                save(optimizer, None)
                last_save = time.perf_counter()
        state.phase, state.step = "unet", 0
        state.optimizer = None
        save(None, None)

    # phase 2: latents once, then the UNet and text encoder
    vae.eval().requires_grad_(False)
    latents_path = checkpoint_dir / f"latents-{config.latent_scenes}.pt"
    if latents_path.is_file():
        latents = torch.load(latents_path)
    else:
        log.info("encoding %d training scenes", config.latent_scenes)
        latents = encode_scenes(vae, config.latent_scenes)
        _atomic_save({"latents": latents}, latents_path)
        latents = {"latents": latents}
    latents = latents["latents"]
    scaling = float(1.0 / latents.std())
    state.scaling_factor = scaling
    captions_cache: dict[int, str] = {}

    def caption(i: int) -> str:
        if i not in captions_cache:
            captions_cache[i] = random_scene(TRAIN_SEED_OFFSET + i).caption
        return captions_cache[i]

    grounding = None
    self_maps = GroundingProcessor() if config.locality_weight > 0 else None
    if config.grounding_weight > 0 or config.pixel_weight > 0 or self_maps is not None:
        plain_processors = unet.attn_processors
        grounding = install(unet, self_maps)

    def targets(scenes: list[Scene], dropped: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        found = [scene_targets(scene, tokenizer) for scene in scenes]
        used = torch.stack([t.used & (not d) for t, d in zip(found, dropped)])
        return torch.stack([t.regions for t in found]), used

    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=SCHEDULER_CONFIG["beta_start"],
                                    beta_end=SCHEDULER_CONFIG["beta_end"], beta_schedule="scaled_linear",
                                    prediction_type="epsilon")
    models = {"unet": unet, "text": text}
    params = list(unet.parameters()) + list(text.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=0.01)
    if state.optimizer:
        optimizer.load_state_dict(state.optimizer)
    ema = state.ema or _ema_init(models)
    unet.train()
    text.train()
    while state.step < config.unet_steps:
        if stop_after is not None and done_total >= stop_after:
            save(optimizer, ema)
            return {"finished": False, "phase": state.phase, "step": state.step, "losses": state.losses}
        gen = _step_generator(config.seed, "unet", state.step)
        index = torch.randint(0, latents.shape[0], (config.batch_size,), generator=gen)
        z0 = latents[index] * scaling
        drop = torch.rand(config.batch_size, generator=gen) < config.p_uncond
        prompts = ["" if d else caption(int(i)) for i, d in zip(index, drop)]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (config.batch_size,), generator=gen)
        noisy = noise_scheduler.add_noise(z0, noise, t)
        ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        for group in optimizer.param_groups:
            group["lr"] = config.unet_lr * _lr_factor(state.step, config.warmup_steps)
        cond = text(ids)[0]
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        total = loss
        if grounding is not None:
            # the batch's scenes, rendered once for the grounding targets and the locality labels
            scenes = [random_scene(TRAIN_SEED_OFFSET + int(i)) for i in index]
            regions, used = targets(scenes, drop.tolist())
            ground = grounding_loss(grounding.maps, regions, used)
            total = loss + config.grounding_weight * ground
            state.losses.setdefault("grounding", []).append(round(float(ground.detach()), 6))
            if config.pixel_weight > 0:
                pixel = pixel_loss(grounding.maps, regions, used)
                total = total + config.pixel_weight * pixel
                state.losses.setdefault("pixel", []).append(round(float(pixel.detach()), 6))
            grounding.maps.clear()
            if self_maps is not None:  # installed with the grounding processor, on the same scenes
                labels = torch.stack([scene_labels(scene) for scene in scenes])
                local = locality_loss(self_maps.maps, labels, t < config.locality_max_t)
                total = total + config.locality_weight * local
                state.losses.setdefault("locality", []).append(round(float(local.detach()), 6))
                self_maps.maps.clear()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        _ema_update(ema, models, min(config.ema_decay, (1 + state.step) / (10 + state.step)))
        state.step += 1
        done_total += 1
        state.losses["unet"].append(round(float(loss.detach()), 6))
        if progress:
            progress("unet", state.step, config.unet_steps, float(loss))
        if time.perf_counter() - last_save > checkpoint_seconds:
            save(optimizer, ema)
            last_save = time.perf_counter()
    save(optimizer, ema)
    if grounding is not None:
        unet.set_attn_processor(plain_processors)

    _load_ema(ema, models)
    export(out, vae, unet, text, scaling)
    return {
        "finished": True,
        "vae_steps": vae_steps,
        "unet_steps": config.unet_steps,
        "seconds": round(time.perf_counter() - started, 1),
        "final_vae_mse": float(np.mean(state.losses["vae"][-100:])) if state.losses["vae"] else None,
        "final_unet_loss": float(np.mean(state.losses["unet"][-100:])),
        "final_grounding_loss": (float(np.mean(state.losses["grounding"][-100:]))
                                 if state.losses.get("grounding") else None),
        "final_pixel_loss": (float(np.mean(state.losses["pixel"][-100:])) if state.losses.get("pixel") else None),
        "final_locality_loss": (float(np.mean(state.losses["locality"][-100:]))
                                if state.losses.get("locality") else None),
        "scaling_factor": scaling,
        "config": asdict(config),
        "losses": state.losses,
    }


def export(out: Path, vae: AutoencoderKL, unet: UNet2DConditionModel, text: CLIPTextModel, scaling: float,
           dtype: torch.dtype = torch.float16) -> StableDiffusionPipeline:
    """Write a diffusers folder (safetensors in ``dtype``) that ``load_pipeline(out)`` loads."""
    vae.register_to_config(scaling_factor=scaling)
    pipe = assemble_pipeline(unet.eval(), vae.eval(), text.eval())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    pipe.to(dtype=dtype).save_pretrained(tmp, safe_serialization=True)
    pipe.to(dtype=torch.float32)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return pipe
