"""Issue #33: prompts of any whitespace, finished work that a failed picture must not cost, and
devices this torch cannot use — through the CLI, the dataset command, the Python API and the
benchmarks, each answered with one line and no traceback."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from pipelines import edit_dataset, edit_real

ROOT = Path(__file__).resolve().parents[1]
PHOTO = str(ROOT / "assets" / "red_circle.png")
FAST = ["--model", "tiny", "--steps", "2", "--inner-steps", "1", "--quiet"]
ODD_SPACES = "a red\ncircle\ton a\r\nwhite\u00a0background  "


def _code(main, argv):
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# 1. prompts of any whitespace ------------------------------------------------------------------

def test_normalize_prompt_collapses_every_whitespace():
    from data.prompts import normalize_prompt

    assert normalize_prompt(ODD_SPACES) == "a red circle on a white background"
    assert normalize_prompt("a\u2003cat\u2028sitting\x0bhere") == "a cat sitting here"
    assert normalize_prompt(" a cat ") == "a cat"
    assert normalize_prompt(5) == 5  # not text: left for the caller's type check


def test_edit_spec_normalises_and_says_so_once(caplog):
    from editing import EditSpec

    with caplog.at_level(logging.WARNING):
        spec = EditSpec(prompts=[ODD_SPACES, "a blue circle on a white background"])
    assert spec.prompts == ["a red circle on a white background", "a blue circle on a white background"]
    assert spec.resolved_mode() == "replace"  # the words count as typed on one line
    warnings = [r.getMessage() for r in caplog.records if "line breaks" in r.getMessage()]
    assert len(warnings) == 1 and "source prompt" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        EditSpec(prompts=[" a cat ", "a dog"])  # spaces only at the ends: quietly trimmed
    assert not caplog.records


def test_cli_multiline_prompt_writes_every_file(tmp_path, capsys):
    out = tmp_path / "out"
    code = _code(edit_real.main, [PHOTO, "--src", "a red\ncircle", "--tgt", "a blue\tcircle", "--out", str(out), *FAST])
    assert code == 0, capsys.readouterr().err
    assert {"input.png", "reconstruction.png", "edit_1.png", "grid.png", "run.json"} <= {p.name for p in out.iterdir()}
    run = json.loads((out / "run.json").read_text())
    assert run["prompts"] == ["a red circle", "a blue circle"]


def test_api_and_invert_normalise_prompts_the_same_way(tiny_pipe, tmp_path):
    from inversion import invert
    from pipelines import edit_real_photo

    result = edit_real_photo(PHOTO, "a red\ncircle", ["a blue\u00a0circle"], pipe=tiny_pipe, steps=2, inner_steps=1,
                             progress=False, cache_dir=tmp_path)
    assert len(result.images) == 2 and result.spec.prompts == ["a red circle", "a blue circle"]
    again = invert(tiny_pipe, PHOTO, "a  red \n circle", num_steps=2, num_inner_steps=1, cache_dir=tmp_path,
                   progress=False)
    assert again.prompt == "a red circle" and again.stats.get("cache_hit")  # the same cache entry


def test_dataset_line_with_a_multiline_prompt(tmp_path, capsys):
    manifest = tmp_path / "jobs.jsonl"
    photo = PHOTO
    manifest.write_text(json.dumps({"id": "a", "image": photo, "src": "a red\ncircle", "tgt": ["a blue\tcircle"]}) + "\n")
    code = _code(edit_dataset.main, [str(manifest), "--out", str(tmp_path / "out"), *FAST])
    assert code == 0, capsys.readouterr().err
    run = json.loads((tmp_path / "out" / "items" / "a" / "run.json").read_text())
    assert run["prompts"] == ["a red circle", "a blue circle"]


TEXTS = ["a red\ncircle", "tab\there", "\r\n\r\n", "", " ", "x\x00y\x07z", "猫が座っている" * 8, "💥" * 50,
         "e\u0301" * 30, "\u202eright to left", "a" * 500, "\ud800 lone surrogate"]


@pytest.mark.parametrize("bitmap", [False, True], ids=["freetype", "bitmap-font"])
def test_a_label_draws_any_text(monkeypatch, bitmap):
    from editing import visualize

    if bitmap:  # Pillow without FreeType falls back to a Latin-1 bitmap font
        monkeypatch.setattr(visualize.ImageFont, "load_default", lambda *a, **k: ImageFont.load_default_imagefont())
    image = Image.new("RGB", (64, 64), "red")
    for text in TEXTS:
        tile = visualize.captioned(image, text)
        assert tile.size == (64, 82)
        assert np.asarray(tile)[:64].tolist() == np.asarray(image).tolist()  # the picture itself untouched
    band = np.asarray(visualize.captioned(image, "a red circle"))[64:]
    assert (band < 128).any()  # the label was written


# 2. finished work is never lost ----------------------------------------------------------------

def test_a_failed_picture_keeps_the_edit_and_names_the_file(tmp_path, monkeypatch, capsys):
    from editing import visualize

    def broken(*args, **kwargs):
        raise ValueError("cannot draw this")

    monkeypatch.setattr(visualize, "enlarged", broken)  # used by the grid alone
    out = tmp_path / "out"
    code = _code(edit_real.main, [PHOTO, "--src", "a red circle", "--tgt", "a blue circle", "--out", str(out),
                                  "--attention", *FAST])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "grid.png" in line and "cannot draw this" in line and "edit_1.png" in line
    names = {p.name for p in out.iterdir()}
    assert {"input.png", "reconstruction.png", "edit_1.png", "attention_source.png", "attention_edit_1.png"} <= names
    assert "grid.png" not in names and "run.json" not in names  # incomplete: no run.json
    with Image.open(out / "edit_1.png") as im:
        im.verify()
    assert not list(tmp_path.glob(".*partial*"))


def test_edits_are_on_disk_before_the_grid_is_drawn(tmp_path, monkeypatch, capsys):
    from editing import visualize

    seen = {}
    real_grid = visualize.grid

    def watching(tiles, *args, **kwargs):
        seen.setdefault("files", sorted(p.name for p in (tmp_path / "out").iterdir()))
        return real_grid(tiles, *args, **kwargs)

    monkeypatch.setattr(visualize, "grid", watching)
    code = _code(edit_real.main, [PHOTO, "--src", "a red circle", "--tgt", "a blue circle", "--out",
                                  str(tmp_path / "out"), *FAST])
    assert code == 0, capsys.readouterr().err
    assert seen["files"] == ["edit_1.png", "input.png", "reconstruction.png"]


# 3. devices ------------------------------------------------------------------------------------

@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model starts to load."""
    import models.loading as loading

    def loaded(*args, **kwargs):
        raise AssertionError("the model started to load")

    monkeypatch.setattr(loading, "tiny_model_dir", loaded)
    monkeypatch.setattr(loading, "_from_pretrained", loaded)


UNUSABLE = ["cuda", "cuda:1", "mps"]


@pytest.mark.parametrize("device", UNUSABLE)
def test_check_device_refuses_what_this_torch_cannot_use(device):
    import torch

    from models.loading import DeviceError, check_device

    if device.startswith("cuda") and torch.cuda.is_available() and device == "cuda":
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError) as info:
        check_device(device)
    message = str(info.value)
    assert device in message and "available here: cpu" in message and "\n" not in message
    assert check_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("device", UNUSABLE)
def test_edit_real_refuses_the_device_before_loading(tmp_path, device, no_model, capsys):
    code = _code(edit_real.main, [PHOTO, "--src", "a red circle", "--tgt", "a blue circle", "--out",
                                  str(tmp_path / "out"), "--device", device, *FAST])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and device in line and "available here" in line
    assert not (tmp_path / "out").exists()


def test_edit_dataset_refuses_the_device_before_loading(tmp_path, no_model, capsys):
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image": PHOTO, "src": "a cat",
                                    "tgt": "a dog"}) + "\n")
    code = _code(edit_dataset.main, [str(manifest), "--out", str(tmp_path / "out"), "--device", "cuda", *FAST])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "CUDA" in line and not (tmp_path / "out" / "items").exists()


def test_bench_refuses_the_device(capsys, no_model):
    from bench.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["inversion", "--models", "tiny", "--device", "mps"])
    assert info.value.code == 2
    assert "mps" in _one_line(capsys.readouterr().err)


def test_the_api_refuses_the_device(no_model):
    from models.loading import DeviceError
    from pipelines import edit_real_photo

    with pytest.raises(DeviceError, match="available here"):
        edit_real_photo(PHOTO, "a red circle", "a blue circle", model="tiny", device="cuda:3", steps=2, progress=False)
