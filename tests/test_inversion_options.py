"""Every entry point picks the new inversions and guidance options alike: the commands, a
manifest line, the scoring label (the app's API is in test_app.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data.manifest import INVERSION_METHODS, ManifestError, read_jsonl
from pipelines.score import method_of

ROOT = Path(__file__).resolve().parents[1]
PHOTO = str(ROOT / "assets" / "chelsea.png")
FAST = ["--model", "tiny", "--steps", "3", "--inner-steps", "1", "--quiet"]


def _run(module, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_names_users_pick_are_the_methods_invert_knows():
    from inversion import METHODS

    assert tuple(METHODS) == INVERSION_METHODS


def test_edit_real_with_direct_and_with_fixed_point_prox_and_guard(tmp_path):
    out = tmp_path / "direct"
    proc = _run("pipelines.edit_real", PHOTO, "--src", "a cat", "--tgt", "a dog", "--inversion", "direct",
                "--out", str(out), *FAST)
    assert proc.returncode == 0, proc.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["inversion"]["method"] == "direct" and method_of(run) == "direct+p2p"
    assert run["unet_calls"]["inversion_backward"] == 0

    out = tmp_path / "fixed"
    proc = _run("pipelines.edit_real", PHOTO, "--src", "a cat", "--tgt", "a dog", "--inversion", "fixed-point",
                "--fixed-point-steps", "2", "--fixed-point-anchor", "2", "--prox", "l1", "--prox-quantile", "0.7",
                "--latent-guard", "400", "--out", str(out), *FAST)
    assert proc.returncode == 0, proc.stderr
    run = json.loads((out / "run.json").read_text())
    p = run["parameters"]
    assert (p["inversion"], p["fixed_point_steps"], p["fixed_point_anchor"], p["prox"], p["prox_quantile"],
            p["latent_guard"]) == ("fixed-point", 2, 2.0, "l1", 0.7, 400)
    assert method_of(run) == "fixed-point-anchor+p2p+prox+guard"
    assert 0 < run["unet_calls"]["inversion_backward"] <= 3 * 2


@pytest.mark.parametrize("args,message", [
    (["--latent-guard", "-4"], "--latent-guard"),
    (["--prox", "l2"], "invalid choice"),
    (["--prox", "l0", "--prox-quantile", "2"], "--prox-quantile"),
    (["--inversion", "fixed-point", "--fixed-point-steps", "-1"], "--fixed-point-steps"),
    (["--inversion", "fixed-point", "--fixed-point-anchor", "nan"], "--fixed-point-anchor"),
    (["--inversion", "spd"], "invalid choice"),
])
def test_bad_options_are_one_line_before_the_model_loads(tmp_path, args, message):
    proc = _run("pipelines.edit_real", PHOTO, "--src", "a cat", "--tgt", "a dog", "--out", str(tmp_path / "o"),
                "--model", "nobody/none-such", *args)  # a model that cannot load: the refusal comes first
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_a_manifest_line_picks_its_inversion_and_guidance(tmp_path):
    lines = [{"id": "direct", "image": PHOTO, "src": "a cat", "tgt": "a dog", "inversion": "direct"},
             {"id": "fixed", "image": PHOTO, "src": "a cat", "tgt": "a dog", "inversion": "fixed-point",
              "fixed_point_steps": 1, "prox": "l0", "latent_guard": 500}]
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    proc = _run("pipelines.edit_dataset", str(manifest), "--out", str(tmp_path / "out"), *FAST)
    assert proc.returncode == 0, proc.stderr
    runs = {k: json.loads((tmp_path / "out" / "items" / k / "run.json").read_text()) for k in ("direct", "fixed")}
    assert [method_of(runs[k]) for k in ("direct", "fixed")] == ["direct+p2p", "fixed-point+p2p+prox+guard"]
    assert runs["fixed"]["inversion"]["method"] == "fixed-point" and runs["direct"]["inversion"]["method"] == "direct"


def test_the_dataset_command_line_sets_the_options_for_every_job(tmp_path):
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image": PHOTO, "src": "a cat", "tgt": "a dog"}) + "\n")
    proc = _run("pipelines.edit_dataset", str(manifest), "--out", str(tmp_path / "out"), "--inversion", "direct",
                "--prox", "l0", "--prox-quantile", "0.75", *FAST)
    assert proc.returncode == 0, proc.stderr
    run = json.loads((tmp_path / "out" / "items" / "a" / "run.json").read_text())
    assert method_of(run) == "direct+p2p+prox" and run["parameters"]["prox_quantile"] == 0.75


@pytest.mark.parametrize("entry,message", [
    ({"inversion": "spdinv"}, "inversion = \"spdinv\" is unknown"),
    ({"prox": "l2"}, "prox = \"l2\" is unknown"),
    ({"prox_quantile": 3}, "prox_quantile"),
    ({"latent_guard": -5}, "latent_guard"),
    ({"fixed_point_steps": 1.5}, "fixed_point_steps"),
    ({"fixed_point_anchor": "big"}, "fixed_point_anchor"),
])
def test_bad_manifest_options_name_the_line(tmp_path, entry, message):
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image": PHOTO, "src": "a cat", "tgt": "a dog", **entry}) + "\n")
    with pytest.raises(ManifestError, match=f"jobs.jsonl:1: .*{message.split()[0]}") as caught:
        read_jsonl(manifest)
    assert message.replace("\\", "") in str(caught.value)


def test_a_null_prox_in_a_manifest_means_plain_guidance(tmp_path):
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image": PHOTO, "src": "a cat", "tgt": "a dog", "prox": None}) + "\n")
    assert read_jsonl(manifest)[0].options == {"prox": None}


@pytest.mark.parametrize("parameters,label", [
    ({"inversion": "null-text"}, "null-text+p2p"),
    ({"inversion": "direct", "prox": None, "latent_guard": 0}, "direct+p2p"),
    ({"inversion": "fixed-point", "fixed_point_anchor": 0.0, "prox": "l0"}, "fixed-point+p2p+prox"),
    ({"inversion": "fixed-point", "fixed_point_anchor": 2, "prox": "l0", "latent_guard": 400},
     "fixed-point-anchor+p2p+prox+guard"),
    ({}, "generated+p2p"),
])
def test_method_labels(parameters, label):
    assert method_of({"parameters": parameters}) == label
