"""``python -m bench gpu`` (issue #32) checked on the CPU: the --quick run makes every row and valid
JSON, --budget-s skips rows and names them, and the device-side script refuses in one line."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import inversion
from bench.__main__ import main
from bench.gpu import (
    JSON_NAME,
    LABELS,
    SD_ROWS,
    TABLE_NAME,
    XL_ROWS,
    Budget,
    Row,
    Settings,
    estimate_run,
    plan_repeats,
    row_names,
    run_row,
)

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


def _bench(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(["gpu", *args])
    return exit_.value.code


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``--quick`` run through the command line (2 photos in the batch row, to keep it short; one
    thread, which a CPU shared with other work runs fastest: see bench/measure.py)."""
    out = tmp_path_factory.mktemp("gpu-quick")
    threads = torch.get_num_threads()
    try:
        code = _bench(["--quick", "--photos", "2", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return out, code


def test_quick_run_measures_every_row_and_writes_valid_json(quick):
    out, code = quick
    assert code == 0
    report = json.loads((out / JSON_NAME).read_text())
    rows = {r["name"]: r for r in report["rows"]}
    settings = Settings.quick_run(photos=2)
    expected = {*row_names("tiny", settings, xl=False).values(), *row_names("tiny-xl", settings, xl=True).values()}
    assert set(rows) == expected and len(report["rows"]) == len(SD_ROWS) + len(XL_ROWS)
    assert {r["key"] for r in report["rows"]} == set(LABELS)
    for name, row in rows.items():
        optional = row["key"] in ("direct", "fixed-point") and row["key"] not in inversion.METHODS
        if optional:
            assert row["status"] == "skipped" and row["reason"] == "not available in this checkout"
            continue
        assert row["status"] == "measured", (name, row["reason"])
        assert row["seconds"] > 0 and row["seconds_per_photo"] > 0 and row["repeats"] == 1
        assert row["unet_forward"] >= row["steps"] == 3
        assert row["peak_mb"] is not None
    by_key = {(r["model"], r["key"]): r for r in report["rows"]}
    assert by_key["tiny", "null-text"]["unet_backward"] > 0 and by_key["tiny", "ddim"]["unet_backward"] == 0
    assert by_key["tiny", "null-text"]["inner_steps"] == 2
    batch = by_key["tiny", "batch"]
    assert batch["photos"] == 2 and batch["seconds_per_photo"] == pytest.approx(batch["seconds"] / 2, abs=1e-3)
    assert by_key["tiny", "edit"]["ratio"] > 0 and by_key["tiny", "edit"]["ratio_to"] == by_key["tiny", "generate"]["name"]
    assert by_key["tiny", "blend"]["extra"]["attention_pictures"] == 2
    assert report["memory_kind"] == "cpu_rss_above_start" and report["skipped"] == [
        f"{r['name']} ({r['reason']})" for r in report["rows"] if r["status"] != "measured"]
    env = report["environment"]
    assert env["packages"]["torch"] and env["packages"]["diffusers"] and env["device"] == "cpu"
    table = (out / TABLE_NAME).read_text()
    assert all(name in table for name in rows)
    assert not list(out.glob("*.tmp"))


def test_budget_skips_rows_and_names_them(tmp_path):
    assert _bench(["--quick", "--budget-s", "0.001", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / JSON_NAME).read_text())
    assert report["budget_s"] == 0.001
    assert report["rows"] and all(r["status"] == "skipped" and "budget" in r["reason"] for r in report["rows"])
    assert len(report["skipped"]) == len(SD_ROWS) + len(XL_ROWS)  # every row, by name
    table = (tmp_path / TABLE_NAME).read_text()
    assert "tiny null-text inversion (2 inner, early stop)" in table and "Skipped: " in table


class _Unet(torch.nn.Module):
    def forward(self, x):
        return x


class _Pipe:
    unet = _Unet()


def _sleeping(per_step: float) -> Row:
    def work(steps: int, _) -> dict:
        time.sleep(per_step * steps)
        _Pipe.unet(torch.zeros(1))
        return {"unet_backward": 0}
    return Row("sleep", "fake", 1, work, key="fake")


def test_a_row_estimated_over_what_is_left_is_skipped_with_its_estimate():
    settings = Settings(steps=50, repeats=3)
    result = run_row(_Pipe(), _sleeping(0.01), settings, Budget(0.25), CPU)
    assert result.status == "skipped" and "over budget" in result.reason
    assert result.estimate_s == pytest.approx(0.5, rel=0.5)  # 50 steps × 10 ms
    done = run_row(_Pipe(), _sleeping(0.001), Settings(steps=5, repeats=2), Budget(None), CPU)
    assert done.status == "measured" and done.repeats == 2 and done.unet_forward == 1
    assert done.seconds == pytest.approx(0.005, abs=0.02) and done.estimate_s is not None


def test_a_failing_row_is_reported_not_raised():
    def broken(steps: int, _) -> dict:
        raise RuntimeError("CUDA out of memory\nsecond line")
    result = run_row(_Pipe(), Row("broken", "fake", 1, broken), Settings(steps=3), Budget(None), CPU)
    assert result.status == "failed" and result.reason == "RuntimeError: CUDA out of memory"
    unavailable = run_row(_Pipe(), Row("direct", "fake", 1, broken, available="not available in this checkout"),
                          Settings(), Budget(None), CPU)
    assert unavailable.status == "skipped" and unavailable.reason == "not available in this checkout"


def test_estimates_and_repeats():
    assert estimate_run(1.0, 1.5, 50) == (0.5, 0.5)
    fixed, per_step = estimate_run(1.0, 0.9, 50)  # noise: t2 < t1 still costs something per step
    assert per_step > 0 and fixed >= 0
    assert plan_repeats(10, float("inf"), 3, 30) == 3
    assert plan_repeats(40, float("inf"), 3, 30) == 1  # long rows run once
    assert plan_repeats(10, 25, 3, 30) == 2 and plan_repeats(10, 5, 3, 30) == 0
    clock = iter([0.0, 4.0]).__next__
    assert Budget(10, clock).left() == 6.0


def _script(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_run.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60, cwd=ROOT)


def test_device_script_refuses_in_one_line_without_wheels(tmp_path):
    done = _script({"GPU_WHEELS": str(tmp_path / "absent")}, str(tmp_path / "out"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no wheel folder" in done.stderr
    (tmp_path / "empty").mkdir()
    done = _script({"GPU_WHEELS": str(tmp_path / "empty")}, str(tmp_path / "out"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no diffusers wheel" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_script_refuses_in_one_line_without_cuda(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "diffusers-0.42.1-py3-none-any.whl").write_bytes(b"")
    done = _script({"GPU_WHEELS": str(wheels), "GPU_PYTHON": sys.executable}, str(tmp_path / "out"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "CUDA is not available" in done.stderr
    assert not (tmp_path / "out").exists()  # refused before installing or writing anything
