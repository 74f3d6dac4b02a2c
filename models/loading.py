"""Loading Stable Diffusion: a hub id, a local diffusers folder, or an offline model (``tiny``,
``tiny-xl``, ``tiny-v``). SD 1.x/2.x load as a ``StableDiffusionPipeline``, SDXL base as a
``StableDiffusionXLPipeline`` (the folder's model_index.json says which)."""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from data.images import resolve_size
from models.names import DEFAULT_MODEL
from models.tiny import SCHEDULER_CONFIG, TINY_V_VERSION, TINY_VERSION, build_tiny_pipeline, build_tiny_v_pipeline, tiny_model_dir
from models.tokenizer import check_tokenizer

log = logging.getLogger(__name__)

# Models that ship inside the package: name → diffusers folder.
SHIPPED_MODELS = {"shapes": Path(__file__).parent / "shapes"}
# Offline models built from configs with random weights on first use: name → (cache folder, builder).
OFFLINE_MODELS = {"tiny": (TINY_VERSION, build_tiny_pipeline), "tiny-v": (TINY_V_VERSION, build_tiny_v_pipeline)}
XL_CLASS = "StableDiffusionXLPipeline"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names it and says how to get it."""


class DeviceError(ModelLoadError):
    """A device was asked for that this torch build or this machine cannot use."""


def _available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{k}" for k in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` if this torch can run on it; else DeviceError, one line
    saying what is available and how to get a GPU build. Checked before any model is loaded."""
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"--device {device!r} is not a device name: give cpu, cuda, cuda:N or mps") from None
    available = ", ".join(_available_devices())
    build = f"this torch ({torch.__version__})"
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            why = "was built without CUDA" if torch.version.cuda is None else "finds no CUDA GPU or driver"
            raise DeviceError(f"--device {device}: {build} {why}; available here: {available}. For an NVIDIA GPU install "
                              "a CUDA build of torch (https://pytorch.org/get-started/locally/), or leave --device out")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                              f"available here: {available}")
    elif chosen.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise DeviceError(f"--device {device}: {build} cannot use Apple's MPS here (it needs an Apple-silicon Mac "
                              f"with macOS 12.3+); available here: {available}")
    elif chosen.type != "cpu":
        backend = getattr(torch, chosen.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise DeviceError(f"--device {device}: {build} cannot use {chosen.type} here; available here: {available}")
    return chosen


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: the one given (checked by ``check_device``), else cuda > mps > cpu."""
    if device is not None:
        return check_device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: torch.dtype | str | None = None) -> torch.dtype:
    """The dtype to run in: the one given (a torch dtype or "fp16"/"bf16"/"fp32"/"fp64"), else
    float16 on CUDA and float32 elsewhere."""
    if isinstance(dtype, str):
        names = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
                 "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
                 "fp64": torch.float64, "float64": torch.float64}
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}: use one of fp16, bf16, fp32, fp64")
        return names[dtype]
    if dtype is not None:
        return dtype
    return torch.float16 if device.type == "cuda" else torch.float32


def ddim_scheduler(config: dict) -> DDIMScheduler:
    """SPEC.md's DDIM scheduler, keeping the model's own ``prediction_type`` (v for SD 2.x 768)."""
    return DDIMScheduler(**SCHEDULER_CONFIG, prediction_type=config.get("prediction_type", "epsilon"))


def _pipeline_class(source: str) -> type[DiffusionPipeline]:
    """The pipeline class a folder or hub id holds, from its model_index.json (SD or SDXL base)."""
    with warnings.catch_warnings():  # huggingface_hub warns about an argument diffusers passes it
        warnings.simplefilter("ignore")
        name = DiffusionPipeline.load_config(source).get("_class_name", "")
    if name == XL_CLASS:
        return StableDiffusionXLPipeline
    if "XL" in name:
        raise ValueError(f"it is a {name}; only the SDXL base pipeline ({XL_CLASS}) is supported, not the refiner "
                         "or other SDXL variants")
    return StableDiffusionPipeline


def _from_pretrained(source: str, dtype: torch.dtype, what: str) -> DiffusionPipeline:
    try:
        cls = _pipeline_class(source)
        extra = (dict(add_watermarker=False) if cls is StableDiffusionXLPipeline
                 else dict(safety_checker=None, requires_safety_checker=False))
        return cls.from_pretrained(source, dtype=dtype, **extra)
    except Exception as exc:  # huggingface_hub / OSError / ValueError: all mean "not loadable"
        hint = (
            f"Download it first (`huggingface-cli download {source}` on a machine with network "
            "access, with HF_HUB_OFFLINE unset), or pass a local diffusers folder, or 'tiny' for the "
            "offline test model."
            if what == "hub id"
            else "Point --model at a folder written by `save_pretrained` (it has model_index.json, "
            "unet/, vae/, text_encoder/, tokenizer/, scheduler/; SDXL also text_encoder_2/, tokenizer_2/)."
        )
        raise ModelLoadError(f"could not load the Stable Diffusion model {what} '{source}': "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. {hint}") from None


def load_pipeline(
    model: str | Path = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> DiffusionPipeline:
    """Load a Stable Diffusion pipeline ready for inversion and editing.

    Args:
        model: a hub id (v1.4, v1.5, 2.x, SDXL base 1.0), a local diffusers folder, an offline
            test model with random weights ("tiny"; "tiny-xl", SDXL-shaped; "tiny-v",
            v-prediction) or "shapes" (the shipped model trained on the shapes world).
        device: where to run; default cuda > mps > cpu.
        dtype: default float16 on CUDA, float32 elsewhere.

    Returns:
        A StableDiffusionPipeline (a StableDiffusionXLPipeline for SDXL) with SPEC.md's DDIM
        scheduler and no safety checker, in eval mode. Under float16 an SDXL VAE runs in float32
        (it overflows in float16; its config says ``force_upcast``).

    Raises:
        ModelLoadError: the model is not in the local cache (offline), not on the hub, or the folder
            is not a diffusers model.
    """
    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    name = str(model)
    if name in OFFLINE_MODELS:
        pipe = _from_pretrained(str(tiny_model_dir(*OFFLINE_MODELS[name])), dtype, "folder")
    elif name == "tiny-xl":
        from models.tiny_xl import TINY_XL_VERSION, build_tiny_xl_pipeline

        pipe = _from_pretrained(str(tiny_model_dir(TINY_XL_VERSION, build_tiny_xl_pipeline)), dtype, "folder")
    elif name in SHIPPED_MODELS:
        folder = SHIPPED_MODELS[name]
        if not (folder / "model_index.json").is_file():
            raise ModelLoadError(
                f"the '{name}' model is not in this installation ({folder} has no model_index.json): "
                f"train one with `python -m pipelines.train_shapes --out DIR` and pass --model DIR"
            )
        pipe = _from_pretrained(str(folder), dtype, "folder")
    elif Path(name).expanduser().exists():
        folder = Path(name).expanduser()
        if not (folder / "model_index.json").is_file():
            raise ModelLoadError(
                f"'{folder}' is not a diffusers model folder: it has no model_index.json. Convert a "
                "single-file checkpoint with `StableDiffusionPipeline.from_single_file(...)."
                "save_pretrained(folder)`, or download one with `huggingface-cli download`."
            )
        pipe = _from_pretrained(str(folder), dtype, "folder")
    else:
        pipe = _from_pretrained(name, dtype, "hub id")
    xl = isinstance(pipe, StableDiffusionXLPipeline)
    try:
        check_tokenizer(pipe.tokenizer, name)
        if xl:
            check_tokenizer(pipe.tokenizer_2, f"{name} (tokenizer_2)")
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    pipe.scheduler = ddim_scheduler(dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.eval()
    pipe.vae.eval()
    pipe.text_encoder.eval()
    if xl:
        pipe.text_encoder_2.eval()
    pipe = pipe.to(device)
    if xl and dtype == torch.float16 and getattr(pipe.vae.config, "force_upcast", False):
        pipe.vae.to(torch.float32)
    log.info("loaded %s on %s in %s", name, device, dtype)
    return pipe


def image_size(pipe: DiffusionPipeline) -> int:
    """The model's native image size in pixels: UNet sample size × VAE downsampling factor."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def size_step(pipe: StableDiffusionPipeline) -> int:
    """What the sides of an image must be multiples of for this model: the VAE's downsampling
    times the UNet's (×2 per down block but the last): 64 for SD 1.x and 2.x."""
    return int(pipe.vae_scale_factor) * 2 ** (len(pipe.unet.config.block_out_channels) - 1)


def working_size(pipe: StableDiffusionPipeline, photo_size: tuple[int, int], request="auto") -> tuple[int, int]:
    """The size (W, H) a ``photo_size`` = (width, height) photo is edited at: ``request`` is "auto"
    (the photo's ratio at the model's native area), a side N or (W, H); see ``data.images.resolve_size``."""
    return resolve_size(request, photo_size[0], photo_size[1], image_size(pipe), size_step(pipe))


def weights_fingerprint(pipe, sample: int = 16) -> str:
    """A short hash of the pipeline's weights (UNet, text encoders, VAE), for cache keys: each
    parameter's name, shape, dtype and its first and last ``sample`` values. Training or
    fine-tuning changes nearly every value, so a model folder whose weights were replaced gets a
    new fingerprint under the same name; reading a few values per tensor keeps it cheap at SD scale.
    """
    digest = hashlib.sha256()
    for part in ("unet", "text_encoder", "text_encoder_2", "vae"):
        module = getattr(pipe, part, None)
        if module is None:
            continue
        for name, p in module.named_parameters():
            flat = p.detach().reshape(-1)
            ends = torch.cat([flat[:sample], flat[-sample:]]).float().cpu()
            digest.update(f"{part}.{name}{tuple(p.shape)}{p.dtype}".encode())
            digest.update(ends.numpy().tobytes())
    return digest.hexdigest()[:16]
