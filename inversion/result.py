"""The ``Inversion`` record and its safetensors cache (invert once, edit many)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models.conditioning import Conditioning

log = logging.getLogger(__name__)

# Bump when the inversion's numbers change, so that older cache files are not reused.
FORMAT_VERSION = 1


# the tensors a record may carry besides its trajectory, in the order ``load`` reads them
_OPTIONAL = ("null_embeddings", "null_pooled", "time_ids", "offsets")


class InversionCacheError(ValueError):
    """A saved inversion could not be read (missing, truncated or not an inversion file)."""


@dataclass
class Inversion:
    """A photo turned into a starting point for editing.

    Attributes:
        trajectory: DDIM-inversion latents z_0 … z_T, [T+1, 1, 4, h, w].
        null_embeddings: one unconditional embedding per step [T, 1, 77, d], or None (the edit
            then uses the empty prompt's: "ddim", "direct").
        prompt: the source prompt it was inverted with.
        method: "null-text", "negative-prompt", "ddim", "direct" or "fixed-point".
        num_steps, guidance_scale: the DDIM steps T and the guidance w it was made for.
        model_id: the model it belongs to.
        image_hash: SHA-256 of the preprocessed image.
        stats: seconds per stage, UNet forward/backward counts, per-step losses, the working
            size [W, H] in pixels.
        null_pooled: SDXL: the per-step pooled unconditional embeddings [T, 1, p], else None.
        time_ids: SDXL: the photo's added conditions [1, 6] (original h, w, crop top, left,
            target h, w) the inversion was made with, which an edit must use too; else None.
        offsets: DirectInversion's per-step latent offsets [T, 1, 4, h, w], added to the edit's
            source row after each step (``editing.sampler.denoise``), else None.
    """

    trajectory: torch.Tensor
    null_embeddings: torch.Tensor | None
    prompt: str
    method: str
    num_steps: int
    guidance_scale: float
    model_id: str = ""
    image_hash: str = ""
    stats: dict = field(default_factory=dict)
    null_pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    offsets: torch.Tensor | None = None

    @property
    def nulls(self) -> torch.Tensor | Conditioning | None:
        """The per-step unconditional input as ``edit`` takes it: null_embeddings [T, 1, 77, d],
        on SDXL a ``Conditioning`` with the pooled ones too; None for plain DDIM."""
        if self.null_embeddings is None or self.null_pooled is None:
            return self.null_embeddings
        return Conditioning(self.null_embeddings, self.null_pooled)

    @property
    def x_T(self) -> torch.Tensor:
        """The starting latent z_T [1, 4, h, w]."""
        return self.trajectory[-1]

    @property
    def z_0(self) -> torch.Tensor:
        """The photo's latent [1, 4, h, w]."""
        return self.trajectory[0]

    def metadata(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "prompt": self.prompt,
            "method": self.method,
            "num_steps": self.num_steps,
            "guidance_scale": self.guidance_scale,
            "model_id": self.model_id,
            "image_hash": self.image_hash,
            "stats": self.stats,
        }

    def save(self, path: str | Path) -> Path:
        """Write tensors and metadata to one safetensors file, atomically (temporary name, rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"trajectory": self.trajectory.detach().cpu().contiguous()}
        for name in _OPTIONAL:
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name).detach().cpu().contiguous()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"inversion": json.dumps(self.metadata())})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Inversion":
        """Read a file written by ``save``.

        Raises:
            InversionCacheError: the file is missing, truncated, or not an inversion; or its
                tensors disagree with its metadata (lengths other than T+1 latents and T null
                embeddings / pooled / offsets, latents other than [T+1, N, C, h, w] at the working
                size ``stats["size"]`` records, null embeddings other than [T, N, tokens, d],
                offsets other than the latents' shape); or a tensor holds NaN or infinite values.
        """
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["inversion"])
                trajectory = f.get_tensor("trajectory")
                nulls, pooled, ids, offsets = (f.get_tensor(k) if k in f.keys() else None for k in _OPTIONAL)
        except Exception as exc:  # safetensors raises several kinds for a damaged file
            raise InversionCacheError(f"{path}: not a readable inversion file ({type(exc).__name__}: {exc})") from None
        if meta.get("format") != FORMAT_VERSION:
            raise InversionCacheError(f"{path}: written by another version of this code (format {meta.get('format')})")
        steps = int(meta["num_steps"])
        if (trajectory.shape[0] != steps + 1 or (nulls is not None and nulls.shape[0] != steps)
                or any(x is not None and x.shape[0] != steps for x in (pooled, offsets))):
            raise InversionCacheError(f"{path}: tensor shapes do not match {steps} steps")
        tensors = dict(zip(("trajectory", *_OPTIONAL), (trajectory, nulls, pooled, ids, offsets)))
        stats = meta.get("stats")
        size = stats.get("size") if isinstance(stats, dict) else None
        problem = _shape_problem(tensors, size) or _nonfinite(tensors)
        if problem:
            raise InversionCacheError(f"{path}: {problem}")
        return cls(
            trajectory=trajectory,
            null_embeddings=nulls,
            prompt=meta["prompt"],
            method=meta["method"],
            num_steps=steps,
            guidance_scale=float(meta["guidance_scale"]),
            model_id=meta["model_id"],
            image_hash=meta["image_hash"],
            stats=meta.get("stats", {}),
            null_pooled=pooled,
            time_ids=ids,
            offsets=offsets,
        )


def _shape_problem(tensors: dict, size) -> str | None:
    """What is wrong with the shapes of a record's tensors (those present), or None.

    ``size``: the working size [W, H] in pixels recorded in the stats, if any: the latent's h × w
    must divide it by one common factor."""
    trajectory = tensors["trajectory"]
    if trajectory.ndim != 5 or not trajectory.is_floating_point():
        return f"the trajectory is {list(trajectory.shape)} {trajectory.dtype}, not [T+1, N, C, h, w] floats"
    n, *latent = trajectory.shape[1:]
    if size is not None:
        try:
            w, h = (int(v) for v in size)
        except (TypeError, ValueError):
            return f"its recorded size {size!r} is not [W, H]"
        lh, lw = latent[1:]
        if not lw or not lh or w % lw or h % lh or w // lw != h // lh:
            return f"latents of {lw}×{lh} do not match the recorded size {w}×{h}"
    expected = {
        "null_embeddings": (4, lambda s: s[1] == n),
        "null_pooled": (3, lambda s: s[1] == n),
        "time_ids": (2, lambda s: s[1] == 6),
        "offsets": (5, lambda s: list(s[1:]) == [n, *latent]),
    }
    for name, (ndim, fits) in expected.items():
        x = tensors[name]
        if x is not None and (x.ndim != ndim or not x.is_floating_point() or not fits(x.shape)):
            return f"its {name} tensor {list(x.shape)} {x.dtype} does not fit latents of {list(trajectory.shape)}"
    return None


def _nonfinite(tensors: dict) -> str | None:
    """Which tensor holds NaN or infinite values, or None (one ``isfinite`` pass each)."""
    for name, x in tensors.items():
        if x is not None and not bool(torch.isfinite(x).all()):
            return f"its {name} tensor holds NaN or infinite values"
    return None


def cache_key(**parts) -> str:
    """A SHA-256 key over every part that changes an inversion's result (image hash, prompt,
    model, scheduler config, method and parameters, dtype, format version)."""
    text = json.dumps({**parts, "format": FORMAT_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_path(cache_dir: str | Path, key: str) -> Path:
    """Where the inversion with ``key`` is stored in ``cache_dir``."""
    return Path(cache_dir) / f"inversion-{key[:32]}.safetensors"


def load_cached(cache_dir: str | Path, key: str, shapes: dict[str, tuple[int, ...]] | None = None) -> Inversion | None:
    """The cached inversion for ``key``, or None when absent, unreadable, non-finite or of the
    wrong shape (``Inversion.load``'s checks, and ``shapes``: for a tensor's name, the shape the
    caller's model and working size imply after its first, per-step axis, e.g. the trajectory's
    (1, C, h, w)), each with one warning naming the file and the reason. The caller recomputes
    it, and its fresh save replaces the file."""
    path = cache_path(cache_dir, key)
    if not path.exists():
        return None
    try:
        inv = Inversion.load(path)
        for name, shape in (shapes or {}).items():
            x = getattr(inv, name)
            if x is not None and tuple(x.shape[1:]) != tuple(shape):
                raise InversionCacheError(f"{path}: its {name} tensor is {list(x.shape)}, not [{x.shape[0]}, "
                                          f"{', '.join(map(str, shape))}] as this model and size need")
    except InversionCacheError as exc:
        log.warning("ignoring a damaged inversion cache file, recomputing: %s", exc)
        return None
    return inv
