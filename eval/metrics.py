"""Edit metrics: does the edit say what the target prompt says (CLIP score), and did it keep what it
should (LPIPS, PSNR, SSIM, MSE over the unedited part, structure distance).

Images (see ``to_tensor``): PIL images, uint8 arrays [H, W, 3], uint8 tensors [3, H, W] or
[N, 3, H, W], or float tensors of those shapes with values in [0, 1] (torchmetrics' convention);
the same picture gives the same value in every form. A ``mask`` is [H, W] (or [N, 1, H, W]) with 1
(True) on the *edited* pixels; background metrics are then computed over the unedited pixels only
(the correct way) or, with ``compat=True``, on full frames whose edited region is zeroed
(PIE-Bench's published evaluator). A batch of N pairs gives one number: MSE and PSNR from the
error over all N images (as torchmetrics), SSIM and LPIPS averaged over the images.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure

from eval.lpips import MetricModelError, load_lpips
from eval.report import NEEDS_MODEL

CLIP_MODEL = "openai/clip-vit-large-patch14"
DINO_MODEL = "facebook/dino-vitb8"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


IMAGE_FORMS = ("a PIL image, a uint8 array [H, W, 3], a uint8 tensor [3, H, W] or [N, 3, H, W], "
               "or a float tensor [3, H, W] or [N, 3, H, W] with values in [0, 1]")
MASK_FORMS = ("a PIL image (nonzero = edited), or an array or tensor [H, W], [1, H, W] or [N, 1, H, W] "
              "of booleans or of values in [0, 1] (1 = edited)")


def _describe(value) -> str:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    return f"{type(value).__name__}" + (f" {tuple(shape)} {dtype}" if shape is not None else "")


def to_tensor(image) -> torch.Tensor:
    """An image (or a batch) as float32 [N, 3, H, W] in [0, 1], on the CPU.

    Accepts ``IMAGE_FORMS``; anything else (a float array, values outside [0, 1], channels last
    in a tensor, …) is a TypeError that names them.
    """
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
        return torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()
    if isinstance(image, torch.Tensor) and image.ndim in (3, 4) and image.shape[-3] == 3:
        x = image.detach().cpu()
        x = x[None] if x.ndim == 3 else x
        if x.dtype == torch.uint8:
            return x.float() / 255.0
        if x.is_floating_point():
            x = x.float()
            if not bool(torch.isfinite(x).all()) or float(x.min()) < 0.0 or float(x.max()) > 1.0:
                raise TypeError(f"a float image tensor must hold values in [0, 1] (got {float(x.min()):g}…"
                                f"{float(x.max()):g}); accepted images: {IMAGE_FORMS}")
            return x.contiguous()
    raise TypeError(f"cannot use {_describe(image)} as an image; accepted: {IMAGE_FORMS}")


def _mask_tensor(mask) -> torch.Tensor:
    """A mask as float32 [N or 1, 1, H, W] with 1 on edited pixels."""
    if isinstance(mask, Image.Image):
        return torch.from_numpy((np.asarray(mask.convert("L")) > 0).astype(np.float32))[None, None]
    if isinstance(mask, np.ndarray) and (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.number)):
        mask = torch.from_numpy(np.array(mask))  # a copy: arrays from PIL are read-only
    if (isinstance(mask, torch.Tensor) and not mask.is_complex() and mask.ndim in (2, 3, 4)
            and (mask.ndim == 2 or mask.shape[-3] == 1)):
        m = mask.detach().cpu().float()
        if bool(torch.isfinite(m).all()) and float(m.min()) >= 0.0 and float(m.max()) <= 1.0:
            while m.ndim < 4:
                m = m[None]
            return m
    raise TypeError(f"cannot use {_describe(mask)} as a mask; accepted: {MASK_FORMS}")


def _keep(mask, shape) -> torch.Tensor | None:
    """Weights [N or 1, 1, H, W]: 1 on unedited pixels (mask == 0), 0 on edited ones."""
    if mask is None:
        return None
    keep = 1.0 - _mask_tensor(mask)
    if tuple(keep.shape[-2:]) != tuple(shape[-2:]) or keep.shape[0] not in (1, shape[0]):
        raise ValueError(f"mask of shape {tuple(keep.shape)} for images of shape {tuple(shape)}")
    return keep


def _pair(a, b, mask, compat: bool):
    x, y = to_tensor(a), to_tensor(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {tuple(x.shape)} and {tuple(y.shape)}")
    keep = _keep(mask, x.shape)
    if compat and keep is not None:
        return x * keep, y * keep, None
    return x, y, keep


def _masked_mean(values: torch.Tensor, keep: torch.Tensor | None) -> float:
    """Mean of ``values`` [N, C, H, W] over the kept pixels (NaN when none is kept)."""
    if keep is None:
        return float(values.mean())
    weights = keep.expand_as(values)
    total = float(weights.sum())
    return float((values * weights).sum()) / total if total > 0 else math.nan


def mse(a, b, mask=None, compat: bool = False) -> float:
    """Mean squared error of [0, 1] pixel values over the unedited part (or the whole image)."""
    x, y, keep = _pair(a, b, mask, compat)
    return _masked_mean((x - y) ** 2, keep)


def psnr(a, b, mask=None, compat: bool = False) -> float:
    """PSNR in dB for [0, 1] images over the unedited part; ``inf`` for identical images."""
    error = mse(a, b, mask, compat)
    if math.isnan(error):
        return math.nan
    return math.inf if error == 0 else 10.0 * math.log10(1.0 / error)


def ssim(a, b, mask=None, compat: bool = False) -> float:
    """SSIM (Gaussian window 11, σ 1.5) averaged over the unedited part's pixels (1 = identical)."""
    x, y, keep = _pair(a, b, mask, compat)
    value, full = structural_similarity_index_measure(x, y, data_range=1.0, return_full_image=True)
    # without a mask (or zeroed, in compat mode) it is torchmetrics' own value, which leaves out
    # the window's half-width at the borders; with one, the full map is averaged over kept pixels
    return float(value) if keep is None else _masked_mean(full, keep)


@lru_cache(maxsize=4)
def _lpips_model(net: str, backbone: str | None):
    return load_lpips(net, backbone)


def lpips(a, b, net: str = "alex", mask=None, compat: bool = False, backbone: str | None = None) -> float:
    """LPIPS distance (0 = identical) over the unedited part.

    ``backbone``: a local torchvision weight file, None for torchvision's (through torch.hub's
    cache), or "random" (tests only).
    """
    x, y, keep = _pair(a, b, mask, compat)
    model = _lpips_model(net, None if backbone is None else str(backbone))
    with torch.no_grad():
        if keep is None:
            return float(model(x * 2 - 1, y * 2 - 1).mean())
        return _masked_mean(model.distance_map(x * 2 - 1, y * 2 - 1), keep)


# ---------------------------------------------------------------- models through transformers
@lru_cache(maxsize=2)
def _clip(model_id: str):
    from transformers import CLIPModel, CLIPProcessor

    try:
        return CLIPModel.from_pretrained(model_id).eval(), CLIPProcessor.from_pretrained(model_id)
    except Exception as exc:
        raise MetricModelError(
            f"cannot load the CLIP model '{model_id}' ({type(exc).__name__}). Download it with "
            f"`huggingface-cli download {model_id}` (network needed once) or pass a local folder (--clip-model)."
        ) from None


def clip_score(images, prompts, model: str = CLIP_MODEL, masks=None) -> list[float]:
    """CLIP score per image: ``100 · max(cos(image, text), 0)`` with CLIP's projected embeddings.

    Args:
        images: PIL images; prompts: one per image.
        masks: optional [H, W] arrays; the image is then zeroed outside its mask first (the
            edited part alone, as PIE-Bench's "CLIP similarity edited").
    """
    clip, processor = _clip(str(model))
    if masks is not None and any(not np.asarray(m).any() for m in masks):
        raise ValueError("an empty mask has no edited part to score")
    if masks is not None:
        images = [
            (np.asarray(im.convert("RGB"), dtype=np.float32) * np.asarray(m, dtype=np.float32)[..., None]).astype(np.uint8)
            for im, m in zip(images, masks)
        ]
    inputs = processor(text=list(prompts), images=list(images), return_tensors="pt", padding="max_length", truncation=True)
    with torch.no_grad():
        text = clip.text_projection(clip.text_model(input_ids=inputs["input_ids"]).pooler_output)
        image = clip.visual_projection(clip.vision_model(pixel_values=inputs["pixel_values"]).pooler_output)
    cos = F.cosine_similarity(image, text, dim=-1)
    return [100.0 * max(float(c), 0.0) for c in cos]


@lru_cache(maxsize=2)
def _dino(model_id: str):
    from transformers import ViTModel

    try:
        return ViTModel.from_pretrained(model_id, add_pooling_layer=False).eval()
    except Exception as exc:
        raise MetricModelError(
            f"cannot load the DINO model '{model_id}' ({type(exc).__name__}). Download it with "
            f"`huggingface-cli download {model_id}` (network needed once) or pass a local folder (--dino-model)."
        ) from None


def _last_key_projection(vit) -> torch.nn.Module:
    """The key projection of a ViT's last block (transformers 5 layout, or 4.x's)."""
    if hasattr(vit, "layers"):
        return vit.layers[-1].attention.k_proj
    return vit.encoder.layer[-1].attention.attention.key


def dino_key_self_similarity(image, model: str = DINO_MODEL, compat: bool = False) -> torch.Tensor:
    """Cosine self-similarity [T, T] of the last layer's attention keys (heads concatenated, CLS
    token included) of DINO ViT, the structure descriptor of Tumanyan et al. (Splicing ViT).

    The image is resized to 224×224 (bilinear, antialiased) and normalized with ImageNet
    statistics. ``compat`` does as PIE-Bench's evaluator does: 0–255 values without dividing by
    255 first, and no antialiasing (its pinned torchvision 0.13 resizes tensors without it).
    Returns [T, T], or [N, T, T] for a batch of N images.
    """
    vit = _dino(str(model))
    side = vit.config.image_size
    x = to_tensor(image) * (255.0 if compat else 1.0)
    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=not compat)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    captured = {}
    last = _last_key_projection(vit)
    handle = last.register_forward_hook(lambda _m, _i, out: captured.__setitem__("keys", out))
    try:
        with torch.no_grad():
            vit(pixel_values=x)
    finally:
        handle.remove()
    keys = F.normalize(captured["keys"], dim=-1)  # [N, T, heads·d]
    similarity = keys @ keys.transpose(-1, -2)
    return similarity[0] if similarity.shape[0] == 1 else similarity


def structure_distance(a, b, model: str = DINO_MODEL, compat: bool = False) -> float:
    """MSE between the DINO key self-similarity matrices of two images (0 = same structure)."""
    return float(F.mse_loss(dino_key_self_similarity(a, model, compat), dino_key_self_similarity(b, model, compat)))


def preload(metrics, clip_model: str = CLIP_MODEL, dino_model: str = DINO_MODEL, lpips_net: str = "alex",
            lpips_backbone: str | None = None) -> None:
    """Load (and keep) the models the named metrics need, so that a missing one stops a run
    before it scores anything.

    Raises:
        MetricModelError: a model cannot be loaded; the message names it and how to get it.
    """
    kinds = {NEEDS_MODEL[m] for m in metrics if m in NEEDS_MODEL}
    if "clip" in kinds:
        _clip(str(clip_model))
    if "dino" in kinds:
        _dino(str(dino_model))
    if "lpips" in kinds:
        _lpips_model(lpips_net, None if lpips_backbone is None else str(lpips_backbone))


def path_or_id(value: str | Path) -> str:
    """A model argument as given: an existing folder's path, else a hub id."""
    return str(Path(value).expanduser()) if Path(str(value)).expanduser().exists() else str(value)
