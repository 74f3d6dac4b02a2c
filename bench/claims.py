"""The papers' claims, measured on the shapes model (``python -m bench shapes --claims``).

Each claim of Prompt-to-Prompt and null-text inversion (issue #14) becomes numbers against a
threshold (``eval.claims.THRESHOLDS``):

- (b) word swaps of a colour, a shape and a background word, from generated and from rendered
  photos (null-text inversion): the detector sees the change, the layout is kept (colour and
  background: IoU of the object, source against edit; shape: centroid and IoU against the target
  shape drawn in the source object's bounding square). Beside it the target prompts regenerated
  from the same noise (or the same inversion) without control.
- (c) refinement: "a red circle on a white background" → "a big red circle on a black background".
- (d) local blend: background PSNR against the source, at the model's own blend defaults
  (``--blend-sweep`` measures the map sides and thresholds to choose them).
- (e) reweighting over {−1, 0, 0.5, 1, 1.5, 2}: the colour word's saturation, "big"'s area.
- (f) rendered photos inverted three ways, edited, background PSNR against the photo.
- (g) the shape word's averaged attention map against the object.
- (i) not a claim of its own: the generated cases' sources null-text inverted, then swapped from the
  inversion, judged as (b). Beside (b) generated (the same images edited from their own noise) and
  (b) photos, it measures what editing from an inverted trajectory costs, apart from the photos' look.

Generated cases start from seeded noise with a single-object caption without a size word; a seed
whose source image does not show the named shape, colour and background is skipped (the claims are
about editing, not about generation, which the gate measures). Everything is seeded: a run repeats.
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from bench.shapes import model_world_of, photo_scenes
from data.shapes import BACKGROUNDS, COLOURS, SHAPES
from editing import EditSpec, edit
from editing.align import word_token_indices
from editing.controllers import PromptToPromptController, reweight_edit
from editing.edit import build_controller
from editing.sampler import denoise
from editing.visualize import captioned, enlarged, grid, heatmap
from eval.claims import (
    THRESHOLDS,
    Source,
    attention_mask,
    is_monotonic,
    judge_attention,
    judge_refine,
    judge_swap,
    saturation,
)
from eval.metrics import psnr
from eval.shapes import detect
from inversion import METHODS
from models.codec import decode_latents, encode_text
from models.defaults import blend_defaults

log = logging.getLogger(__name__)

SWAPS = ("colour", "shape", "background")
SCALES = (-1.0, 0.0, 0.5, 1.0, 1.5, 2.0)
# Generated cases take their noise from these seeds; photos are the gate's scenes (500, 501, …).
GENERATED_SEEDS = range(20_000, 20_200)
PHOTO_SEEDS = range(500, 600)
# Local blend settings measured by --blend-sweep (thresholds on the normalized map).
SWEEP_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
# (e): the reweighting curve must span at least this fraction of the property's value at ×1
REWEIGHT_MOVES = 0.05


# ---------------------------------------------------------------- cases
@dataclass
class Case:
    """One generated case: the source words, a different word of each kind for the swaps."""

    seed: int
    colour: str
    shape: str
    background: str
    targets: dict[str, str]

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"

    @property
    def refine_background(self) -> str:
        return "black" if self.background != "black" else "white"

    @property
    def refine_prompt(self) -> str:
        return f"a big {self.colour} {self.shape} on a {self.refine_background} background"


def pick_targets(rng: np.random.Generator, colour: str, shape: str, background: str) -> dict[str, str]:
    """A different colour, shape and background word for each swap, drawn from ``rng``."""
    return {"colour": str(rng.choice([c for c in COLOURS if c != colour])),
            "shape": str(rng.choice([s for s in SHAPES if s != shape])),
            "background": str(rng.choice([b for b in BACKGROUNDS if b != background]))}


def make_case(seed: int) -> Case:
    """The seeded words of a generated case."""
    rng = np.random.default_rng(seed)
    colour, shape, background = (str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)),
                                 str(rng.choice(list(BACKGROUNDS))))
    return Case(seed, colour, shape, background, pick_targets(rng, colour, shape, background))


def swapped(prompt: str, old: str, new: str) -> str:
    """``prompt`` with the word ``old`` replaced by ``new`` (whole words only)."""
    words = prompt.split(" ")
    if old not in words:
        raise ValueError(f"'{old}' is not a word of '{prompt}'")
    return " ".join(new if w == old else w for w in words)


def swap_prompts(prompt: str, words: dict[str, str], targets: dict[str, str]) -> dict[str, str]:
    """One target prompt per swap kind: ``prompt`` with that kind's word (``words[kind]``) swapped."""
    return {kind: swapped(prompt, words[kind], targets[kind]) for kind in SWAPS}


def noise(pipe, seed: int) -> torch.Tensor:
    """The starting latent [1, 4, h, w] of a seed (what ``edit(generator=…)`` would draw)."""
    side = pipe.unet.config.sample_size
    return torch.randn((1, pipe.unet.config.in_channels, side, side), generator=torch.Generator().manual_seed(seed))


def uncontrolled(prompts: list[str]) -> EditSpec:
    """A spec that controls nothing: every prompt is generated on its own from the shared noise."""
    return EditSpec(list(prompts), cross_replace_steps=0.0, self_replace_steps=0.0)


def _word_map(result, row: int, prompt: str, word: str, tokenizer) -> torch.Tensor:
    """The averaged cross-attention map [h, w] of ``word``'s tokens in row ``row`` of an edit."""
    tokens = word_token_indices(prompt, word, tokenizer)
    return result.attention[row][..., tokens].float().mean(-1)


# ---------------------------------------------------------------- generated cases: (b), (c), (d), (g)
def model_blend(pipe, side: int | None = None, threshold: float | None = None) -> tuple[int | None, float]:
    """(map side, threshold) of the local blend: the ones given, else the model's own
    (``promptedit.json``), else SPEC's (side None: a quarter of the latent or the smallest maps; 0.3)."""
    own = blend_defaults(pipe)
    return side or own.map_side, threshold or own.threshold or 0.3


def run_generated(pipe, count: int, blend: tuple[int | None, float], steps: int = 50,
                  pictures: list | None = None, parts: str = "bcdg") -> dict:
    """(b), (c), (d), (g) and (i) on ``count`` generated cases (seeds whose source is right).

    ``blend``: (map side, threshold) for the local blend edits. ``pictures`` collects grid rows.
    ``parts``: "b" also edits without control, "c" refines, "d" blends, "i" inverts the source and
    swaps from the inversion ((g) comes with every case)."""
    records, skipped = [], []
    world = model_world_of(pipe)
    bar = tqdm(total=count, desc="claims: generated cases", file=sys.stderr)
    for seed in GENERATED_SEEDS:
        if len(records) >= count:
            break
        case = make_case(seed)
        latent = noise(pipe, seed)
        targets = swap_prompts(case.prompt, {"colour": case.colour, "shape": case.shape,
                                             "background": case.background}, case.targets)
        p2p = edit(pipe, EditSpec([case.prompt, *targets.values()], mode="replace"), latents=latent,
                   num_steps=steps, return_attention=True)
        found = detect(p2p.images[0])
        source = Source.from_detection(p2p.images[0], found, world)
        if source is None or (source.shape, source.colour, source.background) != (case.shape, case.colour, case.background):
            skipped.append(seed)
            bar.set_postfix(skipped=len(skipped))
            continue
        record = {
            "seed": seed, "prompt": case.prompt,
            "p2p": {k: judge_swap(k, case.targets[k], source, p2p.images[1 + i]) for i, k in enumerate(SWAPS)},
            "attention_iou": judge_attention(_word_map(p2p, 0, case.prompt, case.shape, pipe.tokenizer), source.mask),
            "attention_side": int(p2p.attention.shape[1]),
        }
        if "b" in parts or "c" in parts:
            plain = edit(pipe, uncontrolled([*targets.values(), case.refine_prompt]), latents=latent, num_steps=steps)
            record["plain"] = {k: judge_swap(k, case.targets[k], source, plain.images[i]) for i, k in enumerate(SWAPS)}
            record["refine_plain"] = judge_refine(source, plain.images[3], "big", case.refine_background)
        if "c" in parts:
            refine = edit(pipe, EditSpec([case.prompt, case.refine_prompt], mode="refine"), latents=latent, num_steps=steps)
            record["refine"] = judge_refine(source, refine.images[1], "big", case.refine_background)
        if "i" in parts:
            record["inverted"], inverted_images = swap_from_inversion(pipe, case.prompt, targets, case.targets, source, steps)
        if "d" in parts:
            blended = edit(pipe, EditSpec([case.prompt, targets["colour"], targets["shape"]], mode="replace",
                                          blend_words=[[case.colour, case.shape], [case.targets["colour"], case.shape],
                                                       [case.colour, case.targets["shape"]]],
                                          blend_resolution=blend[0], blend_threshold=blend[1]),
                           latents=latent, num_steps=steps)
            # blend rows are measured against their own source row (the same image, same noise)
            record["blend"] = {k: judge_swap(k, case.targets[k], replace(source, image=blended.images[0]),
                                             blended.images[1 + i]) for i, k in enumerate(("colour", "shape"))}
        records.append(record)
        bar.update(1)
        log.info("generated seed %s (%s): %s", seed, case.prompt,
                 {k: v["changed"] for k, v in record["p2p"].items()})
        shown: dict[str, list] = {}
        if pictures is not None and "i" in parts:
            shown["inverted"] = [captioned(enlarged(im, 128), t) for im, t in zip(
                [p2p.images[0], *p2p.images[1:], *inverted_images],
                ["source", "P2P colour", "P2P shape", "P2P background", "inverted rec", "inv colour", "inv shape",
                 "inv background"])]
        if pictures is not None and set("bcd") <= set(parts):
            word_map = _word_map(p2p, 0, case.prompt, case.shape, pipe.tokenizer).numpy()
            shown.update({
                "swap": [captioned(enlarged(im, 128), t) for im, t in zip(
                    [p2p.images[0], *p2p.images[1:], *plain.images[:3]],
                    ["source", "P2P colour", "P2P shape", "P2P background", "plain colour", "plain shape", "plain bg"])],
                "refine": [captioned(enlarged(im, 128), t) for im, t in zip(
                    [p2p.images[0], refine.images[1], plain.images[3]], ["source", "P2P refine", "plain"])],
                "blend": [captioned(enlarged(im, 128), t) for im, t in zip(blended.images, ["source", "blend colour", "blend shape"])],
                "attention": [captioned(enlarged(p2p.images[0], 128), case.shape),
                              captioned(heatmap(word_map, p2p.images[0], 128), "map"),
                              captioned(enlarged(Image.fromarray(np.uint8(attention_mask(word_map, source.mask.shape)) * 255), 128),
                                        "half max")],
            })
        if shown:
            pictures.append(shown)
    bar.close()
    return {"records": records, "skipped_seeds": skipped}


def swap_from_inversion(pipe, prompt: str, prompts: dict[str, str], words: dict[str, str], source: Source,
                        steps: int = 50) -> tuple[dict, list[Image.Image]]:
    """(i): ``source.image`` null-text inverted with ``prompt``, then each swap (``prompts[kind]``, whose
    new word is ``words[kind]``) edited from that inversion and judged against ``source``.

    Returns ({kind: judge_swap's dict, "reconstruction_db": the inversion's source row against the
    image}, the edit's images: the reconstruction, then one per swap)."""
    from inversion import invert

    inv = invert(pipe, source.image, prompt, method="null-text", num_steps=steps, progress=False)
    result = edit(pipe, EditSpec([prompt, *prompts.values()], mode="replace"), inversion=inv)
    judged: dict = {k: judge_swap(k, words[k], source, result.images[1 + j]) for j, k in enumerate(prompts)}
    judged["reconstruction_db"] = psnr(np.asarray(source.image), np.asarray(result.images[0]))
    return judged, result.images


# ---------------------------------------------------------------- (e) reweighting
def reweight_batch(pipe, prompt: str, equalizers: list[dict[str, float]], latent: torch.Tensor,
                   steps: int = 50, guidance: float = 7.5) -> list[Image.Image]:
    """The source and one reweighted copy of ``prompt`` per equalizer ({word: scale}), in one batch
    (an ``EditSpec`` gives every target the same scales; the fader's curve needs one per row).

    Returns images, the source first."""
    prompts = [prompt] * (1 + len(equalizers))
    spec = EditSpec(prompts, mode="replace")
    base = build_controller(spec, pipe.tokenizer, steps)
    equalizer = torch.ones(len(equalizers), 77)
    for k, scales in enumerate(equalizers):
        for word, scale in scales.items():
            equalizer[k, word_token_indices(prompt, word, pipe.tokenizer)] = float(scale)
    controller = PromptToPromptController(cross_edit=reweight_edit(equalizer, base.cross_edit),
                                          cross_alpha=base.cross_alpha, self_steps=base.self_steps,
                                          self_max_pixels=base.self_max_pixels)
    with torch.no_grad():
        final, _ = denoise(pipe, encode_text(pipe, prompts), encode_text(pipe, [""]), latent, controller, steps, guidance)
        return decode_latents(pipe, final)


def run_reweight(pipe, count: int, steps: int = 50, pictures: list | None = None) -> dict:
    """(e): per case, the colour word and "big" scaled over ``SCALES``; the colour's saturation over
    the source object, and the largest object's area."""
    curves: dict[str, list[list[float]]] = {"saturation": [], "area": []}
    skipped = []
    bar = tqdm(total=count, desc="claims: reweighting cases", file=sys.stderr)
    for seed in GENERATED_SEEDS:
        if len(curves["area"]) >= count:
            break
        case = make_case(seed)
        prompt = f"a big {case.colour} {case.shape} on a {case.background} background"
        others = [s for s in SCALES if s != 1.0]
        equalizers = [{case.colour: s} for s in others] + [{"big": s} for s in others]
        images = reweight_batch(pipe, prompt, equalizers, noise(pipe, seed), steps)
        found = detect(images[0])
        source = Source.from_detection(images[0], found)
        if source is None or (source.shape, source.colour) != (case.shape, case.colour):
            skipped.append(seed)
            bar.set_postfix(skipped=len(skipped))
            continue
        bar.update(1)
        by_scale = {"saturation": dict(zip(others, images[1:1 + len(others)])),
                    "area": dict(zip(others, images[1 + len(others):]))}
        for name in by_scale:
            by_scale[name][1.0] = images[0]
        curves["saturation"].append([saturation(by_scale["saturation"][s], source.mask) for s in SCALES])
        curves["area"].append([float(detect(by_scale["area"][s]).objects[0].area) if detect(by_scale["area"][s]).objects
                               else 0.0 for s in SCALES])
        if pictures is not None:
            for name, word in (("saturation", case.colour), ("area", "big")):
                # "x", not "×": Pillow's default font draws × as a missing-glyph box
                pictures.append([captioned(enlarged(by_scale[name][s], 128), f"{word} x{s:g}") for s in SCALES])
    bar.close()
    means = {name: [round(statistics.mean(c[i] for c in values), 4) for i in range(len(SCALES))]
             for name, values in curves.items() if values}
    one = SCALES.index(1.0)
    return {"scales": list(SCALES), "cases": len(curves["area"]), "skipped_seeds": skipped, "mean": means,
            "monotonic": {name: is_monotonic(m) for name, m in means.items()},
            # a flat curve is monotonic too: the fader must also move the property, by ≥ REWEIGHT_MOVES of its ×1 value
            "moves": {name: bool(max(m) - min(m) >= REWEIGHT_MOVES * abs(m[one])) for name, m in means.items()},
            "monotonic_cases": {name: sum(is_monotonic(c) for c in values) / len(values)
                                for name, values in curves.items() if values}}


# ---------------------------------------------------------------- (f) rendered photos
def run_photos(pipe, count: int, blend: tuple[int | None, float], steps: int = 50, inner_steps: int = 10,
               pictures: list | None = None, methods: tuple[str, ...] = METHODS, with_plain: bool = True) -> dict:
    """(b) from rendered photos and (f): each photo inverted by ``methods`` and edited by the three
    swaps; for null-text also with the local blend and (``with_plain``) without control."""
    from inversion import invert

    scenes = photo_scenes(pipe, count)
    world = model_world_of(pipe)
    inversions, seconds = {}, {}
    for method in methods:
        started = time.perf_counter()
        inversions[method] = invert(pipe, [s.image for s in scenes], [s.caption for s in scenes], method=method,
                                    num_steps=steps, num_inner_steps=inner_steps, progress=True)
        seconds[method] = round((time.perf_counter() - started) / len(scenes), 1)
        log.info("inverted %d photos by %s in %.0f s", len(scenes), method, time.perf_counter() - started)
    records = []
    for i, scene in enumerate(tqdm(scenes, desc="claims: photo edits", file=sys.stderr)):
        obj = scene.objects[0]
        source = Source.from_scene(scene, world)
        targets = pick_targets(np.random.default_rng(PHOTO_SEEDS[i]), obj.colour, obj.shape, scene.background)
        prompts = swap_prompts(scene.caption, {"colour": obj.colour, "shape": obj.shape,
                                               "background": scene.background}, targets)
        record = {"seed": PHOTO_SEEDS[i], "prompt": scene.caption, "targets": targets}
        row_pictures = [captioned(enlarged(scene.image, 128), "photo")]
        for method in methods:
            inv = inversions[method][i]
            result = edit(pipe, EditSpec([scene.caption, *prompts.values()], mode="replace"), inversion=inv,
                          return_attention=method == "null-text")
            record[method] = {k: judge_swap(k, targets[k], source, result.images[1 + j], reference=scene.image)
                              for j, k in enumerate(SWAPS)}
            record[method]["reconstruction_db"] = psnr(np.asarray(scene.image), np.asarray(result.images[0]))
            row_pictures += [captioned(enlarged(im, 128), f"{method[:4]} {t}") for im, t in
                             zip(result.images, ["rec", *SWAPS])]
            if method != "null-text":
                continue
            record["attention_iou"] = judge_attention(_word_map(result, 0, scene.caption, obj.shape, pipe.tokenizer),
                                                      scene.masks[0])
            if with_plain:
                plain = edit(pipe, uncontrolled(list(prompts.values())), latents=inv.x_T,
                             null_embeddings=inv.null_embeddings, num_steps=inv.num_steps,
                             guidance_scale=inv.guidance_scale)
                record["plain"] = {k: judge_swap(k, targets[k], source, plain.images[j], reference=scene.image)
                                   for j, k in enumerate(SWAPS)}
                row_pictures += [captioned(enlarged(im, 128), t) for im, t in
                                 zip(plain.images, ["plain colour", "plain shape", "plain bg"])]
            blended = edit(pipe, EditSpec([scene.caption, prompts["colour"], prompts["shape"]], mode="replace",
                                          blend_words=[[obj.colour, obj.shape], [targets["colour"], obj.shape],
                                                       [obj.colour, targets["shape"]]],
                                          blend_resolution=blend[0], blend_threshold=blend[1]), inversion=inv)
            record["blend"] = {k: judge_swap(k, targets[k], source, blended.images[1 + j], reference=scene.image)
                               for j, k in enumerate(("colour", "shape"))}
            row_pictures += [captioned(enlarged(im, 128), t) for im, t in zip(blended.images[1:], ["blend colour", "blend shape"])]
        records.append(record)
        log.info("photo %s (%s) done", PHOTO_SEEDS[i], scene.caption)
        if pictures is not None:
            pictures.append(row_pictures)
    return {"records": records, "seconds_per_photo": seconds}


# Edit-time additions of issue #30, each on and off: proximal guidance (l0 at 0.75, the authors'
# PIE-Bench setting) and the latent guard (below t = 400)
GUIDANCE_VARIANTS = (("p2p", {}), ("+prox", {"prox": "l0", "prox_quantile": 0.75}), ("+guard", {"latent_guard": 400}),
                     ("+both", {"prox": "l0", "prox_quantile": 0.75, "latent_guard": 400}))


def run_guidance_table(pipe, count: int, steps: int = 50, inner_steps: int = 10) -> list[dict]:
    """(b) and (f) on rendered photos for every inversion × {plain P2P, +prox, +guard, +both}: one
    row each, so that the source of a gain shows. Returns rows with the reconstruction PSNR (dB),
    the background PSNR (dB) of the colour and shape swaps, and each swap's detector rate and IoU."""
    from bench.shapes import INVERSIONS
    from inversion import invert

    scenes = photo_scenes(pipe, count)
    world = model_world_of(pipe)
    cases = []
    for i, scene in enumerate(scenes):
        obj = scene.objects[0]
        targets = pick_targets(np.random.default_rng(PHOTO_SEEDS[i]), obj.colour, obj.shape, scene.background)
        prompts = swap_prompts(scene.caption, {"colour": obj.colour, "shape": obj.shape,
                                               "background": scene.background}, targets)
        cases.append((Source.from_scene(scene, world), targets, prompts))
    rows = []
    for label, options in tqdm(INVERSIONS, desc="claims: inversions × guidance", file=sys.stderr):
        started = time.perf_counter()
        inversions = invert(pipe, [s.image for s in scenes], [s.caption for s in scenes], num_steps=steps,
                            num_inner_steps=inner_steps, progress=False, **options)
        seconds = (time.perf_counter() - started) / len(scenes)
        for variant, extra in GUIDANCE_VARIANTS:
            judged, rebuilt = [], []
            for scene, inv, (source, targets, prompts) in zip(scenes, inversions, cases):
                result = edit(pipe, EditSpec([scene.caption, *prompts.values()], mode="replace", **extra), inversion=inv)
                judged.append({k: judge_swap(k, targets[k], source, result.images[1 + j], reference=scene.image)
                               for j, k in enumerate(SWAPS)})
                rebuilt.append(psnr(np.asarray(scene.image), np.asarray(result.images[0])))
            swaps = summarize_swaps(judged)
            rows.append({
                "inversion": label, "guidance": variant, "photos": len(scenes),
                "inversion_seconds_per_photo": round(seconds, 1),
                "reconstruction_db": _mean(rebuilt),
                "background_db": _mean([j[k]["background_db"] for j in judged for k in ("colour", "shape")]),
                **{f"{k}_changed": swaps[k]["changed"] for k in SWAPS},
                **{f"{k}_iou": swaps[k]["iou"] for k in SWAPS},
                "b_passed": all(swaps[k]["passed"] for k in SWAPS),
            })
    return rows


def print_guidance_table(rows: list[dict]) -> list[str]:
    """The inversion × guidance table as markdown lines."""
    lines = ["| inversion | guidance | s/photo | reconstruction dB | background dB | colour made / IoU | "
             "shape made / IoU | background made / IoU | (b) |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['inversion']} | {r['guidance']} | {r['inversion_seconds_per_photo']} | "
                     f"{r['reconstruction_db']} | {r['background_db']} | "
                     + " | ".join(f"{r[k + '_changed']:.0%} / {r[k + '_iou']:.2f}" for k in SWAPS)
                     + f" | {_pf(r['b_passed'])} |")
    return lines


# ---------------------------------------------------------------- summaries
def _finite(values) -> list:
    return [v for v in values if not (isinstance(v, float) and math.isnan(v))]


def _mean(values) -> float:
    values = _finite(values)
    return round(float(statistics.mean(values)), 3) if values else math.nan


def _median(values) -> float:
    return round(float(statistics.median(values)), 2) if values else math.nan


def _standard_error(values) -> float:
    """The standard error of the mean of ``values`` (sample standard deviation / √n): how far the
    mean over this many cases moves from one draw of cases to the next on the same model (not
    between trained models). NaN for fewer than two values."""
    values = _finite(values)
    return round(float(statistics.stdev(values) / math.sqrt(len(values))), 3) if len(values) > 1 else math.nan


def summarize_swaps(judged: list[dict[str, dict]]) -> dict:
    """Per swap kind over cases: detector rate, mean IoU and its standard error over the cases,
    median and ≤ 3 px rate of the centroid distance, mean background PSNR; and whether the kind
    meets (b)'s thresholds (on the mean: the standard error says how near a verdict is to chance)."""
    out = {}
    for kind in SWAPS:
        rows = [j[kind] for j in judged if kind in j]
        if not rows:
            continue
        summary = {
            "cases": len(rows),
            "changed": _mean([float(r["changed"]) for r in rows]),
            "iou": _mean([r["iou"] for r in rows]),
            "iou_se": _standard_error([r["iou"] for r in rows]),
            "centroid_px_median": _median([r["centroid_px"] for r in rows]),
            "centroid_within_3px": _mean([float(r["centroid_px"] <= THRESHOLDS["centroid_px"]) for r in rows]),
            "background_db": _mean([r["background_db"] for r in rows]),
        }
        layout = (summary["iou"] >= THRESHOLDS["shape_iou"] and summary["centroid_px_median"] <= THRESHOLDS["centroid_px"]
                  if kind == "shape" else summary["iou"] >= THRESHOLDS["layout_iou"])
        summary["passed"] = bool(summary["changed"] >= THRESHOLDS["detector"] and layout)
        out[kind] = summary
    return out


def summarize_refine(judged: list[dict], details: bool = True) -> dict:
    """(c)'s figures over ``judge_refine`` dicts: cases, the fraction made, the median centroid
    distance and the mean fraction of source pixels kept inside; with ``details`` also how often
    each added word took and how often a big object fits in place."""
    out = {"cases": len(judged), "changed": _mean([float(r["changed"]) for r in judged]),
           "centroid_px_median": _median([r["centroid_px"] for r in judged]),
           "kept_inside": _mean([r["kept_inside"] for r in judged])}
    if details:
        out.update({key: _mean([float(r[key]) for r in judged])
                    for key in ("size_changed", "background_changed", "fits_in_place")})
    return out


def summarize(generated: dict, reweight: dict | None, photos: dict | None, blend: tuple) -> dict:
    """The claims table: every claim's numbers, threshold and verdict."""
    claims: dict = {}
    g = generated["records"]
    if g:
        claims["b_generated"] = {"p2p": summarize_swaps([r["p2p"] for r in g]),
                                 "plain": summarize_swaps([r["plain"] for r in g if "plain" in r])}
        claims["b_generated"]["passed"] = all(s["passed"] for s in claims["b_generated"]["p2p"].values())
    inverted = [r["inverted"] for r in g if "inverted" in r]
    if inverted:  # a measurement beside (b), not a claim: no verdict of its own
        claims["i_generated_inverted"] = {"p2p": summarize_swaps(inverted),
                                          "reconstruction_db": _mean([r["reconstruction_db"] for r in inverted])}
    if g and "refine" in g[0]:
        refine = dict(summarize_refine([r["refine"] for r in g]),
                      plain=summarize_refine([r["refine_plain"] for r in g], details=False))
        refine["passed"] = bool(refine["changed"] >= THRESHOLDS["detector"]
                                and refine["centroid_px_median"] <= THRESHOLDS["centroid_px"]
                                and refine["kept_inside"] >= THRESHOLDS["kept_inside"])
        # beside the verdict: the sources where the world can draw a big object in place at all
        fitting = [r["refine"] for r in g if r["refine"]["fits_in_place"]]
        refine["where_it_fits"] = summarize_refine(fitting, details=False) if fitting else None
        claims["c_refine"] = refine
    if g and "blend" in g[0]:
        blended = summarize_swaps([r["blend"] for r in g])
        claims["d_local_blend"] = {
            "map_side": blend[0], "threshold": blend[1],
            "background_db": _mean([r["blend"][k]["background_db"] for r in g for k in r["blend"]]),
            "without_blend_db": _mean([r["p2p"][k]["background_db"] for r in g for k in ("colour", "shape")]),
            "changed": _mean([float(r["blend"][k]["changed"]) for r in g for k in r["blend"]]),
            "per_swap": blended,
        }
        claims["d_local_blend"]["passed"] = bool(claims["d_local_blend"]["background_db"] >= THRESHOLDS["blend_psnr_db"])
    if g:
        claims["g_attention"] = {"cases": len(g), "iou": _mean([r["attention_iou"] for r in g]),
                                 "map_side": g[0]["attention_side"]}
    if reweight is not None and reweight.get("mean"):
        claims["e_reweight"] = dict(reweight, passed=all(reweight["monotonic"].values()) and all(reweight["moves"].values()))
    if photos is not None and photos["records"]:
        p = photos["records"]
        methods = [m for m in METHODS if m in p[0]]
        per_method = {m: summarize_swaps([r[m] for r in p]) for m in methods}
        for m in methods:
            rows = [r[m][k] for r in p for k in ("colour", "shape")]
            per_method[m]["background_db"] = _mean([x["background_db"] for x in rows])
            per_method[m]["reconstruction_db"] = _mean([r[m]["reconstruction_db"] for r in p])
        claims["b_photos"] = {"p2p": per_method["null-text"],
                              "plain": summarize_swaps([r["plain"] for r in p if "plain" in r])}
        claims["b_photos"]["passed"] = all(s["passed"] for k, s in per_method["null-text"].items() if k in SWAPS)
        blend_rows = [r["blend"][k] for r in p for k in r["blend"]]
        claims["f_real"] = {
            "photos": len(p), "methods": per_method,
            "blend": {"background_db": _mean([x["background_db"] for x in blend_rows]),
                      "changed": _mean([float(x["changed"]) for x in blend_rows])},
            "seconds_per_photo": photos["seconds_per_photo"],
        }
        nt = per_method["null-text"]
        best_background = max(nt["background_db"], claims["f_real"]["blend"]["background_db"])
        claims["f_real"]["passed"] = bool(claims["b_photos"]["passed"] and best_background >= THRESHOLDS["real_background_db"])
        if "g_attention" in claims:
            claims["g_attention"]["photos_iou"] = _mean([r["attention_iou"] for r in p])
    if "g_attention" in claims:
        claims["g_attention"]["passed"] = bool(claims["g_attention"]["iou"] >= THRESHOLDS["attention_iou"])
    return claims


def save_grids(folder: Path, generated: list[dict], reweight: list, photos: list) -> list[str]:
    """Example grids, one PNG per claim, into ``folder``; returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("swap", "refine", "blend", "attention", "inverted"):
        rows = [r[name] for r in generated if name in r]
        if rows:
            grid([t for row in rows for t in row], columns=len(rows[0])).save(folder / f"{name}.png")
            written.append(f"{name}.png")
    for name, rows in (("reweight", reweight), ("photos", photos)):
        if rows:
            grid([t for row in rows for t in row], columns=len(rows[0])).save(folder / f"{name}.png")
            written.append(f"{name}.png")
    return written


def bench_shapes_claims(model: str = "shapes", seeds: int = 12, photos: int = 6, reweight_seeds: int = 6,
                        steps: int = 50, out: str | Path | None = None, blend_side: int | None = None,
                        blend_threshold: float | None = None, parts: str = "bcdefgi") -> dict:
    """Every claim on ``model`` (a name or folder ``load_pipeline`` takes).

    ``blend_side``/``blend_threshold``: the local blend settings (default: the model's own from its
    ``promptedit.json``, else SPEC's). ``parts``: which claims to run ("bcdgi" share the generated
    cases, "e" the reweighting, "f" the photos)."""
    from models.loading import load_pipeline

    pipe = load_pipeline(model, device="cpu", dtype=torch.float32)
    own = blend_defaults(pipe)
    blend = model_blend(pipe, blend_side, blend_threshold)
    started = time.perf_counter()
    pictures: dict[str, list] = {"generated": [], "reweight": [], "photos": []}
    keep = out is not None
    generated = {"records": [], "skipped_seeds": []}
    if set(parts) & set("bcdgi"):
        generated = run_generated(pipe, seeds, blend, steps, pictures["generated"] if keep else None,
                                  parts="".join(sorted(set(parts) & set("bcdgi"))))
    seconds = {"generated": round(time.perf_counter() - started)}
    reweight = run_reweight(pipe, reweight_seeds, steps, pictures["reweight"] if keep else None) if "e" in parts else None
    seconds["reweight"] = round(time.perf_counter() - started) - sum(seconds.values())
    real = run_photos(pipe, photos, blend, steps, pictures=pictures["photos"] if keep else None) if "f" in parts else None
    seconds["photos"] = round(time.perf_counter() - started) - sum(seconds.values())
    claims = summarize(generated, reweight, real, blend)
    if "t" in parts:
        claims["t_guidance"] = {"rows": run_guidance_table(pipe, photos, steps)}
    seconds["guidance_table"] = round(time.perf_counter() - started) - sum(seconds.values())
    report = {"model": model, "blend": {"map_side": blend[0], "threshold": blend[1],
                                        "from_model": own.map_side is not None or own.threshold is not None},
              "skipped_seeds": generated["skipped_seeds"], "claims": claims, "seconds": seconds,
              "passed": all(c.get("passed", True) for c in claims.values()),
              "records": {"generated": generated["records"], "photos": real["records"] if real else []}}
    if keep:
        report["grids"] = save_grids(Path(out), pictures["generated"], pictures["reweight"], pictures["photos"])
        report["out"] = str(out)
    return report


# ---------------------------------------------------------------- (d) choosing the blend defaults
def bench_blend_sweep(model: str = "shapes", seeds: int = 8, steps: int = 50, sides: list[int] | None = None,
                      thresholds=SWEEP_THRESHOLDS) -> dict:
    """Local blend over map sides × thresholds on generated colour and shape swaps: background PSNR
    against the source and the detector's rate; the best setting is the one with the highest
    background PSNR among those whose rate is at least the claim's (else the highest rate)."""
    from models.loading import load_pipeline

    pipe = load_pipeline(model, device="cpu", dtype=torch.float32)
    world = model_world_of(pipe)
    cases = []
    for seed in GENERATED_SEEDS:
        if len(cases) >= seeds:
            break
        case = make_case(seed)
        image = edit(pipe, uncontrolled([case.prompt, case.prompt]), latents=noise(pipe, seed), num_steps=steps).images[0]
        source = Source.from_detection(image, detect(image), world)
        if source is not None and (source.shape, source.colour, source.background) == (case.shape, case.colour, case.background):
            cases.append((case, source))
    if sides is None:
        probe = edit(pipe, EditSpec(["a red circle on a white background"] * 2), num_steps=2, return_attention=True)
        sides = sorted({int(probe.attention.shape[1]), pipe.unet.config.sample_size // 2,
                        pipe.unet.config.sample_size})
    rows = []
    bar = tqdm(total=len(sides) * len(thresholds) * len(cases), desc="blend sweep (edits)", file=sys.stderr)
    for side in sides:
        for threshold in thresholds:
            judged = []
            for case, source in cases:
                result = edit(pipe, EditSpec([case.prompt, swapped(case.prompt, case.colour, case.targets["colour"]),
                                              swapped(case.prompt, case.shape, case.targets["shape"])], mode="replace",
                                             blend_words=[[case.colour, case.shape], [case.targets["colour"], case.shape],
                                                          [case.colour, case.targets["shape"]]],
                                             blend_resolution=side, blend_threshold=threshold),
                              latents=noise(pipe, case.seed), num_steps=steps)
                src = replace(source, image=result.images[0])
                judged += [judge_swap(k, case.targets[k], src, result.images[1 + i]) for i, k in enumerate(("colour", "shape"))]
                bar.update(1)
            rows.append({"map_side": side, "threshold": threshold,
                         "background_db": _mean([j["background_db"] for j in judged]),
                         "changed": _mean([float(j["changed"]) for j in judged]),
                         "shape_iou": _mean([j["iou"] for j in judged[1::2]])})
            log.info("blend sweep %s", rows[-1])
    bar.close()
    good = [r for r in rows if r["changed"] >= THRESHOLDS["detector"]]
    best = (max(good, key=lambda r: r["background_db"]) if good
            else max(rows, key=lambda r: (r["changed"], r["background_db"])))
    return {"model": model, "cases": len(cases), "rows": rows, "best": best,
            "promptedit.json": {"local_blend": {"map_side": best["map_side"], "threshold": best["threshold"]}}}


# ---------------------------------------------------------------- text
def _pf(passed: bool | None) -> str:
    return "pass" if passed else "FAIL"


def print_claims(report: dict) -> str:
    """The claims report as lines of text."""
    c, t = report["claims"], THRESHOLDS
    lines = [f"model {report['model']}; local blend: map side {report['blend']['map_side'] or 'SPEC fallback'}, "
             f"threshold {report['blend']['threshold']} ({'the model' if report['blend']['from_model'] else 'not the model'}'s own)"]

    def swaps(title: str, block: dict) -> None:
        lines.append(title)
        for name in ("p2p", "plain"):
            for kind, s in block[name].items():
                if kind not in SWAPS:
                    continue
                lines.append(f"  {name:5s} {kind:10s} changed {s['changed']:.0%}  IoU {s['iou']:.2f} ± {s['iou_se']:.2f}  "
                             f"centroid median {s['centroid_px_median']} px (≤3 px: {s['centroid_within_3px']:.0%})  "
                             f"background {s['background_db']} dB" + (f"  [{_pf(s['passed'])}]" if name == "p2p" else ""))

    if "b_generated" in c:
        swaps(f"(b) word swaps, generated ({c['b_generated']['p2p']['colour']['cases']} cases; detector ≥ "
              f"{t['detector']:.0%}, IoU ≥ {t['layout_iou']} colour/background, shape IoU ≥ {t['shape_iou']} and "
              f"centroid ≤ {t['centroid_px']} px): {_pf(c['b_generated']['passed'])}", c["b_generated"])
    if "i_generated_inverted" in c:
        i = c["i_generated_inverted"]
        lines.append(f"(i) the same generated sources null-text inverted ({i['reconstruction_db']} dB), swapped from the "
                     "inversion: " + ", ".join(f"{k} {s['changed']:.0%}/IoU {s['iou']:.2f}/{s['centroid_px_median']} px "
                                               f"[{_pf(s['passed'])}]" for k, s in i["p2p"].items()))
    if "b_photos" in c:
        swaps(f"(b) word swaps, rendered photos, null-text: {_pf(c['b_photos']['passed'])}", c["b_photos"])
    if "c_refine" in c:
        r = c["c_refine"]
        lines.append(f"(c) refinement: changed {r['changed']:.0%}, centroid median {r['centroid_px_median']} px, kept "
                     f"inside {r['kept_inside']:.0%} (plain: {r['plain']['changed']:.0%}, {r['plain']['centroid_px_median']}"
                     f" px, {r['plain']['kept_inside']:.0%}): {_pf(r['passed'])}")
        lines.append(f"    size word made {r['size_changed']:.0%}, background word {r['background_changed']:.0%}; "
                     f"a big object fits in place for {r['fits_in_place']:.0%} of the sources")
        if r.get("where_it_fits"):
            f = r["where_it_fits"]
            lines.append(f"    where it fits ({f['cases']} cases): changed {f['changed']:.0%}, centroid median "
                         f"{f['centroid_px_median']} px, kept inside {f['kept_inside']:.0%}")
    if "d_local_blend" in c:
        d = c["d_local_blend"]
        lines.append(f"(d) local blend (side {d['map_side']}, threshold {d['threshold']}): background {d['background_db']} dB"
                     f" (without blend {d['without_blend_db']} dB; ≥ {t['blend_psnr_db']}), changed {d['changed']:.0%}: "
                     f"{_pf(d['passed'])}")
    if "e_reweight" in c:
        e = c["e_reweight"]
        for name, curve in e["mean"].items():
            lines.append(f"(e) reweight {name}: " + ", ".join(f"×{s:g} {v}" for s, v in zip(e["scales"], curve))
                         + f"  monotonic {e['monotonic'][name]} (per case {e['monotonic_cases'][name]:.0%}), "
                         f"moves ≥ {REWEIGHT_MOVES:.0%}: {e['moves'][name]}")
        lines.append(f"(e) reweighting: {_pf(e['passed'])}")
    if "f_real" in c:
        f = c["f_real"]
        for m, s in f["methods"].items():
            lines.append(f"(f) {m:15s} reconstruction {s['reconstruction_db']} dB, background {s['background_db']} dB, "
                         + ", ".join(f"{k} {s[k]['changed']:.0%}/IoU {s[k]['iou']:.2f}" for k in SWAPS))
        lines.append(f"(f) null-text + local blend: background {f['blend']['background_db']} dB, changed "
                     f"{f['blend']['changed']:.0%}; (f) needs (b)'s thresholds on photos and a background ≥ "
                     f"{t['real_background_db']} dB: {_pf(f['passed'])}")
    if "g_attention" in c:
        g = c["g_attention"]
        lines.append(f"(g) attention ({g['map_side']}×{g['map_side']} maps): IoU {g['iou']} generated"
                     + (f", {g['photos_iou']} photos" if "photos_iou" in g else "") + f" (≥ {t['attention_iou']}): "
                     f"{_pf(g['passed'])}")
    if "t_guidance" in c:
        lines += ["(b)/(f) on photos, every inversion × guidance:", *print_guidance_table(c["t_guidance"]["rows"])]
    lines.append(f"seconds: {report['seconds']}" + (f"; grids in {report['out']}" if "out" in report else ""))
    lines.append(f"claims: {'ALL PASSED' if report['passed'] else 'SOME FAILED'}")
    return "\n".join(lines)


def print_sweep(report: dict) -> str:
    """The blend sweep as a table."""
    lines = [f"model {report['model']}, {report['cases']} generated cases (colour and shape swaps)",
             "map side | threshold | background dB | changed | shape IoU"]
    lines += [f"{r['map_side']:8d} | {r['threshold']:9.2f} | {r['background_db']:13} | {r['changed']:7.0%} | {r['shape_iou']}"
              for r in report["rows"]]
    lines.append(f"best: {report['best']}; promptedit.json: {report['promptedit.json']}")
    return "\n".join(lines)
