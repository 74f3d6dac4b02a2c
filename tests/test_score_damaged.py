"""Issue #33: `python -m pipelines.score` on a results tree with a damaged folder skips that folder
with one line on stderr (the folder, the file, the reason), scores the rest, lists what it skipped
in summary.md, and says so in its exit status: 0 all scored, 1 some skipped, 2 nothing scored."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.score import main as score_main

ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m pipelines.score"
CHEAP = ["--metrics", "psnr,mse", "--quiet"]  # no metric model needed


def _item(results: Path, name: str, size: int = 32, edit_size: int | None = None) -> Path:
    folder = results / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(name))
    source = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(source).save(folder / "input.png")
    edited = rng.integers(0, 255, (edit_size or size, edit_size or size, 3), dtype=np.uint8)
    Image.fromarray(edited).save(folder / "edit_1.png")
    (folder / "run.json").write_text(json.dumps({"prompts": ["a cat", "a dog"], "parameters": {"inversion": "ddim"}}))
    return folder


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# damage kind → (how to damage a good folder, the reason its skip line gives)
DAMAGE = {
    "run-json-list": (lambda f: (f / "run.json").write_text('[{"prompts": ["a cat", "a dog"]}]'),
                      "run.json is a JSON list, not an object"),
    "run-json-invalid": (lambda f: (f / "run.json").write_text('{"prompts": ["a cat", "a dog"'),
                         "run.json is not JSON"),
    "run-json-empty": (lambda f: (f / "run.json").write_text(""), "run.json is empty"),
    "run-json-not-utf8": (lambda f: (f / "run.json").write_bytes(b'{"prompts": ["a caf\xe9", "a dog"]}'),
                          "run.json is not UTF-8"),
    "run-json-no-prompts": (lambda f: (f / "run.json").write_text('{"parameters": {"inversion": "ddim"}}'),
                            'run.json has no "prompts"'),
    "run-json-prompts-text": (lambda f: (f / "run.json").write_text('{"prompts": "a cat"}'),
                              'run.json\'s "prompts" is not a list'),
    "run-json-parameters-list": (lambda f: (f / "run.json").write_text('{"prompts": ["a", "b"], "parameters": [1]}'),
                                 'run.json\'s "parameters" is not an object'),
    "edit-truncated": (lambda f: _truncate(f / "edit_1.png"), "edit_1.png cannot be decoded: image file is truncated"),
    "input-not-an-image": (lambda f: (f / "input.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really"),
                           "input.png cannot be decoded"),
    "edit-missing": (lambda f: (f / "edit_1.png").unlink(), "edit_1.png is missing"),
    "input-missing": (lambda f: (f / "input.png").unlink(), "no input.png"),
    "edit-other-size": (lambda f: Image.new("RGB", (16, 24)).save(f / "edit_1.png"),
                        "edit_1.png is 16×24 pixels but input.png is 32×32"),
}


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = score_main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_folder_is_skipped_and_the_rest_scored(tmp_path, kind, capsys):
    damage, reason = DAMAGE[kind]
    results, out = tmp_path / "results", tmp_path / "report"
    _item(results, "good")
    damage(_item(results, "broken"))
    code, stdout, err = _run([str(results), "--out", str(out), *CHEAP], capsys)
    assert code == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{PROG}: skipped {results / 'broken'}: ") and reason in lines[0], lines[0]
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["good"] and float(rows[0]["psnr"]) > 0  # the good folder is scored
    summary = (out / "summary.md").read_text()
    assert "Skipped: 1 of 2 result folders could not be scored" in summary
    assert f"`{results / 'broken'}`: {reason}" in summary
    assert "skipped 1 result folder (damaged, listed in summary.md)" in stdout


def test_several_damaged_folders_each_get_their_line(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "report"
    _item(results, "good")
    for kind in ("run-json-list", "edit-truncated", "edit-other-size"):
        DAMAGE[kind][0](_item(results, kind))
    code, _, err = _run([str(results), "--out", str(out), *CHEAP], capsys)
    assert code == 1 and "Traceback" not in err
    assert sorted(line.split(": ")[1] for line in err.strip().splitlines()) == [
        f"skipped {results / k}" for k in ("edit-other-size", "edit-truncated", "run-json-list")]
    assert "Skipped: 3 of 4 result folders" in (out / "summary.md").read_text()
    assert [r["id"] for r in csv.DictReader(open(out / "scores.csv", newline=""))] == ["good"]


def test_nothing_scored_is_exit_2(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "report"
    DAMAGE["run-json-list"][0](_item(results, "a"))
    DAMAGE["edit-truncated"][0](_item(results, "b"))
    code, _, err = _run([str(results), "--out", str(out), *CHEAP], capsys)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0] == f"{PROG}: skipped {results / 'a'}: run.json is a JSON list, not an object"
    assert lines[1].startswith(f"{PROG}: skipped {results / 'b'}: edit_1.png cannot be decoded")
    assert lines[2] == f"{PROG}: error: {results}: nothing could be scored: skipped 2 result folders (above)"
    assert len(lines) == 3 and not (out / "scores.csv").exists()


def test_all_scored_is_exit_0_and_no_skipped_section(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "report"
    _item(results, "a")
    _item(results, "b")
    code, stdout, err = _run([str(results), "--out", str(out), *CHEAP], capsys)
    assert code == 0 and err == "" and "skipped" not in stdout
    assert "Skipped" not in (out / "summary.md").read_text()


def test_as_a_user_runs_it(tmp_path):
    """The three reported tracebacks (list run.json, truncated edit, edit of another size), in one
    results tree, through `python -m pipelines.score`."""
    results, out = tmp_path / "results", tmp_path / "report"
    _item(results, "good")
    for kind in ("run-json-list", "edit-truncated", "edit-other-size"):
        DAMAGE[kind][0](_item(results, kind))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pipelines.score", str(results), "--out", str(out), *CHEAP],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 3
    assert "skipped 3 result folders" in proc.stdout
