"""Photos at their own aspect ratio: the working size, non-square latents through every stage."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.images import SizeError, fit_size, load_image, parse_size, resolve_size
from editing import EditSpec, build_controller, edit
from editing.visualize import attention_maps
from editing.sampler import denoise
from inversion import invert
from models.codec import encode_text
from models.loading import size_step, working_size

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "assets" / "chelsea.png"  # 451×300, about 3:2
FAST = ["--model", "tiny", "--steps", "3", "--inner-steps", "1", "--quiet"]


def _env():
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def cli(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)


# ---------------------------------------------------------------- choosing the working size
@pytest.mark.parametrize("photo, area, step, expected", [
    ((3000, 2000), 512 * 512, 64, (576, 384)),   # the example: 3:2 at SD's area
    ((2000, 3000), 512 * 512, 64, (384, 576)),   # portrait
    ((1000, 1000), 512 * 512, 64, (512, 512)),
    ((4000, 3000), 512 * 512, 64, (512, 384)),   # 4:3 exactly, at 0.75 of the area
    ((451, 300), 128 * 128, 32, (192, 128)),     # the sample photo on the tiny model
    ((3000, 2000), 64 * 64, 8, (72, 48)),        # the shapes model
])
def test_fit_size_examples(photo, area, step, expected):
    assert fit_size(*photo, area, step) == expected


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.75, 1.0, 1.25, 16 / 9, 2.0, 3.0])
def test_fit_size_properties(ratio):
    area, step = 512 * 512, 64
    w, h = fit_size(round(1000 * ratio), 1000, area, step)
    assert w % step == 0 and h % step == 0
    assert 1 / 1.5 <= w * h / area <= 1.5
    # no other size of steps within the area tolerance has a closer ratio
    best = min(abs(math.log(a * step / (b * step)) - math.log(ratio))
               for a in range(1, 40) for b in range(1, 40) if 1 / 1.5 <= a * b * step * step / area <= 1.5)
    assert abs(math.log(w / h) - math.log(ratio)) <= best + 1e-9


def test_parse_and_resolve_size():
    assert parse_size("auto") == "auto" and parse_size("512") == 512 and parse_size("576,384") == (576, 384)
    assert parse_size([576, 384]) == (576, 384) and parse_size("576x384") == (576, 384)
    for bad in ("big", "0", "-64", "64,", "1,2,3", "99999", True, 3.5):
        with pytest.raises(SizeError):
            parse_size(bad)
    assert resolve_size(512, 300, 200, 512, 64) == (512, 512)
    with pytest.raises(SizeError, match="not a multiple of 64.*use 512"):
        resolve_size((500, 512), 300, 200, 512, 64)


def test_auto_resizes_the_whole_photo_without_cropping():
    photo = Image.new("RGB", (300, 200), "white")
    photo.paste((255, 0, 0), (0, 0, 10, 200))     # a red stripe on the left edge
    photo.paste((0, 0, 255), (290, 0, 300, 200))  # a blue one on the right edge
    whole = np.asarray(load_image(photo, size=(192, 128), keep_ratio=True)).astype(int)
    assert whole[64, 1, 0] > 200 and whole[64, -2, 2] > 200  # both edges are still there
    square = np.asarray(load_image(photo, size=128)).astype(int)  # the reference's centre crop
    assert square[64, 1].tolist() == [255, 255, 255] and square[64, -2].tolist() == [255, 255, 255]


def test_model_step_and_working_size(tiny_pipe):
    assert size_step(tiny_pipe) == 32  # VAE ×8, then two UNet downsamplings
    assert working_size(tiny_pipe, (451, 300)) == (192, 128)
    assert working_size(tiny_pipe, (451, 300), 128) == (128, 128)
    with pytest.raises(SizeError, match="multiple of 32"):
        working_size(tiny_pipe, (451, 300), (100, 64))


# ---------------------------------------------------------------- non-square latents through the stages
@pytest.fixture(scope="module")
def wide_start():
    return torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(1))  # 192×128 px


def test_no_control_matches_diffusers_at_a_non_square_size(tiny_pipe, wide_start):
    spec = EditSpec(["a cat sitting on a bench", "a dog sitting on a bench"], cross_replace_steps=0, self_replace_steps=0)
    result = edit(tiny_pipe, spec, latents=wide_start, num_steps=20)
    assert result.images[0].size == (192, 128)
    for k, prompt in enumerate(spec.prompts):
        plain = tiny_pipe(prompt, latents=wide_start.clone(), height=128, width=192, num_inference_steps=20,
                          guidance_scale=7.5, output_type="latent").images
        assert (result.latents[k] - plain[0]).abs().max() <= 1e-4


def test_identical_prompts_reproduce_the_source_on_a_non_square_latent(tiny_pipe, wide_start):
    spec = EditSpec(["a cat sitting on a bench"] * 2, cross_replace_steps=1.0, self_replace_steps=1.0)
    result = edit(tiny_pipe, spec, latents=wide_start, num_steps=10, return_attention=True)
    assert (result.latents[1] - result.latents[0]).abs().max() <= 1e-5
    assert result.stats["explicit_attention_calls"] > 0
    rows, cols = result.attention_shape
    assert result.attention.shape == (2, rows, cols, 77) and cols * 2 == rows * 3  # the maps keep 3:2
    token, picture = attention_maps(result, 0, size=120)[1]
    assert picture.size == (120, 80)


def test_local_blend_keeps_the_source_outside_its_mask_on_a_non_square_latent(tiny_pipe, wide_start):
    spec = EditSpec(["a cat sitting on a bench", "a dog sitting on a bench"], blend_words=(["cat"], ["dog"]),
                    blend_threshold=0.95)
    controller = build_controller(spec, tiny_pipe.tokenizer, 10, latent_hw=(16, 24), native_side=16)
    seen = []
    blend_step = controller.on_step_end

    def record(latents, step):
        before = latents.clone()
        after = blend_step(latents, step)
        if step >= controller.blend.start_step:
            seen.append((controller.blend.mask(controller.store, (16, 24))[1, 0], before, after.clone()))
        return after

    controller.on_step_end = record
    denoise(tiny_pipe, encode_text(tiny_pipe, spec.prompts), encode_text(tiny_pipe, [""]), wide_start, controller, 10, 7.5)
    assert len(seen) == 8
    for mask, before, after in seen:
        assert mask.shape == (16, 24) and 0 < int(mask.sum()) < mask.numel()
        torch.testing.assert_close(after[1][:, ~mask], after[0][:, ~mask], rtol=0, atol=0)
        torch.testing.assert_close(after[1][:, mask], before[1][:, mask], rtol=0, atol=1e-6)


def test_blend_resolution_names_the_same_layers_at_any_size(tiny_pipe):
    spec = EditSpec(["a cat", "a dog"], blend_words=(["cat"], ["dog"]), blend_resolution=8)
    assert build_controller(spec, tiny_pipe.tokenizer, 5, latent_hw=(16, 24), native_side=16).blend.factor == 2
    from editing import EditSpecError

    with pytest.raises(EditSpecError, match="not a map side"):
        build_controller(EditSpec(["a cat", "a dog"], blend_words=(["cat"], ["dog"]), blend_resolution=5),
                         tiny_pipe.tokenizer, 5, native_side=16)


def test_inversion_batches_photos_of_different_ratios(tiny_pipe, tmp_path):
    tall = Image.open(PHOTO).convert("RGB").transpose(Image.Transpose.ROTATE_90)  # 300×451
    invs = invert(tiny_pipe, [PHOTO, tall, PHOTO], "a cat", method="ddim", num_steps=3, progress=False,
                  cache_dir=tmp_path)
    assert [tuple(i.x_T.shape[-2:]) for i in invs] == [(16, 24), (24, 16), (16, 24)]
    assert [i.stats["size"] for i in invs] == [[192, 128], [128, 192], [192, 128]]
    assert invs[0].stats["batch_size"] == 2 and invs[1].stats["batch_size"] == 1
    # the size is part of the cache key: the square crop of the same photo is another inversion
    square = invert(tiny_pipe, PHOTO, "a cat", method="ddim", num_steps=3, progress=False, cache_dir=tmp_path, size=128)
    assert not square.stats["cache_hit"] and square.x_T.shape[-2:] == (16, 16)
    again = invert(tiny_pipe, PHOTO, "a cat", method="ddim", num_steps=3, progress=False, cache_dir=tmp_path)
    assert again.stats["cache_hit"] and again.x_T.shape[-2:] == (16, 24)
    assert len(list(tmp_path.glob("inversion-*.safetensors"))) == 3


# ---------------------------------------------------------------- the commands
def test_edit_real_keeps_the_ratio_and_writes_the_original_size(tmp_path):
    out = tmp_path / "out"
    proc = cli("pipelines.edit_real", PHOTO, "--src", "a cat", "--tgt", "a dog", "--out", out, "--original-size",
               "--attention", "--blend", "cat:dog", *FAST)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out / "edit_1.png") as im:
        assert im.size == (192, 128)
    with Image.open(out / "edit_1_original.png") as im:
        assert im.size == (451, 300)  # the photo's own pixel size
    with Image.open(out / "attention_edit_1.png") as im:
        assert im.size[0] > im.size[1]
    run = json.loads((out / "run.json").read_text())
    assert run["size"] == {"working": [192, 128], "photo": [451, 300]} and run["parameters"]["size"] == "auto"

    square = tmp_path / "square"
    proc = cli("pipelines.edit_real", PHOTO, "--src", "a cat", "--tgt", "a dog", "--out", square, "--size", "128",
               "--original-size", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((square / "run.json").read_text())["size"] == {"working": [128, 128], "photo": [300, 300]}


def test_a_size_the_model_cannot_use_is_one_line(tmp_path):
    proc = cli("pipelines.edit_real", PHOTO, "--src", "a cat", "--tgt", "a dog", "--out", tmp_path / "o",
               "--size", "100,64", *FAST)
    assert proc.returncode == 2 and "not a multiple of 32" in proc.stderr and "use 96" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()
    proc = cli("pipelines.edit_real", PHOTO, "--src", "a cat", "--tgt", "a dog", "--size", "wide", *FAST)
    assert proc.returncode == 2 and "--size 'wide'" in proc.stderr


def test_edit_generated_at_a_non_square_size(tmp_path):
    proc = cli("pipelines.edit_generated", "--src", "a cat", "--tgt", "a dog", "--out", tmp_path, "--size", "192,128",
               "--model", "tiny", "--steps", "3", "--quiet")
    assert proc.returncode == 0, proc.stderr
    with Image.open(tmp_path / "edit_1.png") as im:
        assert im.size == (192, 128)


def test_dataset_keeps_each_photo_ratio_and_takes_a_size_per_line(tmp_path):
    photo = Image.open(PHOTO).convert("RGB")
    photo.save(tmp_path / "wide.png")
    photo.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "tall.png")
    lines = [{"id": "wide", "image": "wide.png", "src": "a cat", "tgt": "a dog"},
             {"id": "tall", "image": "tall.png", "src": "a cat", "tgt": "a dog"},
             {"id": "square", "image": "wide.png", "src": "a cat", "tgt": "a dog", "size": 128}]
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pipelines.edit_dataset", str(tmp_path / "jobs.jsonl"), "--out", str(out),
                           "--original-size", *FAST], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    sizes = {job: json.loads((out / "items" / job / "run.json").read_text())["size"]["working"] for job in ("wide", "tall", "square")}
    assert sizes == {"wide": [192, 128], "tall": [128, 192], "square": [128, 128]}
    with Image.open(out / "items" / "tall" / "edit_1_original.png") as im:
        assert im.size == (300, 451)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**lines[0], "size": "huge"}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "pipelines.edit_dataset", str(bad), "--out", str(tmp_path / "o2"), *FAST],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "bad.jsonl:1: size 'huge'" in proc.stderr


def test_score_fits_a_photo_size_mask_to_a_non_square_edit(tmp_path, metric_models):
    from pipelines.score import main as score_main

    rng = np.random.default_rng(0)
    item = tmp_path / "results" / "wide"
    item.mkdir(parents=True)
    src = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    edited = src.copy()
    edited[:, :48] = 255 - edited[:, :48]  # the left half changed
    Image.fromarray(src).save(item / "input.png")
    Image.fromarray(edited).save(item / "edit_1.png")
    (item / "run.json").write_text(json.dumps({"prompts": ["a cat", "a dog"], "parameters": {"inversion": "ddim"}}))
    mask = np.zeros((200, 300), dtype=np.uint8)
    mask[:, :150] = 255  # the photo's own size, the edit region on the left
    Image.fromarray(mask).save(tmp_path / "mask.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "wide", "edit_type": "0", "mask": "mask.png"}) + "\n")
    out = tmp_path / "report"
    assert score_main([str(tmp_path / "results"), "--manifest", str(tmp_path / "m.jsonl"), "--out", str(out),
                       "--metrics", "psnr,mse", "--quiet"]) == 0
    with open(out / "scores.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["psnr"]) == float("inf") or float(row["psnr"]) > 90  # the unedited right half is identical
