"""Issue #33: a JSONL manifest line with a value of the wrong JSON type, or a file that is not
UTF-8, is one ``file:line:`` line naming the key and what to write instead, exit code 2, before
any model loads; a UTF-8 byte-order mark is accepted. (The app takes no manifest.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data.manifest import ManifestError, read_jsonl
from pipelines import edit_dataset, score

ROOT = Path(__file__).resolve().parents[1]
PHOTO = str(ROOT / "assets" / "chelsea.png")
GOOD = {"id": "good", "image": PHOTO, "src": "a cat", "tgt": "a dog"}

# (test id, what the second line changes, the key its message names)
BAD = [
    ("image-number", {"image": 5}, "image"),
    ("image-null", {"image": None}, "image"),
    ("image-list", {"image": ["cat.png"]}, "image"),
    ("image-object", {"image": {"path": "cat.png"}}, "image"),
    ("image-bool", {"image": True}, "image"),
    ("image-empty", {"image": ""}, "image"),
    ("src-number", {"src": 5}, "src"),
    ("src-null", {"src": None}, "src"),
    ("tgt-number", {"tgt": 7}, "tgt"),
    ("tgt-list-with-number", {"tgt": ["a dog", 5]}, "tgt[1]"),
    ("tgt-dict", {"tgt": {"text": "a dog"}}, "tgt"),
    ("tgt-empty-list", {"tgt": []}, "tgt"),
    ("id-number", {"id": 5}, "id"),
    ("id-list", {"id": ["b"]}, "id"),
    ("mode-number", {"mode": 5}, "mode"),
    ("mode-null", {"mode": None}, "mode"),
    ("inversion-list", {"inversion": ["ddim"]}, "inversion"),
    ("prox-number", {"prox": 1}, "prox"),
    ("blend-number", {"blend": 5}, "blend"),
    ("blend-no-colon", {"blend": "catdog"}, "blend"),
    ("blend-word-number", {"blend": [["cat"], [5]]}, "blend"),
    ("reweight-list", {"reweight": ["dog", 2]}, "reweight"),
    ("reweight-text-scale", {"reweight": {"dog": "2"}}, "reweight['dog']"),
    ("cross-replace-null", {"cross_replace": None}, "cross_replace"),
    ("cross-replace-triple", {"cross_replace": [0.1, 0.2, 0.3]}, "cross_replace"),
    ("cross-replace-word-list", {"cross_replace": {"dog": [0.5]}}, "cross_replace['dog']"),
    ("self-replace-object", {"self_replace": {"a": 1}}, "self_replace"),
    ("crop-null", {"crop": None}, "crop"),
    ("crop-text-offset", {"crop": [0, 0, 0, "4"]}, "crop"),
    ("size-object", {"size": {"w": 512}}, "size"),
    ("size-null", {"size": None}, "size"),
    ("steps-text", {"steps": "50"}, "steps"),
    ("edit-type-list", {"edit_type": ["swap"]}, "edit_type"),
    ("mask-number", {"mask": 5}, "mask"),
]


def _write(path: Path, second: dict) -> Path:
    line = {**GOOD, "id": "second", **second}
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(line) + "\n", encoding="utf-8")
    return path


class Loaded(Exception):
    """Raised where the command would start loading libraries or the model."""


def _edit_dataset(argv: list[str], monkeypatch, capsys):
    """(exit code, stderr) of ``edit_dataset.main``, with the model load replaced by an alarm."""

    def too_far(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(edit_dataset, "quiet_libraries", too_far)  # the first step after the checks
    monkeypatch.setattr("models.loading.load_pipeline", too_far)
    capsys.readouterr()
    try:
        code = edit_dataset.main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _assert_one_line(code, err: str, *expected: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err


@pytest.mark.parametrize("second,key", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_read_jsonl_names_the_line_and_the_key(tmp_path, second, key):
    manifest = _write(tmp_path / "manifest.jsonl", second)
    with pytest.raises(ManifestError) as caught:
        read_jsonl(manifest)
    message = str(caught.value)
    assert f"manifest.jsonl:2: {key}" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("second,key", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_edit_dataset_refuses_before_the_model_loads(tmp_path, second, key, monkeypatch, capsys):
    manifest = _write(tmp_path / "manifest.jsonl", second)
    code, err = _edit_dataset([str(manifest), "--model", "tiny", "--steps", "2", "--out", str(tmp_path / "out")],
                              monkeypatch, capsys)
    _assert_one_line(code, err, f"manifest.jsonl:2: {key}")
    assert not (tmp_path / "out" / "items").exists()


def test_messages_say_what_to_write(tmp_path):
    cases = {"image": (5, 'write the photo\'s path as a string, e.g. "photos/cat.jpg"'),
             "id": (5, 'as a string, e.g. "5"'),
             "mode": (5, "use one of auto, replace, refine"),
             "src": (None, "src is null: write the source prompt as a string")}
    for key, (value, expected) in cases.items():
        with pytest.raises(ManifestError, match="manifest.jsonl:2: ") as caught:
            read_jsonl(_write(tmp_path / "manifest.jsonl", {key: value}))
        assert expected in str(caught.value)


def test_the_right_types_still_pass(tmp_path):
    lines = [{**GOOD, "id": "a", "blend": "cat:dog", "mode": "refine", "reweight": None, "edit_type": 1},
             {**GOOD, "id": "b", "blend": [["cat"], ["dog"]], "tgt": ["a dog", "a fox"], "mask": [0, 10]},
             {**GOOD, "id": "c", "cross_replace": {"default_": [0.1, 0.8], "dog": 0.4}, "prox": None,
              "crop": [0, 0, 0, 0], "size": [512, 384], "edit_type": "change object", "mask": "m.png"}]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    jobs = read_jsonl(manifest)
    assert [j.id for j in jobs] == ["a", "b", "c"] and jobs[1].tgts == ("a dog", "a fox")


def _not_utf8(path: Path) -> Path:
    first = json.dumps(GOOD).encode()
    second = b'{"id": "b", "image": "x.png", "src": "a caf\xe9", "tgt": "a dog"}'  # Latin-1 é
    path.write_bytes(first + b"\n" + second + b"\n")
    return path


def test_a_byte_that_is_not_utf8_names_its_line_and_column(tmp_path):
    with pytest.raises(ManifestError) as caught:
        read_jsonl(_not_utf8(tmp_path / "manifest.jsonl"))
    message = str(caught.value)
    column = b'{"id": "b", "image": "x.png", "src": "a caf'.__len__() + 1
    assert "manifest.jsonl:2: not UTF-8" in message and "0xe9" in message and f"byte {column} " in message
    assert "save the file as UTF-8" in message


def test_not_utf8_through_the_command(tmp_path, monkeypatch, capsys):
    manifest = _not_utf8(tmp_path / "manifest.jsonl")
    code, err = _edit_dataset([str(manifest), "--model", "tiny", "--steps", "2", "--out", str(tmp_path / "out")],
                              monkeypatch, capsys)
    _assert_one_line(code, err, "manifest.jsonl:2: not UTF-8", "UTF-8")


def test_a_byte_order_mark_is_accepted(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    second = {**GOOD, "id": "two", "tgt": ["a dog", "a fox"]}
    manifest.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n" + json.dumps(second).encode() + b"\r\n")
    jobs = read_jsonl(manifest)
    assert [j.id for j in jobs] == ["good", "two"] and jobs[0].src == "a cat" and jobs[1].tgts == ("a dog", "a fox")
    # and a bad byte on the first line is counted from the file's first byte, the mark included
    manifest.write_bytes(b'\xef\xbb\xbf{"id": "\xff"}\n')
    with pytest.raises(ManifestError, match=r"manifest.jsonl:1: not UTF-8 \(byte 0xff at byte 12 "):
        read_jsonl(manifest)


@pytest.mark.parametrize("text,reason", [("1" * 5000, "not JSON"), ("[" * 100000, "nested too deeply")])
def test_json_that_python_cannot_hold_is_refused(tmp_path, text, reason):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(text + "\n")
    with pytest.raises(ManifestError, match=f"manifest.jsonl:1: .*{reason}"):
        read_jsonl(manifest)


def test_the_reported_cases_as_a_user_runs_them(tmp_path):
    """`python -m pipelines.edit_dataset` on `"image": 5` and on a Latin-1 byte: one line, exit 2,
    and neither torch nor diffusers imported (so no model was loaded)."""
    _write(tmp_path / "number.jsonl", {"image": 5})
    _not_utf8(tmp_path / "latin1.jsonl")
    script = (
        "import json, sys\n"
        "from pipelines.edit_dataset import main\n"
        "codes = [main([m, '--model', 'tiny', '--steps', '2', '--out', sys.argv[2]]) for m in sys.argv[1].split(',')]\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'accelerate') if m in sys.modules]\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    manifests = f"{tmp_path / 'number.jsonl'},{tmp_path / 'latin1.jsonl'}"
    proc = subprocess.run([sys.executable, "-c", script, manifests, str(tmp_path / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"codes": [2, 2], "heavy": []}, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 2, proc.stderr
    assert "number.jsonl:2: image is a number (5)" in lines[0]
    assert "latin1.jsonl:2: not UTF-8" in lines[1]
    proc = subprocess.run([sys.executable, "-m", "pipelines.edit_dataset", str(tmp_path / "number.jsonl"), "--model",
                           "tiny", "--steps", "2", "--out", str(tmp_path / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_the_scoring_manifest_is_read_the_same_way(tmp_path, capsys):
    """`pipelines.score --manifest` reads the same JSONL: a bad type or byte is one line, exit 2."""
    results = tmp_path / "results"
    results.mkdir()
    for name, write in (("types.jsonl", lambda p: p.write_text(json.dumps({"id": "a", "mask": {"rle": 1}}) + "\n")),
                        ("list.jsonl", lambda p: p.write_text("[1, 2]\n")),
                        ("latin1.jsonl", _not_utf8)):
        manifest = tmp_path / name
        write(manifest)
        capsys.readouterr()
        code = score.main([str(results), "--manifest", str(manifest), "--out", str(tmp_path / "r"), "--quiet"])
        err = capsys.readouterr().err
        _assert_one_line(code, err, f"{name}:")
