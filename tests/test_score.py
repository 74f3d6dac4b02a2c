"""PIE-Bench reading, the report, and `python -m pipelines.score` on a results folder."""

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from data.pie_bench import by_edit_type, clean_prompt, decode_mask, load_mapping
from eval import report
from pipelines.score import main as score_main


def test_decode_mask_hand_made():
    # 4×5 image, row-major: run (2, 3) covers row 0 cols 2..4; run (11, 2) covers row 2 cols 1..2
    mask = decode_mask([2, 3, 11, 2], shape=(4, 5))
    expected = np.array([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=np.uint8)
    assert np.array_equal(mask, expected)
    bordered = decode_mask([2, 3, 11, 2], shape=(4, 5), border=True)
    expected_b = expected.copy()
    expected_b[0, :] = expected_b[-1, :] = expected_b[:, 0] = expected_b[:, -1] = 1
    assert np.array_equal(bordered, expected_b)
    assert decode_mask([], shape=(512, 512)).shape == (512, 512)
    with pytest.raises(ValueError):
        decode_mask([1, 2, 3])


def _pie_root(tmp_path):
    root = tmp_path / "PIE-Bench"
    (root / "annotation_images" / "1_change_object").mkdir(parents=True)
    mapping = {
        "000000000001": {"image_path": "1_change_object/000000000001.jpg", "original_prompt": "a [cat] on a mat",
                         "editing_prompt": "a [dog] on a mat", "editing_instruction": "make it a dog",
                         "editing_type_id": "1", "blended_word": "cat dog", "mask": [0, 512 * 100]},
        "000000000002": {"image_path": "9_style/000000000002.jpg", "original_prompt": "a house",
                         "editing_prompt": "a [watercolor] house", "editing_instruction": "",
                         "editing_type_id": "9", "blended_word": "", "mask": []},
    }
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root


def test_load_mapping(tmp_path):
    items = load_mapping(_pie_root(tmp_path))
    assert [i.id for i in items] == ["000000000001", "000000000002"]
    first = items[0]
    assert (first.src, first.tgt, first.edit_type, first.blend_words) == ("a cat on a mat", "a dog on a mat", 1, ("cat", "dog"))
    assert first.image.name == "000000000001.jpg" and first.mask().sum() == 512 * 100
    assert items[1].blend_words is None
    assert list(by_edit_type(items)) == [1, 9]
    assert clean_prompt("a  [red]  car") == "a red car"


def _results(tmp_path, ids=("000000000001", "000000000002")):
    rng = np.random.default_rng(0)
    results = tmp_path / "results"
    for n, item in enumerate(ids):
        folder = results / item
        folder.mkdir(parents=True)
        src = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(src).save(folder / "input.png")
        edited = src.copy()
        edited[:8] = 255 - edited[:8]
        Image.fromarray(edited).save(folder / "edit_1.png")
        (folder / "run.json").write_text(json.dumps({"prompts": ["a cat on a mat", "a dog on a mat"],
                                                     "parameters": {"inversion": "null-text" if n == 0 else "ddim"}}))
    return results


def test_score_command_writes_report_and_skips_scored(tmp_path, metric_models, capsys):
    root, results, out = _pie_root(tmp_path), _results(tmp_path), tmp_path / "report"
    args = [str(results), "--pie-bench", str(root), "--out", str(out), "--clip-model", metric_models["clip"],
            "--dino-model", metric_models["dino"], "--lpips-backbone", "random", "--quiet"]
    assert score_main(args) == 0
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == report.COLUMNS
    assert {(r["id"], r["method"]) for r in rows} == {("000000000001", "null-text+p2p"), ("000000000002", "ddim+p2p")}
    by_id = {r["id"]: r for r in rows}
    assert by_id["000000000001"]["edit_type"].startswith("1") and by_id["000000000002"]["edit_type"].startswith("9")
    assert by_id["000000000002"]["clip_edited"] == "nan"  # no mask: no edited part ("" would be: not scored)
    assert 0 <= float(by_id["000000000001"]["clip_edited"]) <= 100
    summary = (out / "summary.md").read_text()
    assert "null-text+p2p" in summary and "NTI+P2P (published)" in summary and "by edit type" in summary
    plots = sorted(p.name for p in out.glob("plot_*.png"))
    assert "plot_clip_vs_lpips.png" in plots and len(plots) == len(report.METRICS) + 1
    with Image.open(out / "plot_lpips.png") as im:
        assert im.size[0] >= 400 and im.size[1] >= 300

    # a rerun scores nothing again; a new result is scored alone
    assert score_main(args) == 0
    assert "scored 0 new edits (2 in all)" in capsys.readouterr().out
    _results(tmp_path / "more", ids=("000000000003",))
    (results / "000000000003").mkdir()
    for f in (tmp_path / "more" / "results" / "000000000003").iterdir():
        (results / "000000000003" / f.name).write_bytes(f.read_bytes())
    assert score_main(args) == 0
    assert "scored 1 new edits (3 in all)" in capsys.readouterr().out


def test_compat_mode_uses_border_and_excludes_nan(tmp_path, metric_models):
    root, results, out = _pie_root(tmp_path), _results(tmp_path), tmp_path / "report"
    mapping = json.loads((root / "mapping_file.json").read_text())
    mapping["000000000002"]["mask"] = [0, 512 * 512]  # everything edited: background metrics are NaN
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    assert score_main([str(results), "--pie-bench", str(root), "--out", str(out), "--clip-model", metric_models["clip"],
                       "--dino-model", metric_models["dino"], "--lpips-backbone", "random", "--pie-bench-compat", "--quiet"]) == 0
    rows = report.read_scores(out / "scores.csv")
    nan_row = next(r for r in rows if r["id"] == "000000000002")
    assert math.isnan(nan_row["psnr"]) and math.isnan(nan_row["lpips"])
    avg = report.means(rows)
    ok_row = next(r for r in rows if r["id"] == "000000000001")
    assert avg["lpips"] == pytest.approx(ok_row["lpips"])  # the NaN item is left out of the mean
    assert "PIE-Bench-compatible" in (out / "summary.md").read_text()


def test_score_errors_are_one_line(tmp_path, capsys):
    assert score_main([str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "no such folder" in capsys.readouterr().err
