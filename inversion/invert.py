"""``invert``: photo(s) + source prompt(s) → ``Inversion``(s), through the cache when asked."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from tqdm.auto import tqdm

from data.images import Crop, SizeRequest, image_hash, load_image, load_photo, photo_geometry
from data.manifest import INVERSION_METHODS
from data.numbers import limited
from data.prompts import normalized_prompt
from inversion import fixed_point
from inversion.ddim import ddim_inversion
from inversion.direct import direct_offsets
from inversion.negative_prompt import negative_prompt_embeddings
from inversion.null_text import OPTIMIZE_POOLED, InversionError, null_text_optimization
from inversion.result import Inversion, cache_key, cache_path, load_cached
from models.codec import (
    PromptError,
    check_finite,
    check_prompt,
    decode_latents,
    encode_image,
    encode_null,
    encode_prompts,
    is_xl,
    time_ids,
    tokenizers,
)
from models.guidance import guided_noise
from models.loading import weights_fingerprint, working_size

log = logging.getLogger(__name__)
METHODS = INVERSION_METHODS


def _key(pipe, image: Image.Image, prompt: str, method: str, params: dict, weights: str) -> str:
    scheduler = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    return cache_key(
        image=image_hash(image),
        prompt=prompt,
        model=str(pipe.name_or_path),
        weights=weights,  # a model folder retrained in place must not reuse its old inversions
        scheduler=json.dumps(scheduler, sort_keys=True, default=str),
        method=method,
        dtype=str(pipe.unet.dtype),
        **params,
    )


class _UnetCounter:
    """Counts UNet forward calls through a forward hook (PyTorch's public module API)."""

    def __init__(self, unet):
        self.calls = 0
        self._handle = unet.register_forward_pre_hook(self._count)

    def _count(self, *_):
        self.calls += 1

    def close(self) -> None:
        self._handle.remove()


def photo_time_ids(pipe, images: list[Image.Image]) -> torch.Tensor | None:
    """SDXL's added conditions from the photos, [N, 6]: each photo's size before cropping, where
    its square was cut (in the resized frame) and the model's size; None for SD 1.x/2.x."""
    if not is_xl(pipe):
        return None
    ids = []
    for image in images:
        original, crop = photo_geometry(image)
        ids.append(time_ids(original, crop, (image.height, image.width)))
    return torch.cat(ids)


def _cached_shapes(pipe, size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """The shapes, after the per-step axis, that a cached inversion of a photo of working ``size``
    (W, H) must have on ``pipe``: a file that does not fit is recomputed."""
    wide, high = size
    scale = int(pipe.vae_scale_factor)
    shapes = {"trajectory": (1, int(pipe.vae.config.latent_channels), high // scale, wide // scale)}
    width = pipe.unet.config.cross_attention_dim
    if isinstance(width, int):
        shapes["null_embeddings"] = (1, int(pipe.tokenizer.model_max_length), width)
    if is_xl(pipe):
        shapes["null_pooled"] = (1, int(pipe.text_encoder_2.config.projection_dim))
    return shapes


def _stage(on_step, stage: str):
    """``on_step`` bound to one stage's name, or None."""
    return None if on_step is None else (lambda done, total: on_step(stage, done, total))


def _invert_batch(pipe, images, prompts, method, num_steps, guidance_scale, num_inner_steps, early_stop_epsilon, progress,
                  on_step=None, fixed_point_steps=fixed_point.STEPS, fixed_point_anchor=0.0):
    timings = {}
    started = time.perf_counter()
    latent = torch.cat([encode_image(pipe, im) for im in images])
    ids = photo_time_ids(pipe, images)
    cond = encode_prompts(pipe, prompts, ids)
    timings["encode"] = time.perf_counter() - started
    counter = _UnetCounter(pipe.unet)
    counts = {"unet_forward": 0, "unet_backward": 0}
    per_item: dict = {}
    nulls = offsets = None
    try:
        started = time.perf_counter()
        if method == "fixed-point":
            trajectory, per_item = fixed_point.fixed_point_inversion(
                pipe, latent, cond, num_steps, max_steps=fixed_point_steps, anchor=fixed_point_anchor,
                progress=progress, counts=counts, on_step=_stage(on_step, "fixed-point"))
            timings["fixed_point"] = time.perf_counter() - started
        else:
            trajectory = ddim_inversion(pipe, latent, cond, num_steps, progress=progress,
                                        on_step=_stage(on_step, "ddim inversion"))
            timings["ddim_inversion"] = time.perf_counter() - started
        started = time.perf_counter()
        if method == "null-text":
            nulls, per_item = null_text_optimization(
                pipe, trajectory, cond, encode_null(pipe), num_steps, guidance_scale,
                num_inner_steps, early_stop_epsilon, progress=progress, counts=counts,
                on_step=_stage(on_step, "null-text"),
            )
            timings["null_text"] = time.perf_counter() - started
        elif method == "direct":
            offsets = direct_offsets(pipe, trajectory, cond, encode_null(pipe), num_steps, guidance_scale,
                                     progress=progress, on_step=_stage(on_step, "direct offsets"))
            timings["direct_offsets"] = time.perf_counter() - started
        elif method in ("negative-prompt", "fixed-point"):  # the source prompt as every step's negative
            nulls = negative_prompt_embeddings(cond, num_steps)
        forward = counter.calls
    finally:
        counter.close()
    pooled = None
    if nulls is not None and not isinstance(nulls, torch.Tensor):  # SDXL's Conditioning
        nulls, pooled = nulls.embeds, nulls.pooled
    results = []
    for k in range(len(images)):
        stats = {
            "seconds": dict(timings),
            "unet_forward": forward,
            "unet_backward": counts["unet_backward"],
            "batch_size": len(images),
        }
        for name, values in per_item.items():  # per step and item, or (latent_error) per item
            stats[name] = values[k] if name == "latent_error" else [step[k] for step in values]
        results.append(
            Inversion(
                trajectory=trajectory[:, k : k + 1].cpu(),
                null_embeddings=None if nulls is None else nulls[:, k : k + 1].cpu(),
                prompt=prompts[k],
                method=method,
                num_steps=num_steps,
                guidance_scale=guidance_scale,
                model_id=str(pipe.name_or_path),
                image_hash=image_hash(images[k]),
                stats=stats,
                null_pooled=None if pooled is None else pooled[:, k : k + 1].cpu(),
                time_ids=None if ids is None else ids[k : k + 1].cpu(),
                offsets=None if offsets is None else offsets[:, k : k + 1].contiguous(),
            )
        )
    return results


def invert(
    pipe,
    image: str | Path | Image.Image | list,
    prompt: str | list[str],
    method: str = "null-text",
    num_steps: int = 50,
    guidance_scale: float = 7.5,
    num_inner_steps: int = 10,
    early_stop_epsilon: float = 1e-5,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    crop: Crop = "center",
    on_step: Callable[[str, int, int], None] | None = None,
    size: SizeRequest | None = "auto",
    fixed_point_steps: int | None = None,
    fixed_point_anchor: float = 0.0,
) -> Inversion | list[Inversion]:
    """Invert photo(s) into a DDIM starting latent and per-step null embeddings.

    Args:
        pipe: a pipeline from ``load_pipeline``.
        image: a path or PIL image, or a list of them (inverted together in one UNet batch).
        prompt: the source prompt describing the photo, or one per image.
        method: "null-text" (optimized null embeddings), "negative-prompt" (the prompt's own
            embedding, no optimization), "ddim" (plain DDIM inversion, no null embeddings),
            "direct" (DirectInversion: DDIM inversion plus per-step offsets that put the edit's
            source row back on the trajectory) or "fixed-point" (SPDInv: each inversion step
            refined to a fixed point; the prompt's own embedding as negative, as negative-prompt).
        num_steps, guidance_scale: DDIM steps T and the guidance w the edit will use.
        num_inner_steps, early_stop_epsilon: null-text's Adam steps per DDIM step and threshold.
        fixed_point_steps: fixed-point's most AdamW steps per DDIM step (default 25, SPDInv's; 5
            with an anchor, DCI's paper).
        fixed_point_anchor: DCI's λ, the pull of the predicted noise toward the photo's latent
            (0, the default: SPDInv; DCI's paper uses 2).
        cache_dir: a folder in which results are stored and looked up (invert once, edit many);
            a file that is unreadable, non-finite or of the wrong shape is recomputed and replaced.
        crop: offsets (left, right, top, bottom) cut off the photo first, or "center" (none).
        size: the working size: "auto" (the photo's own aspect ratio at the model's native area,
            nothing cropped), a side N (the reference's centre-cropped square) or (W, H) (the
            largest centred region of that ratio); see ``models.loading.working_size``. None: the
            images are used as they are (already at a working size). Photos of different working
            sizes are inverted in separate batches.
        on_step: called after every step with (stage, steps done, steps in the stage), the stage
            being "ddim inversion", "null-text", "direct offsets" or "fixed-point"; it may raise to stop the inversion between
            steps (cooperative cancellation: nothing is cached then). Not called on a cache hit.

    Returns:
        An ``Inversion``, or a list of them when ``image`` is a list.

    Raises:
        ImageInputError: a photo cannot be read. PromptError: a prompt is empty or too long.
        SizeError: the working size is not a multiple of what the model divides by.
        InversionError: the optimization diverged.
        NonFiniteError: a latent became NaN or infinite (the stage and step named; float16
            overflow: run in float32).
    """
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}: use one of {', '.join(METHODS)}")
    num_steps = limited("steps", num_steps, "num_steps =", ValueError)
    num_inner_steps = limited("inner_steps", num_inner_steps, "num_inner_steps =", ValueError)
    guidance_scale = limited("guidance", guidance_scale, "guidance_scale =", ValueError)
    early_stop_epsilon = limited("early_stop_epsilon", early_stop_epsilon, "early_stop_epsilon =", ValueError)
    fixed_point_anchor = limited("fixed_point_anchor", fixed_point_anchor, "fixed_point_anchor =", ValueError)
    if fixed_point_steps is None:
        fixed_point_steps = fixed_point.ANCHOR_STEPS if fixed_point_anchor else fixed_point.STEPS
    fixed_point_steps = limited("fixed_point_steps", fixed_point_steps, "fixed_point_steps =", ValueError)
    single = not isinstance(image, (list, tuple))
    images = [image] if single else list(image)
    prompts = [prompt] * len(images) if isinstance(prompt, str) else list(prompt)
    prompts = [normalized_prompt(p, "the source prompt") for p in prompts]
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts: give one prompt, or one per image")
    for p in prompts:
        check_prompt(tokenizers(pipe), p, "source prompt")
    images = [load_photo(im, crop=crop) for im in images]
    sizes = [working_size(pipe, im.size, im.size if size is None else size) for im in images]
    images = [load_image(im, size=wh, keep_ratio=size == "auto") for im, wh in zip(images, sizes)]
    params = dict(num_steps=num_steps, guidance_scale=guidance_scale)
    if method == "null-text":
        params.update(num_inner_steps=num_inner_steps, early_stop_epsilon=early_stop_epsilon)
        if is_xl(pipe):
            params.update(optimize_pooled=OPTIMIZE_POOLED)
    elif method == "fixed-point":
        params.update(fixed_point_steps=fixed_point_steps, fixed_point_anchor=fixed_point_anchor,
                      lr=fixed_point.LEARNING_RATE, threshold=fixed_point.THRESHOLD)

    results: list[Inversion | None] = [None] * len(images)
    keys: list[str] = []
    if cache_dir is not None:  # keys hash the photos and the weights: only a cache needs them
        weights = weights_fingerprint(pipe)
        # on SDXL the photo's size and crop condition the model: part of what was inverted
        keys = [_key(pipe, im, p, method, {**params, "size": list(im.size)} if not is_xl(pipe)
                     else {**params, "size": list(im.size), "time_ids": photo_time_ids(pipe, [im]).tolist()}, weights)
                for im, p in zip(images, prompts)]
        for k, key in enumerate(keys):
            results[k] = load_cached(cache_dir, key, _cached_shapes(pipe, images[k].size))
            if results[k] is not None:
                results[k].stats["cache_hit"] = True
                log.info("inversion cache hit: %s", cache_path(cache_dir, key))
    for wh in dict.fromkeys(sizes):  # one UNet batch per working size
        todo = [k for k, r in enumerate(results) if r is None and sizes[k] == wh]
        if not todo:
            continue
        fresh = _invert_batch(
            pipe, [images[k] for k in todo], [prompts[k] for k in todo], method, num_steps,
            guidance_scale, num_inner_steps, early_stop_epsilon, progress, on_step,
            fixed_point_steps, fixed_point_anchor,
        )
        for k, inv in zip(todo, fresh):
            inv.stats["cache_hit"] = False
            inv.stats["size"] = list(wh)
            results[k] = inv
            if cache_dir is not None:
                inv.save(cache_path(cache_dir, keys[k]))
    return results[0] if single else results  # type: ignore[return-value]


@torch.no_grad()
def reconstruct_latent(pipe, inv: Inversion, progress: bool = False) -> torch.Tensor:
    """The source branch alone: guided DDIM sampling from ``inv.x_T`` with its null embeddings
    (the empty prompt's where it has none) and its offsets after each step where it has them
    (DirectInversion's, which land it on z*_0). Returns the final latent [1, 4, h, w]."""
    cond = encode_prompts(pipe, [inv.prompt], inv.time_ids)
    nulls = inv.nulls
    scheduler = pipe.scheduler
    scheduler.set_timesteps(inv.num_steps, device=pipe.device)
    z = inv.x_T.to(pipe.device, pipe.unet.dtype)
    empty = encode_null(pipe) if nulls is None else None
    for i, t in enumerate(tqdm(scheduler.timesteps, desc="reconstruction", disable=not progress, leave=False)):
        noise = guided_noise(pipe, z, t, cond, empty if nulls is None else nulls[i], inv.guidance_scale)
        z = scheduler.step(noise, t, z, eta=0.0).prev_sample
        if inv.offsets is not None:
            z = z + inv.offsets[i].to(z.device, z.dtype)
        check_finite(z, "reconstruction", i + 1, inv.num_steps)
    return z


def reconstruct(pipe, inv: Inversion, progress: bool = False) -> Image.Image:
    """The reconstructed photo (``reconstruct_latent`` decoded) as a PIL image."""
    return decode_latents(pipe, reconstruct_latent(pipe, inv, progress))[0]


__all__ = ["invert", "reconstruct", "reconstruct_latent", "InversionError", "PromptError", "METHODS"]
