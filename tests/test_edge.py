"""The edge: every numeric and path option of every command, given nan, inf, a negative number,
zero, a huge number, an empty string, a file for a folder or a folder for a file, is accepted with
the meaning the README states or refused with one line and exit code 2 — before any model work,
and (checked in subprocesses) before torch, diffusers or transformers are imported.

In-process cases call each command's ``main(argv)``; ``quiet_libraries``, which every command
calls right after its checks and before its first heavy import, is replaced by a sentinel, so an
accepted value stops there and a refused one never reaches it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import edit_dataset, edit_generated, edit_real, score

ROOT = Path(__file__).resolve().parents[1]
PHOTO = str(ROOT / "assets" / "chelsea.png")
A_FILE = str(ROOT / "README.md")
A_FOLDER = str(ROOT / "tests")
VALUES = {"nan": "nan", "inf": "inf", "negative": "-1", "zero": "0", "huge": "1e30", "empty": ""}

# option → how a value is written, and which kinds of VALUES it accepts (the README's ranges)
NUMERIC = {
    "--steps": ("{}", set()),                      # 1…1000
    "--guidance": ("{}", {"zero"}),                # 0…100 (0: unconditional)
    "--inner-steps": ("{}", {"zero"}),             # 0…1000 (0: no optimization)
    "--blend-threshold": ("{}", set()),            # strictly between 0 and 1
    "--seed": ("{}", {"zero"}),                    # 0…2**64-1
    "--cross-replace": ("{}", {"zero"}),           # a fraction or START,END in [0, 1]
    "--self-replace": ("{}", {"zero"}),
    "--reweight": ("dog={}", {"negative", "zero"}),  # -100…100
    "--crop": ("{},0,0,0", {"zero"}),              # whole pixel offsets ≥ 0 that leave some photo
    "--batch-size": ("{}", {"huge"}),              # ≥ 1: at most this many photos per batch
}
OPTIONS = {
    "edit_real": ["--steps", "--guidance", "--inner-steps", "--blend-threshold", "--seed", "--cross-replace",
                  "--self-replace", "--reweight", "--crop"],
    "edit_generated": ["--steps", "--guidance", "--blend-threshold", "--seed", "--cross-replace", "--self-replace",
                       "--reweight"],
    "edit_dataset": ["--steps", "--guidance", "--inner-steps", "--blend-threshold", "--seed", "--cross-replace",
                     "--self-replace", "--reweight", "--crop", "--batch-size"],
}
MODULES = {"edit_real": edit_real, "edit_generated": edit_generated, "edit_dataset": edit_dataset, "score": score}


class Accepted(Exception):
    """Raised where a command, its checks passed, would start loading libraries and models."""


@pytest.fixture
def world(tmp_path):
    """A manifest, a results folder with one edit, and a PIE-Bench mapping file."""
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image": PHOTO, "src": "a cat", "tgt": "a dog"}) + "\n")
    item = tmp_path / "results" / "a"
    item.mkdir(parents=True)
    picture = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(picture).save(item / "input.png")
    Image.fromarray(255 - picture).save(item / "edit_1.png")
    (item / "run.json").write_text(json.dumps({"prompts": ["a cat", "a dog"]}))
    pie = tmp_path / "pie"
    pie.mkdir()
    (pie / "mapping_file.json").write_text(json.dumps({"a": {
        "image_path": "0_random/a.jpg", "original_prompt": "a cat", "editing_prompt": "a dog",
        "editing_type_id": "0", "mask": []}}))
    return {"tmp": tmp_path, "manifest": str(manifest), "results": str(tmp_path / "results"),
            "mapping": str(pie / "mapping_file.json"), "no_mapping": str(tmp_path / "results")}


def base_argv(command: str, w: dict) -> list[str]:
    out = str(w["tmp"] / "out")
    if command == "edit_real":
        return [PHOTO, "--src", "a cat", "--tgt", "a dog", "--model", "tiny", "--out", out]
    if command == "edit_generated":
        return ["--src", "a cat", "--tgt", "a dog", "--model", "tiny", "--out", out]
    if command == "edit_dataset":
        return [w["manifest"], "--model", "tiny", "--out", out]
    return [w["results"], "--out", out]


def run(command: str, argv: list[str], monkeypatch, capsys):
    """("accepted", "") or (exit code, stderr) of ``main(argv)``."""
    module = MODULES[command]

    def sentinel(quiet):
        raise Accepted

    monkeypatch.setattr(module, "quiet_libraries", sentinel)
    capsys.readouterr()
    try:
        code = module.main(argv)
    except SystemExit as exc:
        code = exc.code
    except Accepted:
        return "accepted", ""
    return code, capsys.readouterr().err


def assert_refused(result, expected: str, w: dict):
    code, err = result
    assert code == 2, f"accepted or failed otherwise: {result}"
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert not list(w["tmp"].glob(".*partial*")) and not list(w["tmp"].glob("**/.probe-*"))


NUMBER_CASES = [(command, option, kind) for command, options in OPTIONS.items() for option in options for kind in VALUES]


@pytest.mark.parametrize("command,option,kind", NUMBER_CASES, ids=[f"{c}-{o}-{k}" for c, o, k in NUMBER_CASES])
def test_numbers(command, option, kind, world, monkeypatch, capsys):
    template, accepted = NUMERIC[option]
    result = run(command, [*base_argv(command, world), option, template.format(VALUES[kind])], monkeypatch, capsys)
    if kind in accepted:
        assert result == ("accepted", "")
    else:
        assert_refused(result, option, world)


# (command, argv, None when accepted else a piece of the one-line error); {names} are filled in
# from the ``world`` fixture; BASE is the command's base_argv
BASE = "<base>"
PATH_CASES = [
    *[case for command in ("edit_real", "edit_generated", "edit_dataset", "score") for case in [
        (command, [BASE, "--out", ""], "--out is empty"),
        (command, [BASE, "--out", A_FILE], "is a file"),
        (command, [BASE, "--out", "/proc/x"], "--out /proc/x: cannot create a folder"),
        (command, [BASE, "--out", "{tmp}/fresh/deeper"], None),
    ]],
    *[case for command in ("edit_real", "edit_generated", "edit_dataset") for case in [
        (command, [BASE, "--model", ""], "--model is empty"),
        (command, [BASE, "--model", A_FILE], "is a file"),
        (command, [BASE, "--device", ""], "--device"),
    ]],
    ("edit_real", ["", "--src", "a cat", "--tgt", "a dog"], "photo path is empty"),
    ("edit_real", [A_FOLDER, "--src", "a cat", "--tgt", "a dog"], "is a folder"),
    ("edit_real", [A_FILE, "--src", "a cat", "--tgt", "a dog"], "not an image"),
    ("edit_real", [BASE, "--cache-dir", ""], "--cache-dir is empty"),
    ("edit_real", [BASE, "--cache-dir", A_FILE], "--cache-dir"),
    ("edit_real", [BASE, "--cache-dir", "{tmp}/cache"], None),
    ("edit_dataset", ["", "--out", "{tmp}/out"], "manifest is empty"),
    ("edit_dataset", [A_FOLDER, "--out", "{tmp}/out"], "is a folder"),
    ("edit_dataset", ["--pie-bench", "", "--out", "{tmp}/out"], "--pie-bench is empty"),
    ("edit_dataset", ["--pie-bench", "{mapping}", "--out", "{tmp}/out"], None),  # the mapping file itself
    ("edit_dataset", ["--pie-bench", "{results}", "--out", "{tmp}/out"], "mapping_file.json"),
    ("edit_dataset", [BASE, "--cache-dir", ""], "--cache-dir is empty"),
    ("edit_dataset", [BASE, "--cache-dir", A_FILE], "--cache-dir"),
    ("edit_dataset", [BASE, "--score", "--lpips-backbone", A_FOLDER], "--lpips-backbone"),
    ("edit_dataset", [BASE, "--score", "--clip-model", ""], "--clip-model is empty"),
    ("edit_dataset", [BASE, "--score", "--dino-model", A_FILE], "--dino-model"),
    ("edit_dataset", [BASE, "--score", "--metrics", "psnr"], None),
    ("edit_dataset", [BASE, "--metrics", "psnr"], "add --score"),
    ("score", ["", "--out", "{tmp}/report"], "RESULTS is empty"),
    ("score", [A_FILE, "--out", "{tmp}/report"], "is a file"),
    ("score", ["{tmp}/none", "--out", "{tmp}/report"], "no such folder"),
    ("score", [BASE, "--manifest", ""], "--manifest is empty"),
    ("score", [BASE, "--manifest", A_FOLDER], "--manifest"),
    ("score", [BASE, "--pie-bench", ""], "--pie-bench is empty"),
    ("score", [BASE, "--pie-bench", "{mapping}"], None),
    ("score", [BASE, "--pie-bench", "{results}"], "mapping_file.json"),
    ("score", [BASE, "--clip-model", ""], "--clip-model is empty"),
    ("score", [BASE, "--dino-model", A_FILE], "--dino-model"),
    ("score", [BASE, "--lpips-backbone", ""], "--lpips-backbone is empty"),
    ("score", [BASE, "--lpips-backbone", A_FOLDER], "is a folder"),
    ("score", [BASE, "--lpips-backbone", "{tmp}/none.pth"], "no such weights file"),
    ("score", [BASE, "--metrics", ""], "--metrics is empty"),
    ("score", [BASE, "--metrics", "psnr,nan"], "unknown nan"),
    ("score", [BASE, "--metrics", "psnr, ssim"], None),
]


@pytest.mark.parametrize("command,argv,expected", PATH_CASES,
                         ids=[f"{c}-{' '.join(a[1:]) or 'empty'}-{'ok' if e is None else 'refused'}"
                              for c, a, e in PATH_CASES])
def test_paths(command, argv, expected, world, monkeypatch, capsys):
    if "/proc/x" in argv and not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    filled = []
    for arg in argv:
        filled += base_argv(command, world) if arg == BASE else [arg.format(**world)]
    result = run(command, filled, monkeypatch, capsys)
    if expected is None:
        assert result == ("accepted", ""), f"{command} {filled}: {result}"
    else:
        assert_refused(result, expected, world)


BAD_LINES = [
    ("guidance", {"guidance": math.nan}), ("steps", {"steps": 0}), ("inner_steps", {"inner_steps": 1.5}),
    ("reweight", {"reweight": {"dog": math.inf}}), ("cross_replace", {"cross_replace": {"dog": math.nan}}),
    ("self_replace", {"self_replace": [0, 1e300 * 10]}), ("blend_threshold", {"blend_threshold": 1.5}),
    ("crop", {"crop": [-1, 0, 0, 0]}),
]


@pytest.mark.parametrize("key,override", BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_manifest_overrides_are_refused_at_the_edge(key, override, world, monkeypatch, capsys):
    line = {"id": "a", "image": PHOTO, "src": "a cat", "tgt": "a dog", **override}
    Path(world["manifest"]).write_text(json.dumps(line) + "\n")  # NaN and Infinity: as Python's json writes them
    assert_refused(run("edit_dataset", base_argv("edit_dataset", world), monkeypatch, capsys), f"jobs.jsonl:1: {key}", world)


@pytest.mark.parametrize("keyword,value", [("guidance_scale", math.nan), ("guidance_scale", math.inf),
                                           ("num_steps", 0), ("num_inner_steps", -1), ("early_stop_epsilon", math.nan)])
def test_invert_refuses_before_any_work(tiny_pipe, keyword, value):
    from inversion import invert

    calls = []
    handle = tiny_pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=keyword):
            invert(tiny_pipe, PHOTO, "a cat", **{keyword: value}, progress=False)
    finally:
        handle.remove()
    assert calls == []


def test_edit_refuses_non_finite_guidance(tiny_pipe):
    from editing import EditSpec, EditSpecError, edit

    with pytest.raises(EditSpecError, match="guidance_scale"):
        edit(tiny_pipe, EditSpec(["a cat", "a dog"]), num_steps=2, guidance_scale=math.inf)
    with pytest.raises(EditSpecError, match="num_steps"):
        edit(tiny_pipe, EditSpec(["a cat", "a dog"]), num_steps=0)


# ---------------------------------------------------------------- real processes
def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


REFUSALS = {
    "edit_real": [[PHOTO, "--src", "a cat", "--tgt", "a dog", "--steps", "0"],
                  [PHOTO, "--src", "a cat", "--tgt", "a dog", "--guidance", "nan"],
                  [PHOTO, "--src", "a cat", "--tgt", "a dog", "--reweight", "dog=inf"],
                  [PHOTO, "--src", "a cat", "--tgt", "a dog", "--out", A_FILE],
                  [A_FOLDER, "--src", "a cat", "--tgt", "a dog"]],
    "edit_generated": [["--src", "a cat", "--tgt", "a dog", "--cross-replace", "nan"],
                       ["--src", "a cat", "--tgt", "a dog", "--model", ""]],
    "edit_dataset": [[A_FOLDER, "--out", "x"], [A_FILE, "--out", "x", "--batch-size", "0"], [A_FILE, "--out", ""]],
    "score": [[A_FOLDER, "--out", A_FILE], [A_FOLDER, "--out", "x", "--metrics", "clip"]],
}


def test_refusals_import_neither_torch_nor_diffusers():
    script = (
        "import json, sys\n"
        "from pipelines import edit_dataset, edit_generated, edit_real, score\n"
        "mains = {'edit_real': edit_real.main, 'edit_generated': edit_generated.main,\n"
        "         'edit_dataset': edit_dataset.main, 'score': score.main}\n"
        "codes = []\n"
        "for command, argvs in json.loads(sys.argv[1]).items():\n"
        "    for argv in argvs:\n"
        "        try:\n"
        "            codes.append(mains[command](argv))\n"
        "        except SystemExit as exc:\n"
        "            codes.append(exc.code)\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'accelerate') if m in sys.modules]\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(REFUSALS)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["codes"] == [2] * sum(len(v) for v in REFUSALS.values()), proc.stderr
    assert report["heavy"] == []
    assert len(proc.stderr.strip().splitlines()) == len(report["codes"])  # one line each


@pytest.mark.parametrize("module,args,expected", [
    ("pipelines.edit_real", [PHOTO, "--src", "a cat", "--tgt", "a dog", "--guidance", "nan"], "argument --guidance"),
    ("pipelines.edit_real", [PHOTO, "--src", "a cat", "--tgt", "a dog", "--model", "tiny", "--out", "/proc/x"],
     "--out /proc/x"),
    ("pipelines.score", [A_FOLDER, "--out", "x", "--metrics", "psnr,clip"], "--metrics: unknown clip"),
])
def test_a_refusal_as_a_user_sees_it(module, args, expected):
    if "/proc/x" in args and not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
