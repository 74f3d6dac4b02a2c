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

The speed levers (``python -m bench train`` measures each; docs/benchmarks.md): bfloat16 autocast
(``bf16``), scenes rendered, encoded and turned into grounding targets once (``precompute``),
``torch.compile`` (``compile``), the UNet's width (``unet_channels``); and for what a step
learns, Min-SNR-γ loss weighting (``snr_gamma``, Hang et al. 2023), the learning rate and batch.
The grounding, pixel and locality terms can start part-way through one run (``grounding_from``,
``locality_from``) and the learning rate can drop for the last part (``lr_low_from``): the
one-command recipe (``RECIPE``) trains the shipped model's whole schedule that way.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from transformers import CLIPTextConfig, CLIPTextModel

from data.shapes import IMAGE_SIZE, SIZE_BANDS, TRIANGLE_SPAN, Scene, random_scene
from models.grounding import (
    GroundingProcessor,
    grounding_loss,
    install,
    locality_loss,
    pixel_loss,
    regions_from_labels,
    scene_labels,
    token_labels,
)
from models.loss_guard import LossGuard
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
# a VAE phase that keeps blowing up after this many roll-backs goes on as it is
MAX_ROLLBACKS = 4


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
    # the shapes world's version the scenes come from (data.shapes; 1: the shipped model's)
    world: int = 1
    # speed: bfloat16 autocast of the forward passes (the losses stay float32)
    bf16: bool = False
    # the VAE phase in float32 even when bf16 is on: the VAE is every reconstruction's ceiling
    vae_fp32: bool = False
    # speed: render the latent scenes once (pixels for the VAE phase, captions, region and token
    # labels for the grounding terms) instead of per step; the VAE then trains on those scenes
    precompute: bool = False
    # speed: torch.compile the UNet
    compile: bool = False
    # speed: diffusers' explicit attention (softmax(QKᵀ)·V, AttnProcessor) on the layers no term
    # reads, instead of its fused kernel, which is the slower of the two under bf16 on this CPU
    explicit_attention: bool = False
    # the UNet's block widths (the shipped model: 64, 128)
    unet_channels: tuple[int, ...] = (64, 128)
    # Min-SNR-γ weighting of the ε loss (Hang et al. 2023; 0: plain MSE)
    snr_gamma: float = 0.0
    # UNet steps from which the grounding and pixel terms, and the locality term, count
    grounding_from: int = 0
    locality_from: int = 0
    # from this UNet step on the learning rate is lr_low (None: unet_lr to the end)
    lr_low_from: int | None = None
    lr_low: float = 1e-4
    # the VAE phase goes back to its last healthy snapshot, at half the learning rate, when its
    # 10-step mean loss rises past this many times its best (models/loss_guard.py; 0: no guard)
    vae_guard: float = 0.0

    def key(self) -> str:
        """A short hash naming this config's checkpoint folder. The step counts are left out, so a
        run can be resumed with more (or fewer) steps than it started with, and so are fields at
        the defaults they had before they existed, so older runs keep their folder."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("vae_steps", "unet_steps")}
        fields["unet_channels"] = list(fields["unet_channels"])
        for name, before in (("text_layers", 2), ("init_from", None), ("grounding_weight", 0.0),
                             ("pixel_weight", 0.0), ("locality_weight", 0.0),
                             ("locality_max_t", 1000), ("world", 1), ("bf16", False), ("precompute", False),
                             ("compile", False), ("unet_channels", [64, 128]), ("snr_gamma", 0.0),
                             ("grounding_from", 0), ("locality_from", 0), ("lr_low_from", None),
                             ("lr_low", 1e-4), ("vae_fp32", False), ("vae_guard", 0.0),
                             ("explicit_attention", False)):
            if fields[name] == before:
                del fields[name]
        if self.world == 2:  # world 2 redrew its triangle, its size bands, its triangle again: runs begun before keep their own folder
            fields["triangle_span"] = list(TRIANGLE_SPAN[2])
            fields["size_bands"] = {band: list(radii) for band, radii in SIZE_BANDS.items()}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


# The one-command recipe (python -m pipelines.train_shapes --out DIR): the shipped model's four runs
# (base, grounded, pixel-grounded, low-noise locality at a fifth of the rate) as one schedule on
# world 2, with the speed levers kept (docs/benchmarks.md, "Training the shapes model in one command").
RECIPE = TrainConfig(
    seed=0,
    vae_steps=900,
    unet_steps=8000,
    batch_size=32,
    text_layers=0,
    world=2,
    bf16=True,
    vae_fp32=True,
    vae_guard=3.0,
    precompute=True,
    explicit_attention=True,
    snr_gamma=5.0,
    grounding_weight=0.1,
    pixel_weight=0.03,
    grounding_from=1500,
    locality_weight=0.3,
    locality_max_t=500,
    locality_from=7400,
    lr_low_from=7400,
    lr_low=1e-4,
)


def model_world(folder: str | Path) -> int:
    """The shapes world version a model folder was trained on: its ``training.json``'s ``world``
    (or its config's), 1 when the file or the field is absent (every model before world 2)."""
    path = Path(folder) / "training.json"
    if not path.is_file():
        return 1
    summary = json.loads(path.read_text())
    return int(summary.get("world", summary.get("config", {}).get("world", 1)))


def build_models(seed: int, text_layers: int = 2, unet_channels: tuple[int, ...] = (64, 128)
                 ) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel]:
    """Freshly initialised VAE, UNet (blocks ``unet_channels`` wide) and text encoder (seeded), the
    encoder with ``text_layers`` transformer layers."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**{**UNET_CONFIG, "block_out_channels": tuple(unet_channels)})
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


def scenes_batch(seeds: list[int], world: int = 1) -> tuple[torch.Tensor, list[str]]:
    """Rendered training scenes (of world version ``world``) as pixels [B, 3, 64, 64] in [-1, 1]
    and their captions."""
    scenes = [random_scene(TRAIN_SEED_OFFSET + s, world=world) for s in seeds]
    return _pixels([np.asarray(s.image) for s in scenes]), [s.caption for s in scenes]


def _pixels(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    pixels = np.stack(images).astype(np.float32) / 127.5 - 1
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


# the side the precomputed region labels are kept at: the UNet's largest attention maps (16²)
LABEL_SIDE = IMAGE_SIZE // 4


@dataclass
class SceneTable:
    """The training scenes 0..N-1 rendered once: ``images`` uint8 [N, 64, 64, 3], ``captions``,
    ``labels`` float16 [N, 3, 16, 16] (``scene_labels`` average-pooled to the UNet's largest map
    side, exact for the 16² and 8² maps the losses pool to) and ``tokens`` int8 [N, 77]
    (``token_labels``)."""

    images: np.ndarray
    captions: list[str]
    labels: torch.Tensor
    tokens: torch.Tensor


def build_scene_table(count: int, world: int, tokenizer) -> SceneTable:
    """Render the training scenes 0..count-1 of ``world`` once (about 1 ms a scene)."""
    images, captions, labels, tokens = [], [], [], []
    for i in range(count):
        scene = random_scene(TRAIN_SEED_OFFSET + i, world=world)
        images.append(np.asarray(scene.image))
        captions.append(scene.caption)
        labels.append(F.adaptive_avg_pool2d(scene_labels(scene)[None], LABEL_SIDE)[0].half())
        tokens.append(token_labels(scene, tokenizer).to(torch.int8))
    return SceneTable(np.stack(images), captions, torch.stack(labels), torch.stack(tokens))


def min_snr_weights(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights for ε-prediction (Hang et al. 2023), [B] float.

    The ε loss at timestep t equals the x₀ loss times SNR(t) = ᾱ/(1 − ᾱ); Min-SNR-γ clamps the x₀
    loss's weight at γ, so in terms of the ε loss each sample is weighted min(SNR, γ) / SNR: 1 at
    high noise, below 1 where SNR exceeds γ (the nearly clean timesteps that dominate otherwise)."""
    abar = alphas_cumprod[timesteps].float()
    snr = abar / (1 - abar)
    return torch.clamp(snr, max=gamma) / snr


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
    # the VAE learning rate's multiplier after loss-guard roll-backs, and the steps rolled back from
    vae_lr_scale: float = 1.0
    rollbacks: list = field(default_factory=list)


def _adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW on its foreach kernels, which torch leaves off on the CPU: the per-tensor loop's
    steps to the bit, one call per op (no faster a step on an idle machine here; ``python -m bench
    train --step-costs``). The fused kernel is 4× faster but rounds differently, and the shipped
    model is this recipe's output to the byte."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


def ema_update(ema: dict[str, torch.Tensor], models: dict[str, torch.nn.Module], decay: float) -> None:
    """Move each moving average (``ema["<model key>.<parameter name>"]``, its parameter's shape)
    to ``decay`` × itself + (1 − ``decay``) × the parameter, in place: one foreach call per op,
    the per-tensor loop's result to the bit."""
    pairs = [(ema[f"{prefix}.{name}"], p.detach()) for prefix, model in models.items()
             for name, p in model.named_parameters()]
    averages, current = [a for a, _ in pairs], [c for _, c in pairs]
    with torch.no_grad():
        torch._foreach_mul_(averages, decay)
        torch._foreach_add_(averages, current, alpha=1 - decay)


def _ema_init(models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{n}": p.detach().clone() for prefix, m in models.items() for n, p in m.named_parameters()}


def _load_ema(ema: dict[str, torch.Tensor], models: dict[str, torch.nn.Module]) -> None:
    with torch.no_grad():
        for prefix, model in models.items():
            for name, p in model.named_parameters():
                p.copy_(ema[f"{prefix}.{name}"])


@torch.no_grad()
def encode_scenes(vae: AutoencoderKL, count: int, batch: int = 250, world: int = 1,
                  table: SceneTable | None = None, share: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Latent means (unscaled, float32) of the training scenes 0..count-1, [count, 4, 16, 16]
    (from ``table`` when given, else rendered).

    ``share`` = (rank, processes): in a data-parallel run with at least as many chunks of ``batch``
    scenes as processes, each process encodes every ``processes``-th chunk and one all-reduce (a
    sum with zeros) gives every process the whole tensor: the chunks one process would encode, in
    the memory layout it would hand on (the VAE's means come out channels-last, and the UNet's
    bf16 kernels round differently on the two layouts), so the same latents to the bit."""
    rank, processes = share
    starts = list(range(0, count, batch))
    split = processes > 1 and len(starts) >= processes
    means = {}
    for start in starts[rank::processes] if split else starts:
        stop = min(count, start + batch)
        pixels = (_pixels(table.images[start:stop]) if table is not None
                  else scenes_batch(list(range(start, stop)), world)[0])
        means[start] = vae.encode(pixels).latent_dist.mean
    if not split:
        return torch.cat([means[start] for start in starts])
    import torch.distributed as dist

    first = next(iter(means.values()))
    whole = torch.zeros((count, *first.shape[1:]))
    for start, mean in means.items():
        whole[start:start + len(mean)] = mean
    dist.all_reduce(whole)
    channels_last = first.stride(1) == 1 and first.shape[1] > 1  # as torch.cat of the means would lay them out
    return whole.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def _distributed() -> tuple[int, int]:
    """(rank, processes) of the data-parallel group this process is in; (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _share(batch: int, rank: int, processes: int) -> slice:
    """The rows of a batch this process computes: an equal slice each (the batch must divide)."""
    if batch % processes:
        raise ValueError(f"batch size {batch} does not split over {processes} processes: use a multiple")
    size = batch // processes
    return slice(rank * size, (rank + 1) * size)


def _agree_stop(wanted: bool, processes: int) -> bool:
    """Whether any process asked to stop after this step (every process gets the same answer)."""
    if processes == 1:
        return wanted
    import torch.distributed as dist

    flag = torch.tensor([float(wanted)])
    dist.all_reduce(flag)
    return bool(flag.item() > 0)


def _shared_counts(counts: torch.Tensor, processes: int) -> torch.Tensor:
    """Counts [K] summed over the processes and divided by their number (one all-reduce): a masked
    loss's sum divided by this share averages, over the processes, to the whole batch's masked mean,
    as one process would compute it. Zero counts become 1 (their sums are zero too)."""
    if processes > 1:
        import torch.distributed as dist

        counts = counts.clone()
        dist.all_reduce(counts)
        counts /= processes
    return torch.where(counts > 0, counts, torch.ones_like(counts))


def _average(params: list[torch.nn.Parameter], losses: torch.Tensor, processes: int) -> torch.Tensor:
    """Average the gradients of ``params`` and the logged ``losses`` [K] over the processes, in one
    all-reduce; returns the averaged losses. Every process then takes the same optimizer step."""
    if processes == 1:
        return losses
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [losses.reshape(-1).to(grads[0].dtype)])
    dist.all_reduce(flat)
    flat /= processes
    offset = 0
    for p, g in zip(params, grads):  # views of the one reduced buffer: no copy
        p.grad = flat[offset:offset + g.numel()].view_as(g)
        offset += g.numel()
    return flat[offset:]


def train(
    out: Path,
    config: TrainConfig = TrainConfig(),
    checkpoint_dir: Path | None = None,
    resume: bool = True,
    checkpoint_seconds: float = 180.0,
    stop_after: int | None = None,
    progress: Callable[[str, int, int, float], bool | None] | None = None,
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
        progress: called as progress(phase, step, total, loss) after every step (in the first
            process only, when data-parallel); a true return stops the run there, checkpointed,
            as ``stop_after`` does.

    Returns:
        A summary: steps per phase, seconds, final losses, the scaling factor, whether ``out`` was written.
    """
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    rank, processes = _distributed()
    rows = _share(config.batch_size, rank, processes)
    checkpoint_dir = Path(checkpoint_dir or default_checkpoint_dir(config))
    ckpt_path = checkpoint_dir / "state.pt"
    vae, unet, text = build_models(config.seed, config.text_layers, config.unet_channels)
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
    table = None
    if config.precompute:
        began = time.perf_counter()
        table = build_scene_table(config.latent_scenes, config.world, tokenizer)
        log.info("rendered %d training scenes once in %.1f s", config.latent_scenes, time.perf_counter() - began)

    def save(optimizer, ema) -> None:
        if rank != 0:  # every process holds the same weights; the first writes them
            return
        state.vae, state.unet, state.text = vae.state_dict(), unet.state_dict(), text.state_dict()
        state.optimizer = optimizer.state_dict() if optimizer is not None else None
        state.ema = ema
        state.seconds = time.perf_counter() - started
        _atomic_save(asdict(state), ckpt_path)

    # phase 1: the VAE
    if state.phase == "vae":
        optimizer = _adamw(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
        if state.optimizer:
            optimizer.load_state_dict(state.optimizer)
        vae.train()
        guard, snapshot = LossGuard(config.vae_guard), None
        while state.step < config.vae_steps:
            if stop_after is not None and done_total >= stop_after:
                save(optimizer, None)
                return {"finished": False, "phase": state.phase, "step": state.step, "losses": state.losses}
            gen = _step_generator(config.seed, "vae", state.step)
            if table is not None:  # scenes from the table rendered once
                index = torch.randint(0, len(table.captions), (config.batch_size,), generator=gen)
                pixels = _pixels(table.images[index.numpy()])
            else:
                seeds = torch.randint(0, 10**8, (config.batch_size,), generator=gen).tolist()
                pixels, _ = scenes_batch(seeds, config.world)
            for group in optimizer.param_groups:
                group["lr"] = config.vae_lr * state.vae_lr_scale * _lr_factor(state.step, config.warmup_steps) * (
                    0.1 if state.step > 0.8 * config.vae_steps else 1.0)
            # the decoder learns from the posterior mean, the latent inversion starts from: sampling
            # (as SD's VAE training does) held reconstructions near 22 dB for the first 160 steps
            pixels = pixels[rows]
            with _autocast(config.bf16 and not config.vae_fp32):
                posterior = vae.encode(pixels).latent_dist
                recon = vae.decode(posterior.mean).sample
            mse = F.mse_loss(recon.float(), pixels)
            loss = mse + config.kl_weight * posterior.kl().float().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            mse_all = float(_average(list(vae.parameters()), mse.detach()[None], processes)[0])
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            state.step += 1
            done_total += 1
            state.losses["vae"].append(round(mse_all, 6))
            verdict = guard.observe(state.step, mse_all)
            if verdict == "snapshot":
                snapshot = {"step": state.step, "done": done_total, "vae": copy.deepcopy(vae.state_dict()),
                            "optimizer": copy.deepcopy(optimizer.state_dict())}
            elif verdict == "rollback" and len(state.rollbacks) < MAX_ROLLBACKS:
                if rank == 0:
                    log.warning("VAE loss rose to %.4g at step %d: back to step %d at half the learning rate",
                                mse_all, state.step, snapshot["step"])
                state.rollbacks.append(state.step)
                state.step, done_total = snapshot["step"], snapshot["done"]
                del state.losses["vae"][state.step:]  # the record holds one loss per VAE step
                vae.load_state_dict(snapshot["vae"])
                optimizer.load_state_dict(snapshot["optimizer"])
                state.vae_lr_scale *= 0.5
                guard.rolled_back()
            if _agree_stop(progress is not None and bool(progress("vae", state.step, config.vae_steps, mse_all)),
                           processes):
                save(optimizer, None)
                return {"finished": False, "phase": state.phase, "step": state.step, "losses": state.losses}
            if rank == 0 and time.perf_counter() - last_save > checkpoint_seconds:
                save(optimizer, None)
                last_save = time.perf_counter()
        state.phase, state.step = "unet", 0
        state.optimizer = None
        save(None, None)

    # phase 2: latents once, then the UNet and text encoder
    vae.eval().requires_grad_(False)
    latents_path = checkpoint_dir / f"latents-{config.latent_scenes}.pt"
    if latents_path.is_file():
        latents = torch.load(latents_path)["latents"]
    else:
        log.info("encoding %d training scenes", config.latent_scenes)
        latents = encode_scenes(vae, config.latent_scenes, world=config.world, table=table,
                                share=(rank, processes))
        if rank == 0:
            _atomic_save({"latents": latents}, latents_path)
    scaling = float(1.0 / latents.std())
    state.scaling_factor = scaling
    captions_cache: dict[int, str] = {}

    def caption(i: int) -> str:
        if table is not None:
            return table.captions[i]
        if i not in captions_cache:
            captions_cache[i] = random_scene(TRAIN_SEED_OFFSET + i, world=config.world).caption
        return captions_cache[i]

    wants_grounding = config.grounding_weight > 0 or config.pixel_weight > 0
    wants_locality = config.locality_weight > 0
    own_processors = unet.attn_processors
    if config.explicit_attention:
        unet.set_attn_processor(AttnProcessor())
    plain_processors = unet.attn_processors
    installed: tuple[bool, bool] = (False, False)
    grounding: GroundingProcessor | None = None
    self_maps: GroundingProcessor | None = None

    def processors_for(step: int) -> None:
        """Explicit maps on the layers a term needs at this step, diffusers' fused attention elsewhere."""
        nonlocal installed, grounding, self_maps
        local = wants_locality and step >= config.locality_from
        cross = (wants_grounding and step >= config.grounding_from) or local
        if (cross, local) == installed:
            return
        unet.set_attn_processor(dict(plain_processors))
        grounding = self_maps = None
        if cross:
            self_maps = GroundingProcessor() if local else None
            grounding = install(unet, self_maps)
        installed = (cross, local)

    def batch_targets(index: torch.Tensor, dropped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Region labels [B, 3, h, w], token regions [B, 77, h, w] and used tokens [B, 77] of a batch."""
        if table is not None:
            labels = table.labels[index].float()
            tokens = table.tokens[index].long()
        else:  # the batch's scenes, rendered again for their masks
            scenes = [random_scene(TRAIN_SEED_OFFSET + int(i), world=config.world) for i in index]
            labels = torch.stack([scene_labels(scene) for scene in scenes])
            tokens = torch.stack([token_labels(scene, tokenizer) for scene in scenes])
        found = regions_from_labels(labels, tokens)
        return labels, found.regions, found.used & ~dropped[:, None]

    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=SCHEDULER_CONFIG["beta_start"],
                                    beta_end=SCHEDULER_CONFIG["beta_end"], beta_schedule="scaled_linear",
                                    prediction_type="epsilon")
    models = {"unet": unet, "text": text}
    params = list(unet.parameters()) + list(text.parameters())
    optimizer = _adamw(params, lr=config.unet_lr, weight_decay=0.01)
    if state.optimizer:
        optimizer.load_state_dict(state.optimizer)
    ema = state.ema or _ema_init(models)
    unet_forward = torch.compile(unet) if config.compile else unet
    unet.train()
    text.train()
    while state.step < config.unet_steps:
        if stop_after is not None and done_total >= stop_after:
            save(optimizer, ema)
            return {"finished": False, "phase": state.phase, "step": state.step, "losses": state.losses}
        processors_for(state.step)
        gen = _step_generator(config.seed, "unet", state.step)
        index = torch.randint(0, latents.shape[0], (config.batch_size,), generator=gen)
        z0 = latents[index] * scaling
        drop = torch.rand(config.batch_size, generator=gen) < config.p_uncond
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (config.batch_size,), generator=gen)
        # the whole batch is drawn by every process, each computes its own rows
        index, z0, drop, noise, t = index[rows], z0[rows], drop[rows], noise[rows], t[rows]
        prompts = ["" if d else caption(int(i)) for i, d in zip(index, drop)]
        noisy = noise_scheduler.add_noise(z0, noise, t)
        ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        low = config.lr_low_from is not None and state.step >= config.lr_low_from
        for group in optimizer.param_groups:
            group["lr"] = config.lr_low if low else config.unet_lr * _lr_factor(state.step, config.warmup_steps)
        with _autocast(config.bf16):
            cond = text(ids)[0]
            pred = unet_forward(noisy, t, encoder_hidden_states=cond).sample
        per_sample = F.mse_loss(pred.float(), noise, reduction="none").mean((1, 2, 3))
        loss = per_sample.mean()
        total = loss
        if config.snr_gamma > 0:
            total = (per_sample * min_snr_weights(t, noise_scheduler.alphas_cumprod, config.snr_gamma)).mean()
        logged = {"unet": loss.detach()}
        if grounding is not None:
            labels, regions, used = batch_targets(index, drop)
            maps = [m.float() for m in grounding.maps]
            keep = t < config.locality_max_t
            tokens, scenes = _shared_counts(torch.stack([used.sum(), keep.sum()]).float(), processes)
            if wants_grounding and state.step >= config.grounding_from:
                ground = grounding_loss(maps, regions, used, tokens)
                total = total + config.grounding_weight * ground
                logged["grounding"] = ground.detach()
                if config.pixel_weight > 0:
                    pixel = pixel_loss(maps, regions, used, tokens)
                    total = total + config.pixel_weight * pixel
                    logged["pixel"] = pixel.detach()
            grounding.maps.clear()
            if self_maps is not None:  # installed with the grounding processor, on the same scenes
                local = locality_loss([m.float() for m in self_maps.maps], labels, keep, scenes)
                total = total + config.locality_weight * local
                logged["locality"] = local.detach()
                self_maps.maps.clear()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        averaged = _average(params, torch.stack(list(logged.values())).float(), processes)
        for name, value in zip(logged, averaged.tolist()):
            state.losses.setdefault(name, []).append(round(value, 6))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema_update(ema, models, min(config.ema_decay, (1 + state.step) / (10 + state.step)))
        state.step += 1
        done_total += 1
        if _agree_stop(progress is not None
                       and bool(progress("unet", state.step, config.unet_steps, state.losses["unet"][-1])), processes):
            save(optimizer, ema)
            return {"finished": False, "phase": state.phase, "step": state.step, "losses": state.losses}
        if rank == 0 and time.perf_counter() - last_save > checkpoint_seconds:
            save(optimizer, ema)
            last_save = time.perf_counter()
    save(optimizer, ema)
    unet.set_attn_processor(dict(own_processors))
    if rank != 0:
        return {"finished": True, "rank": rank}
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
        "vae_rollbacks": state.rollbacks,
        "world": config.world,
        "config": asdict(config),
        "losses": state.losses,
    }


def _join_group(rank: int, processes: int, init_file: str, threads: int) -> None:
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=processes,
                            timeout=datetime.timedelta(minutes=30))


def _worker(rank: int, processes: int, init_file: str, threads: int, out: Path, config: TrainConfig,
            kwargs: dict) -> None:
    import torch.distributed as dist

    _join_group(rank, processes, init_file, threads)
    try:
        train(out, config, **kwargs)
    finally:
        dist.destroy_process_group()


def train_parallel(out: Path, config: TrainConfig = TrainConfig(), processes: int = 2, threads: int = 1,
                   **kwargs) -> dict:
    """``train`` data-parallel over ``processes`` processes on this machine (gloo), each of
    ``threads`` threads: every process draws the step's whole seeded batch and computes its own
    equal share of the rows, the gradients and logged losses are averaged in one all-reduce per
    step, and the first process (this one) checkpoints, reports progress and writes ``out``. The
    ε loss curve is the one-process run's up to float rounding (the grounding terms, means over
    each process's grounded tokens, are averaged, so they differ a little), and a run resumes in
    either mode.

    Takes ``train``'s arguments (``kwargs``: checkpoint_dir, resume, checkpoint_seconds,
    stop_after, progress; progress is called in this process only). Returns ``train``'s summary."""
    if processes == 1:
        torch.set_num_threads(threads)
        return train(out, config, **kwargs)
    import multiprocessing

    import torch.distributed as dist

    _share(config.batch_size, 0, processes)  # refuse a batch that does not split before starting
    init_file = tempfile.mktemp(prefix="shapes-train-group-")
    others = {k: v for k, v in kwargs.items() if k != "progress"}
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(rank, processes, init_file, threads, out, config, others),
                               daemon=True) for rank in range(1, processes)]
    for w in workers:
        w.start()
    before = torch.get_num_threads()
    _join_group(0, processes, init_file, threads)
    try:
        summary = train(out, config, **kwargs)
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(before)
        for w in workers:
            w.join(timeout=60)
        if os.path.exists(init_file):
            os.unlink(init_file)
    failed = [w.exitcode for w in workers if w.exitcode not in (0, None)]
    if failed:
        raise RuntimeError(f"a training process exited with code {failed[0]}")
    summary["processes"] = processes
    return summary


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
