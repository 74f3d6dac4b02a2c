"""The commands, run as a user runs them: real subprocesses on the tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTO = str(ROOT / "assets" / "chelsea.png")
FAST = ["--model", "tiny", "--steps", "4", "--inner-steps", "2", "--quiet"]


def cli(module, *args, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _valid_png(path, size=None):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        if size:
            assert im.size == size
        return im.size


def test_edit_real_end_to_end_and_cache(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = [PHOTO, "--src", "a cat sitting on a floor", "--tgt", "a dog sitting on a floor", "--tgt",
            "a dog lying on a floor", "--out", str(out), "--cache-dir", str(cache), "--attention",
            "--blend", "cat:dog", "--reweight", "dog=2", "--cross-replace", "0.8", "--cross-replace", "dog=0.4", *FAST]
    proc = cli("pipelines.edit_real", *args)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    expected = {"input.png", "reconstruction.png", "edit_1.png", "edit_2.png", "grid.png", "attention_source.png",
                "attention_edit_1.png", "attention_edit_2.png", "run.json"}
    assert {p.name for p in out.iterdir()} == expected
    for name in ("input.png", "reconstruction.png", "edit_1.png", "edit_2.png"):
        _valid_png(out / name, (192, 128))  # the 451×300 photo keeps its 3:2 ratio
    width, height = _valid_png(out / "grid.png")
    assert width > 4 * 192 and height > 128  # four captioned tiles in a row
    _valid_png(out / "attention_edit_1.png")
    run = json.loads((out / "run.json").read_text())
    assert run["prompts"] == ["a cat sitting on a floor", "a dog sitting on a floor", "a dog lying on a floor"]
    assert run["parameters"]["steps"] == 4 and run["parameters"]["inversion"] == "null-text"
    assert {"torch", "diffusers", "transformers"} <= set(run["versions"])
    assert {"load_model", "inversion", "edit", "write"} <= set(run["seconds"])
    assert run["unet_calls"]["inversion_forward"] > 0 and run["unet_calls"]["edit"] == 4
    assert run["inversion"]["cache_hit"] is False and run["inversion"]["reconstruction_psnr_db"] > 0
    assert sorted(Path(p).name for p in run["outputs"]) == sorted(expected)
    assert not list(tmp_path.glob(".*partial*"))

    again = cli("pipelines.edit_real", *args)
    assert again.returncode == 0, again.stderr
    second = json.loads((out / "run.json").read_text())
    assert second["inversion"]["cache_hit"] is True
    assert second["unet_calls"]["inversion_forward"] == run["unet_calls"]["inversion_forward"]  # recorded, not redone
    assert second["seconds"]["inversion"] < run["seconds"]["inversion"]


def test_edit_generated_end_to_end(tmp_path):
    out = tmp_path / "gen"
    proc = cli("pipelines.edit_generated", "--src", "a cat riding a bicycle", "--tgt", "a cat riding a car",
               "--seed", "3", "--out", str(out), "--model", "tiny", "--steps", "5", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {"source.png", "edit_1.png", "grid.png", "run.json"}
    _valid_png(out / "source.png", (128, 128))
    run = json.loads((out / "run.json").read_text())
    assert run["parameters"]["seed"] == 3 and "inversion" not in run


BAD = [
    ("missing photo", ["nope.jpg", "--src", "a cat", "--tgt", "a dog"], "no such file"),
    ("folder", ["assets", "--src", "a cat", "--tgt", "a dog"], "folder"),
    ("not an image", ["README.md", "--src", "a cat", "--tgt", "a dog"], "not an image"),
    ("empty prompt", [PHOTO, "--src", "", "--tgt", "a dog"], "empty"),
    ("long prompt", [PHOTO, "--src", "a cat", "--tgt", "a dog " + "very " * 80], "over the limit of 77"),
    ("reweight word", [PHOTO, "--src", "a cat", "--tgt", "a dog", "--reweight", "horse=2"], "horse"),
    ("blend word", [PHOTO, "--src", "a cat", "--tgt", "a dog", "--blend", "cow:dog"], "cow"),
    ("replace counts", [PHOTO, "--src", "a cat", "--tgt", "a big dog", "--mode", "replace"], "mode 'refine'"),
    ("cross 1.5", [PHOTO, "--src", "a cat", "--tgt", "a dog", "--cross-replace", "1.5"], "in [0, 1]"),
    ("reweight no scale", [PHOTO, "--src", "a cat", "--tgt", "a dog", "--reweight", "dog"], "WORD=SCALE"),
    ("unknown model", [PHOTO, "--src", "a cat", "--tgt", "a dog", "--model", "nobody/none-such"], "nobody/none-such"),
]


@pytest.mark.parametrize("name,args,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_clear_line(tmp_path, name, args, message):
    out = tmp_path / "out"
    extra = [] if "--model" in args else ["--model", "tiny"]
    proc = cli("pipelines.edit_real", *args, "--out", str(out), "--steps", "2", "--inner-steps", "1", "--quiet", *extra)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists() or not any(out.iterdir())
    assert not list(tmp_path.glob(".*partial*"))


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = cli("pipelines.edit_real", PHOTO, "--src", "a cat", "--tgt", "a dog", "--out", str(blocker / "sub"), *FAST)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "write" in proc.stderr or "file" in proc.stderr


def test_crash_mid_run_keeps_finished_files_and_no_partials(tmp_path):
    from pipelines.outputs import StagedOutput

    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with StagedOutput(out):
            raise RuntimeError("died before any file")
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing made, nothing left
    with pytest.raises(RuntimeError):
        with StagedOutput(out) as staged:
            staged.save_json("edit.json", {"a": 1})
            assert (out / "edit.json").is_file()  # published as soon as it is written
            staged.path("run.json").write_text('{"half": ')  # being written when the run dies
            raise RuntimeError("died")
    assert sorted(p.name for p in out.iterdir()) == ["edit.json"]  # the finished file stays, the half one never shows
    assert json.loads((out / "edit.json").read_text()) == {"a": 1}
    assert not list(tmp_path.glob(".*partial*"))
    (out / "keep.txt").write_text("mine")
    with StagedOutput(out) as staged:
        staged.save_json("run.json", {"a": 1})
    assert sorted(p.name for p in out.iterdir()) == ["edit.json", "keep.txt", "run.json"]
    assert [p.name for p in staged.published] == ["run.json"]


def test_python_api_returns_images(tiny_pipe):
    from pipelines import edit_real_photo

    result = edit_real_photo(PHOTO, "a cat", ["a dog"], pipe=tiny_pipe, steps=3, inner_steps=1, progress=False)
    assert len(result.images) == 2 and result.images[0].size == (192, 128)  # the photo's 3:2
    square = edit_real_photo(PHOTO, "a cat", ["a dog"], pipe=tiny_pipe, steps=3, inner_steps=1, progress=False, size=128)
    assert square.images[1].size == (128, 128)


def _quickstart_command():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- quickstart -->")[1].split("```")[1]
    lines = [l for l in block.splitlines()[1:] if l.strip() and not l.startswith("#")]
    return lines


def test_readme_quickstart_first_command_runs_verbatim():
    setup, tests = _quickstart_command()
    assert tests.startswith(".venv/bin/python -m pytest")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(setup, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = ROOT / "outputs" / "quickstart"
    assert "outputs/quickstart" in proc.stdout
    for name in ("input.png", "reconstruction.png", "edit_1.png", "grid.png", "run.json"):
        assert (out / name).is_file(), name
    # a real edit, not noise: the shapes model reconstructs the photo and makes the circle blue
    from eval.shapes import detect

    run = json.loads((out / "run.json").read_text())
    assert run["inversion"]["reconstruction_psnr_db"] >= 30, run["inversion"]
    with Image.open(out / "edit_1.png") as edited:
        found = detect(edited)
    assert [(o.shape, o.colour) for o in found.objects] == [("circle", "blue")] and found.background == "white"


def test_out_defaults_to_a_fresh_folder_under_outputs(tmp_path):
    photo = tmp_path / "kitty.png"
    photo.write_bytes(Path(PHOTO).read_bytes())
    proc = cli("pipelines.edit_real", str(photo), "--src", "a cat", "--tgt", "a dog", *FAST, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    made = list((tmp_path / "outputs").iterdir())
    assert len(made) == 1 and made[0].name.startswith("kitty-")
    assert (made[0] / "grid.png").is_file() and str(Path("outputs") / made[0].name) in proc.stdout


def test_help_names_every_model_that_loads_offline_and_the_default():
    from models.loading import DEFAULT_MODEL, OFFLINE_MODELS, SHIPPED_MODELS
    from pipelines import edit_real

    text = "".join(edit_real.build_parser().format_help().split())  # argparse may wrap at a hyphen
    for name in [*SHIPPED_MODELS, *OFFLINE_MODELS, "tiny-xl"]:
        assert f"'{name}'" in text, name
    assert f"default{DEFAULT_MODEL}" in text
