"""Dataset throughput: jobs per second of ``pipelines.edit_dataset`` with 1 and 2 processes
(accelerate's CPU form) on the tiny model, measured in the same run (``python -m bench dataset``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]


def _jobs(folder: Path, count: int) -> Path:
    photo = Image.open(ROOT / "assets" / "chelsea.png").convert("RGB")
    lines = []
    for i in range(count):
        (ImageOps.mirror(photo) if i % 2 else photo.rotate(10 * i)).save(folder / f"p{i}.png")
        lines.append(json.dumps({"id": f"job{i}", "image": f"p{i}.png", "src": "a cat", "tgt": "a dog"}))
    path = folder / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def bench_dataset(jobs: int = 8, steps: int = 20, inner_steps: int = 5, model: str = "tiny") -> list[dict]:
    """Run the same manifest with 1 and 2 processes; one row each, with jobs/s and the speed-up."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = _jobs(Path(tmp), jobs)
        options = ["--model", model, "--steps", str(steps), "--inner-steps", str(inner_steps), "--quiet"]
        single = [sys.executable, "-m", "pipelines.edit_dataset"]
        multi = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pipelines.edit_dataset"]
        for processes, command in ((1, single), (2, multi)):
            out = Path(tmp) / f"out{processes}"
            started = time.perf_counter()
            proc = subprocess.run([*command, str(manifest), "--out", str(out), *options], cwd=ROOT, env=env,
                                  capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if proc.returncode != 0:
                raise RuntimeError(f"the {processes}-process run failed:\n{proc.stderr[-2000:]}")
            rows.append({"model": model, "processes": processes, "jobs": jobs, "steps": steps,
                         "seconds": round(seconds, 2), "jobs_per_second": round(jobs / seconds, 3)})
    for row in rows:
        row["speedup"] = round(row["jobs_per_second"] / rows[0]["jobs_per_second"], 2)
    return rows
