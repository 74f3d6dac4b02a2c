"""`pipelines.edit_dataset` as users run it: accelerate with two CPU processes, kills, resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--model", "tiny", "--steps", "3", "--inner-steps", "1", "--quiet"]
ACCELERATE_2 = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pipelines.edit_dataset"]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _single(*args):
    return subprocess.run([sys.executable, "-m", "pipelines.edit_dataset", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)


def _manifest(folder: Path, good: int = 6, extra=()):
    """good jobs on variants of the sample photo, one corrupt photo, one bad prompt."""
    photo = Image.open(ROOT / "assets" / "chelsea.png").convert("RGB")
    lines = []
    for i in range(good):
        variant = photo.rotate(15 * i)  # every photo differs: no job is served by another's cached inversion
        variant = ImageOps.mirror(variant) if i % 2 else variant
        variant.save(folder / f"p{i}.png")
        lines.append({"id": f"job{i}", "image": f"p{i}.png", "src": "a cat", "tgt": "a dog"})
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    lines.append({"id": "corrupt", "image": "broken.png", "src": "a cat", "tgt": "a dog"})
    lines.append({"id": "badprompt", "image": "p0.png", "src": "a cat", "tgt": "a dog " + "very " * 80})
    lines.extend(extra)
    path = folder / "jobs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the launcher's workers may sit in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _results(out: Path):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _errors(out: Path):
    return [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]


def test_two_processes_share_the_work_and_isolate_failures(tmp_path):
    manifest, out = _manifest(tmp_path), tmp_path / "out"
    proc = subprocess.run([*ACCELERATE_2, str(manifest), "--out", str(out), *FAST], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0  # two jobs failed
    results = _results(out)
    ids = [r["id"] for r in results]
    assert sorted(ids) == [f"job{i}" for i in range(6)] and len(set(ids)) == len(ids)
    assert {r["process_index"] for r in results} == {0, 1}  # both processes did some
    errors = {e["id"]: e["error"] for e in _errors(out)}
    assert set(errors) == {"corrupt", "badprompt"}
    assert "ImageInputError" in errors["corrupt"] and "77" in errors["badprompt"]
    for i in range(6):
        run = json.loads((out / "items" / f"job{i}" / "run.json").read_text())
        assert run["id"] == f"job{i}" and run["process_index"] in (0, 1)
        assert (out / "items" / f"job{i}" / "edit_1.png").is_file()
    assert not (out / "items" / "corrupt").exists()


def test_killed_run_resumes_without_redoing_or_partials(tmp_path):
    manifest, out = _manifest(tmp_path, good=10), tmp_path / "out"
    args = [*ACCELERATE_2, str(manifest), "--out", str(out), "--model", "tiny", "--steps", "6", "--inner-steps", "3", "--quiet"]
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    items = out / "items"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if items.is_dir() and len([p for p in items.iterdir() if (p / "run.json").is_file()]) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    for pid in [proc.pid, *_descendants(proc.pid)]:  # kill -9, launcher and workers at once
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    time.sleep(0.5)
    # run.json marks a complete item; a folder without one holds only whole files (each published
    # as soon as it was written) and is finished on resume
    first = {p.name: (p / "run.json").stat().st_mtime_ns for p in items.iterdir() if (p / "run.json").is_file()}
    assert 2 <= len(first) < 10
    for folder in items.iterdir():
        for path in folder.iterdir():
            assert not path.name.startswith("."), path  # no half-written file
            if path.suffix == ".png":
                with Image.open(path) as im:
                    im.verify()

    again = subprocess.run([*args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode != 0  # the two bad jobs still fail
    results = _results(out)
    assert sorted(r["id"] for r in results) == sorted(f"job{i}" for i in range(10))
    for name, mtime in first.items():
        assert (items / name / "run.json").stat().st_mtime_ns == mtime  # finished before the kill: not redone
    assert not [p for p in items.iterdir() if p.name.startswith(".")]  # no partial folders
    assert f"({len(first)} were already done)" in again.stdout


def test_per_job_overrides_and_changed_options(tmp_path):
    override = {"id": "slow", "image": "p0.png", "src": "a cat", "tgt": ["a dog", "a cat in the snow"],
                "steps": 2, "cross_replace": [0.1, 0.5], "reweight": {"snow": 2}}
    manifest, out = _manifest(tmp_path, good=1, extra=[override]), tmp_path / "out"
    proc = _single(str(manifest), "--out", str(out), *FAST)
    assert proc.returncode == 1 and "2 of 4 jobs done" in proc.stdout
    run = json.loads((out / "items" / "slow" / "run.json").read_text())
    assert run["parameters"]["steps"] == 2 and run["unet_calls"]["edit"] == 2  # the job's value wins
    assert run["parameters"]["cross_replace"] == [0.1, 0.5] and run["parameters"]["reweight"] == {"snow": 2}
    plain = json.loads((out / "items" / "job0" / "run.json").read_text())
    assert plain["parameters"]["steps"] == 3 and plain["unet_calls"]["edit"] == 3  # the command line's
    changed = _single(str(manifest), "--out", str(out), "--model", "tiny", "--steps", "4", "--inner-steps", "1", "--quiet")
    assert changed.returncode == 2 and "other settings" in changed.stderr and "Traceback" not in changed.stderr


def test_batched_inversion_in_a_dataset(tmp_path):
    manifest, out = _manifest(tmp_path, good=4), tmp_path / "out"
    proc = _single(str(manifest), "--out", str(out), "--batch-size", "3", *FAST)
    assert proc.returncode == 1 and "4 of 6 jobs done" in proc.stdout  # the two bad jobs fail alone
    sizes = sorted(json.loads((out / "items" / f"job{i}" / "run.json").read_text())["inversion"]["batch_size"]
                   for i in range(4))
    assert sizes == [1, 3, 3, 3]  # 3 photos inverted in one UNet batch, then the last one


def test_bad_manifest_is_one_line(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"id": "a", "image": "x.png", "src": "a cat"}\n')
    proc = _single(str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "out"), *FAST)
    assert proc.returncode == 2 and "missing tgt" in proc.stderr and "m.jsonl:1" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_pie_bench_manifest_settings_and_score(tmp_path, metric_models):
    root = tmp_path / "PIE"
    (root / "annotation_images" / "1_change_object_80").mkdir(parents=True)
    Image.open(ROOT / "assets" / "chelsea.png").convert("RGB").resize((512, 512)).save(
        root / "annotation_images" / "1_change_object_80" / "000000000001.jpg")
    mapping = {"000000000001": {"image_path": "1_change_object_80/000000000001.jpg",
                                "original_prompt": "a [cat] sitting on a floor", "editing_prompt": "a [dog] sitting on a floor",
                                "editing_instruction": "cat to dog", "editing_type_id": "1", "blended_word": "cat dog",
                                "mask": [512 * 100, 512 * 300]}}
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    out = tmp_path / "out"
    proc = _single("--pie-bench", str(root), "--out", str(out), *FAST, "--score", "--clip-model", metric_models["clip"],
                   "--dino-model", metric_models["dino"], "--lpips-backbone", "random")
    assert proc.returncode == 0, proc.stderr
    run = json.loads((out / "items" / "000000000001" / "run.json").read_text())
    p = run["parameters"]
    assert (p["cross_replace"], p["self_replace"], p["guidance"]) == (0.4, 0.6, 7.5)  # published P2P settings
    assert p["steps"] == 3  # the command line overrides the published 50
    assert p["blend"] == [["cat"], ["dog"]] and p["reweight"] == {"dog": 2.0}
    assert run["prompts"] == ["a cat sitting on a floor", "a dog sitting on a floor"]
    scores = (out / "report" / "scores.csv").read_text()
    assert "000000000001" in scores and "1 change object" in scores
