"""The shapes model's gate (``python -m bench shapes --gate``): does it follow prompts, and do real
(rendered) photos invert well?

- Generation: seeds 0–99, each with one single-object caption drawn in turn from the 72 of the
  required vocabulary, SPEC's defaults (50 DDIM steps, w = 7.5); the detector must find the named
  shape and colour in ≥ 90 %. Two-object captions are reported beside, not gated.
- Inversion: rendered scenes (never generations) inverted at w = 7.5 by DDIM, negative-prompt and
  null-text inversion; null-text must reconstruct with PSNR ≥ 30 dB and better than the other two.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from data.shapes import random_scene, render, ShapeObject, single_object_captions
from eval.metrics import psnr
from eval.shapes import detect

GENERATION_GATE = 0.90
PSNR_GATE = 30.0
# Photos for the inversion check come from these scene seeds (training scenes start at 1,000,000).
PHOTO_SEEDS = range(500, 600)


def gate_caption(index: int) -> tuple[str, str, str, str, str]:
    """The index-th gate caption (cycling through the 72) and its size, colour, shape, background."""
    size, colour, shape, background = single_object_captions()[index % 72]
    return f"a {size} {colour} {shape} on a {background} background", size, colour, shape, background


def generate(pipe, prompts: list[str], seeds: list[int], steps: int = 50, guidance: float = 7.5) -> list:
    """One image per (prompt, seed) with diffusers' own pipeline (SPEC's DDIM scheduler)."""
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    with torch.no_grad():
        return pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                    height=side, width=side).images


def gate_generation(pipe, seeds=range(100), batch: int = 10, steps: int = 50) -> dict:
    """Fraction of generations whose largest detected object has the named shape and colour (and,
    reported beside, the background and the size), over single-object captions; plus two-object
    captions (both objects found anywhere)."""
    seeds = list(seeds)
    world = model_world_of(pipe)  # the size word is read with the bands of the model's own world
    hits = {"shape_and_colour": 0, "background": 0, "size": 0}
    failures = []
    for start in range(0, len(seeds), batch):
        chunk = seeds[start:start + batch]
        captions = [gate_caption(s) for s in chunk]
        images = generate(pipe, [c[0] for c in captions], chunk, steps)
        for seed, (prompt, size, colour, shape, background), image in zip(chunk, captions, images):
            found = detect(image, world)
            # the named object must be the largest thing in the picture, not one blob among many
            main = found.objects[0] if found.objects else None
            ok = main is not None and (main.shape, main.colour) == (shape, colour)
            hits["shape_and_colour"] += ok
            hits["background"] += found.background == background
            hits["size"] += ok and main.size == size
            if not ok:
                failures.append(f"seed {seed} '{prompt}': saw {[(o.colour, o.shape) for o in found.objects]}")
    two = []
    for seed in seeds[: min(20, len(seeds))]:
        a = gate_caption(seed)
        b = gate_caption(seed * 7 + 3)
        two.append((f"a {a[2]} {a[3]} and a {b[2]} {b[3]} on a {a[4]} background", a, b, seed))
    two_hits = 0
    for start in range(0, len(two), batch):
        chunk = two[start:start + batch]
        images = generate(pipe, [c[0] for c in chunk], [c[3] for c in chunk], steps)
        for (_, a, b, _), image in zip(chunk, images):
            found = detect(image, world)
            two_hits += found.has(shape=a[3], colour=a[2]) and found.has(shape=b[3], colour=b[2])
    n = len(seeds)
    return {
        "generations": n,
        "shape_and_colour": hits["shape_and_colour"] / n,
        "background": hits["background"] / n,
        "size_too": hits["size"] / n,
        "two_objects_both_found": two_hits / max(1, len(two)),
        "passed": hits["shape_and_colour"] / n >= GENERATION_GATE,
        "failures": failures[:10],
    }


# Every inversion the gate's table reads, as (label, invert() keywords); the gate itself judges
# null-text against ddim and negative-prompt
INVERSIONS = (("ddim", {"method": "ddim"}), ("negative-prompt", {"method": "negative-prompt"}),
              ("null-text", {"method": "null-text"}), ("direct", {"method": "direct"}),
              ("fixed-point", {"method": "fixed-point", "fixed_point_steps": 5}),
              ("fixed-point-anchor", {"method": "fixed-point", "fixed_point_anchor": 2.0}))
GATE_METHODS = ("ddim", "negative-prompt", "null-text")


def model_world_of(pipe) -> int:
    """The shapes world version ``pipe`` was trained on (its folder's ``training.json``; 1 for a
    model that is not a folder, or was trained before world 2)."""
    from models.shapes_training import model_world

    folder = Path(str(getattr(pipe, "name_or_path", "") or ""))
    return model_world(folder) if folder.is_dir() else 1


def photo_scenes(pipe, count: int) -> list:
    """The first ``count`` rendered single-object photos (``PHOTO_SEEDS``), drawn in the world the
    model was trained on, so that a world-2 model is judged on world-2 photos."""
    world = model_world_of(pipe)
    return [random_scene(seed, max_objects=1, world=world) for seed in list(PHOTO_SEEDS)[:count]]


def gate_inversion(pipe, photos: int = 5, steps: int = 50, inner_steps: int = 10, guidance: float = 7.5,
                   methods: tuple[str, ...] = tuple(label for label, _ in INVERSIONS)) -> dict:
    """Reconstruction PSNR (dB) of rendered single-object scenes per inversion (labels of
    ``INVERSIONS``; the gate's three at least), and the VAE's own round trip as the ceiling.
    Fixed-point runs at K = 5 (DCI's), its anchored variant at λ = 2, K = 5."""
    from inversion import invert, reconstruct
    from models.codec import decode_latents, encode_image

    scenes = photo_scenes(pipe, photos)
    images = [scene.image for scene in scenes]
    per_method: dict[str, list[float]] = {"vae": [psnr(image, decode_latents(pipe, encode_image(pipe, image))[0])
                                                  for image in images]}
    seconds: dict[str, float] = {}
    for method, options in INVERSIONS:
        if method not in methods:
            continue
        # all photos in one UNet batch: each keeps its own optimizer and early stop
        started = time.perf_counter()
        inversions = invert(pipe, images, [scene.caption for scene in scenes], num_steps=steps,
                            num_inner_steps=inner_steps, guidance_scale=guidance, progress=False, **options)
        seconds[method] = time.perf_counter() - started
        per_method[method] = [psnr(image, reconstruct(pipe, inv)) for image, inv in zip(images, inversions)]
    means = {m: round(statistics.mean(v), 2) for m, v in per_method.items()}
    passed = means["null-text"] >= PSNR_GATE and means["null-text"] > max(means["ddim"], means["negative-prompt"])
    return {"photos": photos, "psnr_db": means, "min_psnr_db": {m: round(min(v), 2) for m, v in per_method.items()},
            "per_photo_db": {m: [round(x, 2) for x in v] for m, v in per_method.items()},
            "seconds_per_photo": {m: round(s / photos, 1) for m, s in seconds.items()},
            "passed": passed}


def bench_shapes_gate(model: str = "shapes", seeds: int = 100, photos: int = 5, steps: int = 50) -> dict:
    """Both gate checks on a model (a name or folder ``load_pipeline`` takes)."""
    from models.loading import load_pipeline

    pipe = load_pipeline(model, device="cpu", dtype=torch.float32)
    generation = gate_generation(pipe, range(seeds), steps=steps)
    inversion = gate_inversion(pipe, photos=photos, steps=steps)
    return {"model": model, "generation": generation, "inversion": inversion,
            "passed": generation["passed"] and inversion["passed"]}


def print_gate(report: dict) -> str:
    """The gate report as lines of text."""
    g, i = report["generation"], report["inversion"]
    lines = [
        f"model {report['model']}",
        f"generation: named shape and colour found in {g['shape_and_colour']:.0%} of {g['generations']} "
        f"(gate {GENERATION_GATE:.0%}: {'pass' if g['passed'] else 'FAIL'}); background {g['background']:.0%}, "
        f"size too {g['size_too']:.0%}; two-object captions, both found: {g['two_objects_both_found']:.0%}",
        "inversion PSNR (dB) on rendered photos: " + ", ".join(f"{m} {v}" for m, v in i["psnr_db"].items())
        + f" (gate: null-text ≥ {PSNR_GATE} and best: {'pass' if i['passed'] else 'FAIL'})",
        "seconds per photo (all photos in one batch): " + ", ".join(f"{m} {v}" for m, v in i["seconds_per_photo"].items()),
        *(f"  missed: {f}" for f in g["failures"]),
        f"gate: {'PASSED' if report['passed'] else 'FAILED'}",
    ]
    return "\n".join(lines)
