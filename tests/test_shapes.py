"""The shapes world: the renderer's ground truth (world 1 as it always was, world 2's size bands and
room rule), the detector that judges generations, the training loop (resume gives the same loss
curve as an uninterrupted run, in one process or two) and the command's refusals."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from data.shapes import (
    BACKGROUNDS,
    COLOURS,
    EDGE_MARGIN,
    EDGE_MARGIN_V2,
    GAP_V2,
    GROWN_RADIUS,
    SHAPES,
    SIZE_BANDS,
    SIZES,
    ShapeObject,
    caption_for,
    extent,
    fits,
    fits_grown,
    random_scene,
    render,
    shape_coverage,
    shape_mask,
    single_object_captions,
    square_fraction,
)
from eval.shapes import detect, iou, size_word


def test_captions_read_like_sd_prompts():
    one = [ShapeObject("circle", "red", "big", (0.5, 0.5))]
    assert caption_for(one, "white", with_size=False) == "a red circle on a white background"
    two = [ShapeObject("triangle", "yellow", "small", (0.8, 0.3)), ShapeObject("square", "blue", "big", (0.3, 0.6))]
    assert caption_for(two, "black") == "a big blue square and a small yellow triangle on a black background"
    assert len(single_object_captions()) == 72


def test_same_seed_same_scene_and_seeds_differ():
    a, b = random_scene(7), random_scene(7)
    assert a.caption == b.caption and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert len({random_scene(s).caption for s in range(40)}) > 20


@pytest.mark.parametrize("seed", range(30))
def test_masks_are_the_drawn_pixels(seed):
    scene = random_scene(seed)
    pixels = np.asarray(scene.image).astype(int)
    background = np.asarray(BACKGROUNDS[scene.background])
    covered = np.zeros(pixels.shape[:2], bool)
    for obj, mask in zip(scene.objects, scene.masks):
        assert mask.any()
        colour = np.asarray(COLOURS[obj.colour])
        # every masked pixel is covered at least half: no nearer the background than the object's
        # colour (3 levels of slack for rounding a pixel covered exactly half)
        assert (np.abs(pixels[mask] - colour).sum(1) <= np.abs(pixels[mask] - background).sum(1) + 3).all()
        # the interior is exactly the object's colour
        interior = mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
        assert (pixels[interior] == colour).all()
        covered |= mask
    # away from every object (2 px), the image is the plain background
    grown = covered.copy()
    for _ in range(2):
        grown = grown | np.roll(grown, 1, 0) | np.roll(grown, -1, 0) | np.roll(grown, 1, 1) | np.roll(grown, -1, 1)
    assert (pixels[~grown] == background).all()


def test_every_placed_object_fits_and_fits_knows_the_edges():
    for seed in range(200):
        for obj in random_scene(seed).objects:
            assert fits(obj.size, obj.center)
    assert fits("small", (0.2, 0.8)) and not fits("big", (0.2, 0.5)) and not fits("big", (0.5, 0.75))
    assert fits("big", (SIZES["big"] + EDGE_MARGIN, 1 - SIZES["big"] - EDGE_MARGIN))


def test_mask_areas_follow_the_shapes():
    for shape, fill in (("circle", np.pi / 4), ("square", 1.0), ("triangle", 0.5)):
        scene = render([ShapeObject(shape, "red", "big", (0.5, 0.5))], "white")
        box = (2 * 0.25 * 64) ** 2
        assert scene.masks[0].sum() == pytest.approx(fill * box, rel=0.06)


def test_the_detector_is_right_on_rendered_scenes():
    wrong = []
    for seed in range(300):
        scene = random_scene(seed)
        found = detect(scene.image)
        ok = (found.background == scene.background and len(found.objects) == len(scene.objects)
              and all(found.has(o.shape, o.colour, o.size) for o in scene.objects))
        for obj, mask in zip(scene.objects, scene.masks):
            match = [d for d in found.objects if d.shape == obj.shape and d.colour == obj.colour]
            ok = ok and bool(match) and max(iou(d.mask, mask) for d in match) >= 0.85
        if not ok:
            wrong.append(scene.caption)
    assert wrong == []


def test_the_detector_sees_nothing_in_a_plain_image_and_every_vocabulary_word():
    assert detect(render([], "gray").image).objects == []
    for shape in SHAPES:
        for colour in COLOURS:
            scene = render([ShapeObject(shape, colour, "small", (0.4, 0.6))], "black")
            assert detect(scene.image).has(shape, colour, "small"), (shape, colour)


def test_world_1_is_drawn_as_it_always_was():
    """The shipped model was trained on world 1: its scenes, captions and masks for seeds 0–199
    hash as they did before world 2 existed (digest taken from the renderer at commit 67aa562)."""
    digest = hashlib.sha256()
    for seed in range(200):
        scene = random_scene(seed)
        digest.update(np.asarray(scene.image).tobytes())
        digest.update(scene.caption.encode())
        for mask in scene.masks:
            digest.update(mask.tobytes())
    assert digest.hexdigest()[:16] == "2d5f1351e012267a"
    with pytest.raises(ValueError, match="world"):
        random_scene(0, world=3)


@pytest.fixture(scope="module")
def world2():
    """World 2's scenes for seeds 0–999."""
    return [random_scene(seed, world=2) for seed in range(1000)]


def test_world_2_sizes_come_from_three_bands_and_medium_is_never_named(world2):
    radii = {band: [] for band in SIZE_BANDS}
    named = set()
    for scene in world2:
        for obj in scene.objects:
            low, high = SIZE_BANDS[obj.size]
            assert low <= obj.radius <= high
            radii[obj.size].append(obj.radius)
        named |= set(scene.caption.split()) & set(SIZE_BANDS)
        assert "medium" not in scene.caption.split()
    assert named == {"small", "big"}
    for band, values in radii.items():  # a continuous range, not a few sizes
        assert len(values) > 150 and len({round(v, 4) for v in values}) > 100, band
    assert 0.2 < np.mean([len(s.objects) == 2 for s in world2]) < 0.45


def test_world_2_room_rule_every_object_grown_to_big_fits_in_place(world2):
    """For 1,000 seeds: each object grown to the largest big radius about its own centre stays
    inside the frame (by the margin) and off the other object, in pixels as well as by the rule."""
    edge = int(np.floor(EDGE_MARGIN_V2 * 64))
    for scene in world2:
        assert fits_grown(scene.objects), scene.caption
        for i, obj in enumerate(scene.objects):
            # the grown object's bounding box, from its pixels (a triangle's reaches above its square)
            ys, xs = np.nonzero(shape_mask(obj.shape, obj.center, GROWN_RADIUS, world=2))
            grown = np.zeros((64, 64), bool)
            grown[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
            assert not grown[:edge].any() and not grown[-edge:].any() and not grown[:, :edge].any() \
                and not grown[:, -edge:].any(), scene.caption
            for j, other in enumerate(scene.masks):
                if j != i:
                    assert not (grown & other).any(), scene.caption
    assert fits("big", (0.5, 0.5), world=2) and not fits("big", (0.25, 0.5), world=2)
    close = [ShapeObject("circle", "red", "small", (0.3, 0.3), r=0.1), ShapeObject("square", "blue", "small", (0.5, 0.3), r=0.1)]
    assert not fits_grown(close)
    apart = [close[0], ShapeObject("square", "blue", "small", (0.3 + GROWN_RADIUS + 0.1 + GAP_V2, 0.3), r=0.1)]
    assert fits_grown(apart)
    # a triangle reaches a third of a radius above its square: the rule counts its apex
    assert fits("big", (0.5, 0.3), world=2) and not fits("big", (0.5, 0.3), world=2, shape="triangle")
    assert extent("triangle", 0.24, world=2) == pytest.approx((0.24, 0.32, 0.24, 0.16))
    assert extent("triangle", 0.24, world=1) == extent("square", 0.24, world=2) == (0.24,) * 4
    stacked = [ShapeObject("square", "blue", "small", (0.5, 0.34), r=0.1),
               ShapeObject("circle", "red", "small", (0.5, 0.72), r=0.1)]
    assert fits_grown(stacked) and not fits_grown([stacked[0], replace(stacked[1], shape="triangle")])


def test_every_world_1_caption_is_a_world_2_caption(world2):
    words_2 = {w for scene in world2 for w in scene.caption.split()}
    for seed in range(300):
        assert set(random_scene(seed).caption.split()) <= words_2
    assert single_object_captions() == [(s, c, sh, b) for s in ("small", "big") for c in COLOURS for sh in SHAPES
                                        for b in BACKGROUNDS]


def test_the_detector_is_right_on_world_2_scenes(world2):
    """Background, shape, colour and size band (read from the area) of every object of 1,000 world-2
    scenes, and each object's mask at IoU ≥ 0.85."""
    wrong = []
    for scene in world2:
        found = detect(scene.image, world=2)
        ok = (found.background == scene.background and len(found.objects) == len(scene.objects)
              and all(found.has(o.shape, o.colour, o.size) for o in scene.objects))
        for obj, mask in zip(scene.objects, scene.masks):
            match = [d for d in found.objects if d.shape == obj.shape and d.colour == obj.colour]
            ok = ok and bool(match) and max(iou(d.mask, mask) for d in match) >= 0.85
        if not ok:
            wrong.append(scene.caption)
    assert wrong == []


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("center", [(0.5, 0.5), (0.37, 0.58)])
def test_world_2_draws_every_shape_about_its_centre_of_mass(shape, center):
    """World 2's mask centroid is the object's centre for every shape (its triangle world 1's raised
    a third of a radius, apex to base as tall as it is wide); world 1's triangle keeps its apex and
    base on the bounding square, its centroid a third of a radius low, and its old pixels."""
    radius = 0.2
    ys, xs = np.nonzero(render([ShapeObject(shape, "red", "big", center, r=radius)], "white", world=2).masks[0])
    assert abs((xs.mean() + 0.5) / 64 - center[0]) < 0.5 / 64 and abs((ys.mean() + 0.5) / 64 - center[1]) < 0.5 / 64
    assert (xs.max() + 1 - xs.min()) / 128 == pytest.approx(radius, abs=1 / 64)  # as wide as its square
    assert (ys.max() + 1 - ys.min()) / 128 == pytest.approx(radius, abs=1 / 64)  # and as tall
    assert ys.min() / 64 == pytest.approx(center[1] - extent(shape, radius, world=2)[1], abs=1 / 64)
    old = render([ShapeObject(shape, "red", "big", center, r=radius)], "white").masks[0]
    if shape == "triangle":
        drop = ((np.nonzero(old)[0].mean() + 0.5) / 64 - center[1]) / radius
        assert drop == pytest.approx(1 / 3, abs=0.05)
    else:
        assert np.array_equal(old, shape_mask(shape, center, radius, world=2))
    square = shape_coverage("square", center, radius).sum()
    for world in (1, 2):  # its area: the share of its bounding square the world says
        area = shape_coverage(shape, center, radius, world=world).sum()
        assert area / square == pytest.approx(square_fraction(shape, world), rel=0.02)
    with pytest.raises(ValueError, match="world version"):
        shape_mask(shape, center, radius, world=3)


@pytest.mark.parametrize("shape", SHAPES)
def test_world_2_sizes_are_read_as_areas_at_every_band_edge(shape):
    for band, (low, high) in SIZE_BANDS.items():
        for radius in (low, (low + high) / 2, high):
            for center in ((0.5, 0.5), (0.43, 0.61)):
                mask = render([ShapeObject(shape, "green", band, center, r=radius)], "white", world=2).masks[0]
                assert size_word(mask.sum(), shape, 64, world=2) == band, (band, radius, center)
    # world 1 keeps its two sizes
    assert size_word(render([ShapeObject(shape, "red", "small", (0.5, 0.5))], "black").masks[0].sum(), shape, 64) == "small"


SMALL = dict(vae_steps=3, unet_steps=3, batch_size=2, latent_scenes=8, warmup_steps=2)


def test_training_resumes_with_the_same_loss_curve(tmp_path):
    from models.loading import load_pipeline
    from models.shapes_training import TrainConfig, train

    config = TrainConfig(**SMALL)
    whole = train(tmp_path / "whole", config, checkpoint_dir=tmp_path / "ck1", resume=False)
    assert whole["finished"] and len(whole["losses"]["vae"]) == 3 and len(whole["losses"]["unet"]) == 3
    # stopped once in the VAE phase and once in the UNet phase, resumed each time
    first = train(tmp_path / "split", config, checkpoint_dir=tmp_path / "ck2", resume=False, stop_after=2)
    assert not first["finished"] and not (tmp_path / "split").exists()
    second = train(tmp_path / "split", config, checkpoint_dir=tmp_path / "ck2", resume=True, stop_after=4)
    assert not second["finished"] and second["phase"] == "unet"
    last = train(tmp_path / "split", config, checkpoint_dir=tmp_path / "ck2", resume=True)
    assert last["finished"]
    assert last["losses"] == whole["losses"]
    # the checkpoint gone: --resume starts over, and the same config gives the same run
    again = train(tmp_path / "again", config, checkpoint_dir=tmp_path / "ck3", resume=True)
    assert again["losses"] == whole["losses"]
    pipe = load_pipeline(tmp_path / "split", device="cpu")
    assert pipe.unet.config.sample_size == 16 and pipe.vae_scale_factor == 4
    assert pipe.vae.config.scaling_factor == pytest.approx(last["scaling_factor"])


# the recipe's schedule at a test's size: the grounding terms join at step 2, the locality term
# and the low learning rate at step 3
SCHEDULED = dict(SMALL, unet_steps=4, batch_size=4, world=2, text_layers=0, bf16=True, vae_fp32=True, precompute=True, snr_gamma=5.0,
                 grounding_weight=0.1, pixel_weight=0.03, grounding_from=2, locality_weight=0.3, locality_max_t=500,
                 locality_from=3, lr_low_from=3)


def test_the_recipe_schedule_trains_its_terms_in_one_run_and_resumes_exactly(tmp_path):
    from models.loading import load_pipeline
    from models.shapes_training import TrainConfig, model_world, train

    config = TrainConfig(**SCHEDULED)
    whole = train(tmp_path / "whole", config, checkpoint_dir=tmp_path / "ck1", resume=False)
    assert whole["finished"] and whole["world"] == 2
    losses = whole["losses"]
    assert len(losses["unet"]) == 4 and len(losses["grounding"]) == len(losses["pixel"]) == 2
    assert len(losses["locality"]) == 1
    assert all(0 <= g <= 1 for g in losses["grounding"]) and all(np.isfinite(losses["unet"]))
    # stopped in the VAE phase and in the UNet phase before and after the terms joined
    for stop in (2, 5, 6):
        part = train(tmp_path / "split", config, checkpoint_dir=tmp_path / "ck2", resume=True, stop_after=stop)
        assert not part["finished"]
    last = train(tmp_path / "split", config, checkpoint_dir=tmp_path / "ck2", resume=True)
    assert last["finished"] and last["losses"] == whole["losses"]
    pipe = load_pipeline(tmp_path / "split", device="cpu")
    assert pipe.text_encoder.config.num_hidden_layers == 0
    (tmp_path / "split" / "training.json").write_text(json.dumps({"world": last["world"]}))
    assert model_world(tmp_path / "split") == 2 and model_world(tmp_path / "nowhere") == 1


def test_the_vae_phase_runs_in_float32_when_asked_even_under_bf16(tmp_path):
    """The recipe keeps bf16 for the UNet but trains the VAE in float32 (vae_fp32): its VAE losses
    are the float32 run's exactly and not the bf16 run's, and the setting has its own checkpoint."""
    from models.shapes_training import RECIPE, TrainConfig, train

    def vae_losses(name: str, **fields) -> list[float]:
        config = TrainConfig(**dict(SMALL, batch_size=4, world=2, precompute=True, **fields))
        run = train(tmp_path / name, config, checkpoint_dir=tmp_path / f"ck-{name}", resume=False, stop_after=3)
        return run["losses"]["vae"]

    fp32 = vae_losses("fp32")
    assert vae_losses("kept", bf16=True, vae_fp32=True) == fp32
    assert vae_losses("bf16", bf16=True) != fp32
    assert RECIPE.bf16 and RECIPE.vae_fp32
    assert TrainConfig(vae_fp32=True).key() != TrainConfig().key()


def test_explicit_attention_trains_what_the_fused_kernel_trains(tmp_path, monkeypatch):
    """explicit_attention (a speed lever: diffusers' AttnProcessor on the layers no term reads)
    computes the same attention: in float32 its losses are the fused run's to float rounding,
    through the plain steps and the grounded ones; it has its own checkpoint folder."""
    from diffusers.models.attention_processor import AttnProcessor

    import models.shapes_training as shapes_training
    from models.shapes_training import TrainConfig, train

    calls = []

    class Counted(AttnProcessor):
        def __call__(self, *args, **kwargs):
            calls.append(1)
            return super().__call__(*args, **kwargs)

    monkeypatch.setattr(shapes_training, "AttnProcessor", Counted)

    def losses(name: str, **fields) -> dict:
        config = TrainConfig(**dict(SCHEDULED, bf16=False, **fields))
        return train(tmp_path / name, config, checkpoint_dir=tmp_path / f"ck-{name}", resume=False)["losses"]

    fused = losses("fused")
    assert calls == []
    explicit = losses("explicit", explicit_attention=True)
    assert calls  # the explicit processor ran
    assert explicit["vae"] == fused["vae"]
    for term in ("unet", "grounding", "pixel", "locality"):
        assert explicit[term] == pytest.approx(fused[term], rel=1e-4), term
    assert TrainConfig(explicit_attention=True).key() != TrainConfig().key()


def test_a_world_2_run_begun_before_the_triangle_was_redrawn_keeps_its_own_checkpoint_folder():
    # 91879a9cedb5: the recipe's folder while world 2 drew world 1's triangle; resuming it would
    # mix scenes (and cached latents) of the two geometries
    from models.shapes_training import RECIPE, TrainConfig

    assert RECIPE.key() != "91879a9cedb5"
    assert RECIPE.key() != "86f60e198af1"  # nor one begun before the size bands moved up (#31)
    assert RECIPE.key() != "b174bcd43b5b"  # nor one on the shorter (3/8) triangle (#31)
    assert TrainConfig().key() == "f77f1b4698d4"  # world 1's runs keep theirs (its key before the redraw)


def test_two_processes_train_the_one_process_run(tmp_path):
    """Data-parallel over two processes: the same losses as one process (float rounding apart),
    each masked term (grounding, pixel, locality) the whole batch's mean though the processes'
    halves hold different numbers of grounded tokens; and a two-process run stopped part-way
    resumes to the same end."""
    from models.shapes_training import TrainConfig, train, train_parallel

    config = TrainConfig(**{**SCHEDULED, "bf16": False})
    one = train(tmp_path / "one", config, checkpoint_dir=tmp_path / "ck1", resume=False)
    stopped = train_parallel(tmp_path / "two", config, processes=2, checkpoint_dir=tmp_path / "ck2", resume=False,
                             stop_after=5)
    assert not stopped["finished"]
    two = train_parallel(tmp_path / "two", config, processes=2, checkpoint_dir=tmp_path / "ck2", resume=True)
    assert two["finished"] and two["processes"] == 2
    assert two["losses"]["vae"] == pytest.approx(one["losses"]["vae"], rel=1e-4)
    # Past the step where the pixel and locality terms start, this toy run amplifies rounding: one
    # process on 1 or 2 threads already ends 2 % apart. So each term is compared where it starts.
    assert two["losses"]["unet"][:3] == pytest.approx(one["losses"]["unet"][:3], rel=1e-4)
    for term, rel in (("grounding", 1e-4), ("pixel", 1e-3), ("locality", 2e-3)):
        assert two["losses"][term][0] == pytest.approx(one["losses"][term][0], rel=rel), term
    with pytest.raises(ValueError, match="split"):
        train_parallel(tmp_path / "three", TrainConfig(**{**SCHEDULED, "batch_size": 3}), processes=2,
                       checkpoint_dir=tmp_path / "ck3")


def test_two_processes_keep_the_latents_one_process_encodes(tmp_path):
    """Each of two processes encodes every other chunk of 250 training scenes; the latents the run
    keeps are one process's encoding to the bit and in its memory layout (the UNet's bf16 kernels
    round differently on another), so splitting the work changes nothing the model learns."""
    import torch

    from models.shapes_training import TrainConfig, build_models, build_scene_table, encode_scenes, train_parallel
    from models.tokenizer import build_clip_tokenizer

    config = TrainConfig(**dict(SCHEDULED, latent_scenes=600, unet_steps=1))
    train_parallel(tmp_path / "m", config, processes=2, checkpoint_dir=tmp_path / "ck", resume=False)
    kept = torch.load(tmp_path / "ck" / "latents-600.pt")["latents"]
    vae, _, _ = build_models(config.seed, config.text_layers, config.unet_channels)
    vae.load_state_dict(torch.load(tmp_path / "ck" / "state.pt", weights_only=False)["vae"])
    alone = encode_scenes(vae.eval(), 600, world=2, table=build_scene_table(600, 2, build_clip_tokenizer()))
    assert kept.stride() == alone.stride() and torch.equal(kept, alone)
    assert kept[250:500].abs().sum() > 0  # the second process's chunk arrived


def test_the_optimizer_and_the_ema_step_as_the_per_tensor_loops_do():
    """The foreach AdamW and EMA the loop runs give the per-tensor loops' weights to the bit (the
    shipped model was trained with those loops; the fused AdamW, faster still, would not)."""
    import torch

    from models.shapes_training import _adamw, ema_update, build_models

    def weights():
        _, unet, text = build_models(0, 0, (32, 64))
        return {"unet": unet, "text": text}

    ours, loops = weights(), weights()
    params = [[p for m in models.values() for p in m.parameters()] for models in (ours, loops)]
    optimizers = [_adamw(params[0], lr=5e-4, weight_decay=0.01),
                  torch.optim.AdamW(params[1], lr=5e-4, weight_decay=0.01, foreach=False)]
    ema = [{f"{k}.{n}": p.detach().clone() for k, m in models.items() for n, p in m.named_parameters()}
           for models in (ours, loops)]
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        grads = [torch.randn(p.shape, generator=gen) for p in params[0]]
        for group, optimizer in zip(params, optimizers):
            for p, g in zip(group, grads):
                p.grad = g.clone()
            optimizer.param_groups[0]["lr"] = 5e-4 * (step + 1) / 3
            optimizer.step()
        ema_update(ema[0], ours, 0.9)
        with torch.no_grad():
            for k, m in loops.items():
                for n, p in m.named_parameters():
                    ema[1][f"{k}.{n}"].mul_(0.9).add_(p.detach(), alpha=0.1)
    assert all(torch.equal(a, b) for a, b in zip(*params))
    assert all(torch.equal(ema[0][k], ema[1][k]) for k in ema[0])
    assert not all(torch.equal(a, b.detach()) for a, b in zip(params[0], weights()["unet"].parameters()))


@pytest.mark.parametrize("argv, words", [
    (["--vae-steps", "0"], "--vae-steps"),
    (["--unet-steps", "nan"], "--unet-steps"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--checkpoint-minutes", "inf"], "--checkpoint-minutes"),
    (["--seed", "1.5"], "--seed"),
    (["--text-layers", "-1"], "--text-layers"),
    (["--grounding-weight", "heavy"], "--grounding-weight"),
    (["--pixel-weight", "-0.1"], "--pixel-weight"),
    (["--locality-weight", "much"], "--locality-weight"),
    (["--locality-max-t", "1001"], "--locality-max-t"),
    (["--grounding-from", "-5"], "--grounding-from"),
    (["--unet-lr", "0"], "--unet-lr"),
    (["--unet-lr", "fast"], "--unet-lr"),
    (["--vae-guard", "-1"], "--vae-guard"),
    (["--init-from", "/nonexistent/shapes"], "--init-from"),
    (["--world", "3"], "--world"),
    (["--processes", "0"], "--processes"),
    (["--batch-size", "3"], "--batch-size"),  # does not split over the 2 processes
])
def test_train_shapes_refuses_bad_options(tmp_path, capsys, argv, words):
    from pipelines.train_shapes import main

    assert main(["--out", str(tmp_path / "m"), *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_train_shapes_passes_its_options_to_the_run(tmp_path, monkeypatch, capsys):
    import models.shapes_training as shapes_training
    from pipelines.train_shapes import main

    seen = {}

    def fake_train(out, config, processes=2, threads=1, **kwargs):
        seen.update(config=config, processes=processes, threads=threads)
        out.mkdir(parents=True)
        return {"seconds": 0.0, "config": {"unet_lr": config.unet_lr}}

    monkeypatch.setattr(shapes_training, "train_parallel", fake_train)
    argv = ["--out", str(tmp_path / "m"), "--unet-lr", "1e-4", "--locality-max-t", "400", "--unet-steps", "7", "--quiet"]
    assert main(argv) == 0
    config = seen["config"]
    assert (config.unet_lr, config.locality_max_t, config.unet_steps) == (1e-4, 400, 7)
    assert main(["--out", str(tmp_path / "g"), "--grounding-from", "3000", "--quiet"]) == 0
    assert seen["config"].grounding_from == 3000
    assert seen["config"].key() != shapes_training.RECIPE.key()
    assert seen["config"].vae_guard == 3.0
    assert main(["--out", str(tmp_path / "u"), "--vae-guard", "0", "--quiet"]) == 0
    assert seen["config"].vae_guard == 0.0 and seen["config"].key() != shapes_training.RECIPE.key()
    assert config.key() != shapes_training.TrainConfig(locality_max_t=400).key()  # its own checkpoint folder
    assert json.loads((tmp_path / "m" / "training.json").read_text())["config"]["unet_lr"] == 1e-4
    # everything else is the recipe's, on two processes of one thread each
    recipe = shapes_training.RECIPE
    assert (config.world, config.text_layers, config.grounding_from, config.locality_from, config.vae_steps) == (
        recipe.world, recipe.text_layers, recipe.grounding_from, recipe.locality_from, recipe.vae_steps)
    assert (seen["processes"], seen["threads"]) == (2, 1)
    assert main(["--out", str(tmp_path / "n"), "--processes", "1", "--world", "1", "--threads", "2", "--quiet"]) == 0
    assert (seen["processes"], seen["threads"], seen["config"].world) == (1, 2, 1)


def test_train_shapes_refuses_a_file_as_out(tmp_path, capsys):
    from pipelines.train_shapes import main

    (tmp_path / "f").write_text("x")
    assert main(["--out", str(tmp_path / "f")]) == 2
    assert "--out" in capsys.readouterr().err


def test_the_benchmarks_photos_are_drawn_in_the_models_world(tmp_path):
    from types import SimpleNamespace

    from bench.shapes import PHOTO_SEEDS, photo_scenes

    (tmp_path / "training.json").write_text(json.dumps({"world": 2}))
    for folder, world in ((str(tmp_path), 2), (str(tmp_path / "not-a-folder"), 1)):
        scenes = photo_scenes(SimpleNamespace(name_or_path=folder), 3)
        expected = [random_scene(seed, max_objects=1, world=world) for seed in list(PHOTO_SEEDS)[:3]]
        assert [np.asarray(s.image).tolist() for s in scenes] == [np.asarray(s.image).tolist() for s in expected]
    assert any(s.objects[0].r is not None for s in photo_scenes(SimpleNamespace(name_or_path=str(tmp_path)), 3))


def test_the_gate_reads_size_words_in_the_models_world(tmp_path, monkeypatch):
    """A "small" object drawn at radius 0.17 is small to world 1 (nearer 0.14 than 0.25) but medium
    to world 2: the gate's size count follows the model's own world, its shape count does not."""
    from types import SimpleNamespace

    import bench.shapes as gate

    def fake_generate(pipe, prompts, seeds, steps=50, guidance=7.5):
        drawn = []
        for prompt in prompts:
            words = prompt.split()
            shape = next(w for w in words if w in SHAPES)
            colour = next(w for w in words if w in COLOURS)
            obj = ShapeObject(shape, colour, "small", (0.5, 0.5), r=0.17)
            drawn.append(render([obj], words[-2]).image)
        return drawn

    monkeypatch.setattr(gate, "generate", fake_generate)
    (tmp_path / "training.json").write_text(json.dumps({"world": 2}))
    small = [s for s in range(72) if gate.gate_caption(s)[1] == "small"][:4]
    reports = {world: gate.gate_generation(SimpleNamespace(name_or_path=folder), seeds=small, batch=4)
               for world, folder in ((2, str(tmp_path)), (1, str(tmp_path / "not-a-folder")))}
    assert reports[1]["shape_and_colour"] == reports[2]["shape_and_colour"] == 1.0
    assert reports[1]["size_too"] == 1.0 and reports[2]["size_too"] == 0.0
