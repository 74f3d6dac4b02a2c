"""``edit``: turn an ``EditSpec`` into a controller and run the sampler for all prompts at once."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from PIL import Image

from data.numbers import limited
from editing.align import WordNotFoundError, refinement_mapper, replacement_mapper, word_token_indices
from editing.controllers import (
    AttentionStore,
    LocalBlend,
    PromptToPromptController,
    default_blend_shape,
    refine_edit,
    reweight_edit,
    replace_edit,
)
from editing.proximal import LatentGuard, Proximal
from editing.sampler import denoise
from editing.spec import EditSpec, EditSpecError
from models.codec import (PromptError, check_prompt, decode_latents, encode_null, encode_prompts, is_xl, time_ids,
                          tokenizers)
from models.conditioning import Conditioning
from models.defaults import BlendDefaults, blend_defaults

log = logging.getLogger(__name__)
L = 77
# the local blend threshold when neither the spec nor the model (promptedit.json) gives one: SPEC's
BLEND_THRESHOLD = 0.3


@dataclass
class EditResult:
    """What ``edit`` returns.

    Attributes:
        images: one PIL image per prompt, the source (reconstruction) first.
        latents: final latents [B, 4, h, w].
        attention: cross-attention maps averaged over steps, heads and the down/up layers of
            shape ``attention_shape`` (rows, columns): [B, rows, columns, 77]; None unless asked for.
        tokens: each prompt's token strings (start and end tokens included).
        seconds: wall time of the denoising loop and of decoding.
        stats: UNet calls, explicit and fused attention calls.
    """

    images: list[Image.Image]
    latents: torch.Tensor
    spec: EditSpec
    attention: torch.Tensor | None = None
    attention_shape: tuple[int, int] | None = None
    tokens: list[list[str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)


def _in_targets(targets: list[str], word: str, tokenizer) -> list[tuple[int, list[int]]]:
    """(target index, token positions) for each target prompt containing ``word``."""
    found = []
    for k, prompt in enumerate(targets):
        try:
            found.append((k, word_token_indices(prompt, word, tokenizer)))
        except WordNotFoundError:
            continue  # EditSpec checked that some target has it
    return found


def cross_alpha(spec: EditSpec, tokenizer, num_steps: int) -> torch.Tensor:
    """The cross-replace schedule α [T+1, K, 77]: for target k and token j, 1 at steps
    ``int(start·(T+1)) ≤ t < int(end·(T+1))`` of the window that applies to j (a word's own
    window on its tokens, else ``default_``), 0 elsewhere."""
    targets = spec.prompts[1:]
    rows = num_steps + 1
    alpha = torch.zeros(rows, len(targets), L)

    def fill(window: tuple[float, float], k: int, tokens) -> None:
        start, end = int(window[0] * rows), int(window[1] * rows)
        alpha[:, k, tokens] = 0.0
        alpha[start:end, k, tokens] = 1.0

    windows = spec.cross_windows
    for k in range(len(targets)):
        fill(windows["default_"], k, slice(None))
    for word, window in windows.items():
        if word == "default_":
            continue
        for k, tokens in _in_targets(targets, word, tokenizer):
            fill(window, k, tokens)
    return alpha


def _word_weights(prompts: list[str], groups: list[list[str]], tokenizer) -> torch.Tensor:
    weights = torch.zeros(len(prompts), L)
    for k, (prompt, words) in enumerate(zip(prompts, groups)):
        for word in words:
            weights[k, word_token_indices(prompt, word, tokenizer)] = 1.0
    return weights


def build_controller(spec: EditSpec, tokenizer, num_steps: int, keep_maps: bool = False,
                     latent_hw: tuple[int, int] | None = None, native_side: int | None = None,
                     model_blend: BlendDefaults | None = None) -> PromptToPromptController:
    """The controller that carries out ``spec`` over ``num_steps`` steps.

    ``keep_maps`` keeps cross-attention maps (for pictures) even without a local blend.
    ``latent_hw`` is the latent's (h, w) (None: square); ``native_side`` the model's native latent
    side, against which ``spec.blend_resolution`` is read (a side at the native size names the
    same layers at any size). ``model_blend``: the model's own local blend defaults
    (``models.defaults``), used where the spec gives none.

    Raises:
        EditSpecError: ``spec.blend_resolution`` is not a map side the model has.
    """
    source, targets = spec.prompts[0], spec.prompts[1:]
    if spec.resolved_mode() == "replace":
        cross = replace_edit(torch.stack([replacement_mapper(source, t, tokenizer) for t in targets]))
    else:
        pairs = [refinement_mapper(source, t, tokenizer) for t in targets]
        cross = refine_edit(torch.stack([m for m, _ in pairs]), torch.stack([a for _, a in pairs]))
    if spec.reweight:
        equalizer = torch.ones(len(targets), L)
        for word, scale in spec.reweight.items():
            for k, tokens in _in_targets(targets, word, tokenizer):
                equalizer[k, tokens] = float(scale)
        cross = reweight_edit(equalizer, cross)
    start, end = spec.self_window
    blend = None
    if spec.blend_words is not None:
        subtract = None
        if spec.blend_subtract_words is not None:
            subtract = _word_weights(spec.prompts, spec.blend_groups(spec.blend_subtract_words), tokenizer)
        blend = LocalBlend(
            words=_word_weights(spec.prompts, spec.blend_groups(spec.blend_words), tokenizer),
            subtract=subtract,
            threshold=_blend_threshold(spec, model_blend),
            start_step=int(spec.blend_start * num_steps),
            factor=_blend_factor(_blend_side(spec, model_blend), native_side),
        )
    return PromptToPromptController(
        cross_edit=cross,
        cross_alpha=cross_alpha(spec, tokenizer, num_steps),
        self_steps=(int(start * num_steps), int(end * num_steps)),
        self_max_pixels=spec.self_replace_max_pixels,
        store=AttentionStore(latent_hw=latent_hw) if (keep_maps or blend is not None) else None,
        blend=blend,
    )


def _blend_side(spec: EditSpec, model_blend: BlendDefaults | None) -> int | None:
    """The blend's map side: the spec's, else the model's own, else None (SPEC's choice)."""
    return spec.blend_resolution or (model_blend.map_side if model_blend is not None else None)


def _blend_threshold(spec: EditSpec, model_blend: BlendDefaults | None) -> float:
    """The blend's threshold: the spec's, else the model's own, else ``BLEND_THRESHOLD``."""
    own = model_blend.threshold if model_blend is not None else None
    return next(t for t in (spec.blend_threshold, own, BLEND_THRESHOLD) if t is not None)


def _blend_factor(resolution: int | None, native_side: int | None) -> int | None:
    """How many times the maps local blend reads are downsampled from the latent."""
    if resolution is None:
        return None
    native = native_side or resolution
    factor = native // resolution
    if factor < 1 or native % resolution or factor & (factor - 1):
        sides = [native // 2**k for k in range(4) if native % 2**k == 0]
        raise EditSpecError(f"blend_resolution {resolution} is not a map side of this model (its latent is "
                            f"{native} wide at its native size): use one of {', '.join(map(str, sides))}")
    return factor


def check_prompts(tokenizer, spec: EditSpec) -> None:
    """Raise EditSpecError if a prompt of ``spec`` is longer than the text encoder takes.

    ``tokenizer``: one tokenizer or a list (``models.codec.tokenizers(pipe)``: SDXL's two)."""
    for k, prompt in enumerate(spec.prompts):
        try:
            check_prompt(tokenizer, prompt, "source prompt" if k == 0 else f"target prompt {k}")
        except PromptError as exc:
            raise EditSpecError(str(exc)) from None


def prompt_tokens(tokenizer, prompt: str) -> list[str]:
    """The prompt's tokens as text, start and end tokens included."""
    ids = tokenizer(prompt).input_ids
    return [tokenizer.decode([i]) for i in ids]


def edit(
    pipe,
    spec: EditSpec,
    latents: torch.Tensor | None = None,
    null_embeddings: torch.Tensor | Conditioning | None = None,
    generator: torch.Generator | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    return_attention: bool = False,
    inversion=None,
    progress: bool = False,
    on_step: Callable[[int, int], None] | None = None,
    size: tuple[int, int] | None = None,
) -> EditResult:
    """Edit with Prompt-to-Prompt: every prompt of ``spec`` in one batch, source first.

    Args:
        pipe: a pipeline from ``load_pipeline``.
        spec: the edit.
        latents: starting latent [1, 4, h, w] shared by every row, at any h and w the UNet
            divides; else drawn from ``generator`` at ``size``.
        size: (W, H) in pixels of an image drawn from noise (default the model's native square).
        null_embeddings: [T, 1, 77, d] one unconditional embedding per step (null-text
            inversion; on SDXL a ``Conditioning`` with pooled [T, 1, p]), or None for the empty
            prompt's embedding (SDXL: what diffusers uses for an empty negative prompt).
        num_steps: DDIM steps T (default 50, or the inversion's).
        guidance_scale: w (default 7.5, or the inversion's).
        inversion: an ``inversion.Inversion``; supplies ``latents`` (its x_T), its null embeddings,
            its source-row offsets (DirectInversion), its trajectory (for ``spec.latent_guard``) and, on SDXL, the photo's size and crop conditions (its time ids; without an
            inversion they are the model's native size, uncropped).
        return_attention: keep the averaged cross-attention maps in ``result.attention``.
        on_step: called after each denoising step with (steps done, num_steps); it may raise to
            stop the edit between steps (cooperative cancellation).

    Returns:
        EditResult with one image per prompt (source first).

    Raises:
        EditSpecError: a prompt is over 77 tokens or the inputs disagree; raised before denoising.
    """
    check_prompts(tokenizers(pipe), spec)
    ids = None
    if inversion is not None:
        if latents is not None or null_embeddings is not None:
            raise EditSpecError("pass either inversion= or latents=/null_embeddings=, not both")
        if num_steps is not None and num_steps != inversion.num_steps:
            raise EditSpecError(
                f"the inversion was made with {inversion.num_steps} steps but the edit asks for {num_steps}: "
                "edit with the inversion's number of steps (or invert again)"
            )
        num_steps = inversion.num_steps
        made_for_w = inversion.method == "null-text" or inversion.offsets is not None
        if guidance_scale is not None and guidance_scale != inversion.guidance_scale and made_for_w:
            log.warning("editing at guidance %s an inversion optimized for %s: the source will not reconstruct well",
                        guidance_scale, inversion.guidance_scale)
        guidance_scale = inversion.guidance_scale if guidance_scale is None else guidance_scale
        latents, null_embeddings, ids = inversion.x_T, inversion.nulls, inversion.time_ids
        if inversion.prompt != spec.prompts[0]:
            log.warning("the source prompt %r differs from the inversion's prompt %r", spec.prompts[0], inversion.prompt)
    num_steps = limited("steps", 50 if num_steps is None else num_steps, "num_steps =", EditSpecError)
    guidance_scale = limited("guidance", 7.5 if guidance_scale is None else guidance_scale, "guidance_scale =", EditSpecError)
    if null_embeddings is not None and null_embeddings.shape[0] != num_steps:
        raise EditSpecError(f"{null_embeddings.shape[0]} null embeddings for {num_steps} steps: they must match")
    native = pipe.unet.config.sample_size
    if latents is None:
        scale = pipe.vae_scale_factor
        h, w = (native, native) if size is None else (size[1] // scale, size[0] // scale)
        latents = torch.randn((1, pipe.unet.config.in_channels, h, w), generator=generator, dtype=torch.float32)
    latent_hw = (int(latents.shape[-2]), int(latents.shape[-1]))
    if ids is None and is_xl(pipe):  # a generated image: SDXL is told its own size, uncropped
        pixels = (latent_hw[0] * pipe.vae_scale_factor, latent_hw[1] * pipe.vae_scale_factor)
        ids = time_ids(pixels, (0, 0), pixels)
    prox = None if spec.prox is None else Proximal(spec.prox, float(spec.prox_quantile))
    guard = None
    if spec.latent_guard:
        if inversion is None:
            raise EditSpecError("the latent guard puts rows back on an inversion's trajectory: "
                                "edit with inversion=..., or set latent_guard to 0")
        guard = LatentGuard(inversion.trajectory, int(spec.latent_guard), int(spec.guard_radius), float(spec.guard_rate),
                            float(spec.prox_quantile))
    model_blend = blend_defaults(pipe)
    controller = build_controller(spec, pipe.tokenizer, num_steps, keep_maps=return_attention,
                                  latent_hw=latent_hw, native_side=native, model_blend=model_blend)

    started = time.perf_counter()
    cond = encode_prompts(pipe, spec.prompts, ids)
    uncond = null_embeddings if null_embeddings is not None else encode_null(pipe)
    final, stats = denoise(pipe, cond, uncond, latents, controller, num_steps, guidance_scale, progress, on_step,
                           source_offsets=None if inversion is None else inversion.offsets,
                           prox=prox, guard=guard)
    denoised = time.perf_counter()
    images = decode_latents(pipe, final)
    result = EditResult(
        images=images,
        latents=final,
        spec=spec,
        tokens=[prompt_tokens(pipe.tokenizer, p) for p in spec.prompts],
        seconds={"denoise": denoised - started, "decode": time.perf_counter() - denoised},
        stats=stats,
    )
    if return_attention and controller.store is not None and controller.store.sums:
        store = controller.store
        # the maps the local blend reads: the spec's or the model's side, else SPEC's choice
        factor = _blend_factor(_blend_side(spec, model_blend), native)
        wanted = None if factor is None else (latent_hw[0] // factor, latent_hw[1] // factor)
        result.attention_shape = wanted if wanted in store.shapes() else default_blend_shape(latent_hw, store.shapes())
        result.attention = store.mean_map(result.attention_shape) / max(store.steps, 1)
    return result
