"""The shapes world: the renderer's ground truth, the detector that judges generations, the training
loop (resume gives the same loss curve as an uninterrupted run) and the command's refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data.shapes import (
    BACKGROUNDS,
    COLOURS,
    EDGE_MARGIN,
    SHAPES,
    SIZES,
    ShapeObject,
    caption_for,
    fits,
    random_scene,
    render,
    single_object_captions,
)
from eval.shapes import detect, iou


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
    (["--unet-lr", "0"], "--unet-lr"),
    (["--unet-lr", "fast"], "--unet-lr"),
    (["--init-from", "/nonexistent/shapes"], "--init-from"),
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

    def fake_train(out, config, **kwargs):
        seen["config"] = config
        out.mkdir(parents=True)
        return {"seconds": 0.0, "config": {"unet_lr": config.unet_lr}}

    monkeypatch.setattr(shapes_training, "train", fake_train)
    argv = ["--out", str(tmp_path / "m"), "--unet-lr", "1e-4", "--locality-max-t", "500", "--unet-steps", "7", "--quiet"]
    assert main(argv) == 0
    config = seen["config"]
    assert (config.unet_lr, config.locality_max_t, config.unet_steps) == (1e-4, 500, 7)
    assert config.key() != shapes_training.TrainConfig(locality_max_t=500).key()  # its own checkpoint folder
    assert json.loads((tmp_path / "m" / "training.json").read_text())["config"]["unet_lr"] == 1e-4


def test_train_shapes_refuses_a_file_as_out(tmp_path, capsys):
    from pipelines.train_shapes import main

    (tmp_path / "f").write_text("x")
    assert main(["--out", str(tmp_path / "f")]) == 2
    assert "--out" in capsys.readouterr().err
