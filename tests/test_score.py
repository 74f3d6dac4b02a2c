"""PIE-Bench reading, the report, and `python -m pipelines.score` on a results folder."""

import csv
import json
import math
from pathlib import Path

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


def _results(tmp_path, ids=("000000000001", "000000000002"), size=64):
    rng = np.random.default_rng(0)
    results = tmp_path / "results"
    for n, item in enumerate(ids):
        folder = results / item
        folder.mkdir(parents=True)
        src = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
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


def _stored_photos(root, results, rotate=False):
    """PIE-Bench's stored photos: each item's input.png, saved as the JPEG the mapping names
    (upside down with an EXIF 'rotate 180°' tag when ``rotate``: the same picture once rotated)."""
    for entry in json.loads((root / "mapping_file.json").read_text()).values():
        item = Path(entry["image_path"]).stem
        photo = Image.open(results / item / "input.png")
        path = root / "annotation_images" / entry["image_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        if rotate:
            exif = Image.Exif()
            exif[0x0112] = 3
            photo.rotate(180).save(path, quality=95, exif=exif)
        else:
            photo.save(path, quality=95)


def test_compat_mode_uses_border_and_excludes_nan(tmp_path, metric_models):
    root, results, out = _pie_root(tmp_path), _results(tmp_path), tmp_path / "report"
    _stored_photos(root, results)
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


def _args(results, root, out, metric_models, *extra):
    return [str(results), "--pie-bench", str(root), "--out", str(out), "--clip-model", metric_models["clip"],
            "--dino-model", metric_models["dino"], "--lpips-backbone", "random", "--quiet", *extra]


def test_compat_matches_the_evaluator_on_empty_masks_and_stored_photos(tmp_path, metric_models):
    """Item 2's mask list is empty. The evaluator still zeroes the one-pixel border and reads
    PIE-Bench's stored pixels (no EXIF rotation); the default mode scores the whole of input.png."""
    from eval import metrics

    root, results = _pie_root(tmp_path), _results(tmp_path, size=512)  # PIE-Bench's size: masks apply unscaled
    _stored_photos(root, results, rotate=True)
    chosen = ["--metrics", "psnr,clip_edited"]  # SSIM follows the same mask, at 512 px it costs seconds
    assert score_main(_args(results, root, tmp_path / "compat", metric_models, "--pie-bench-compat", *chosen)) == 0
    assert score_main(_args(results, root, tmp_path / "default", metric_models, *chosen)) == 0
    compat = {r["id"]: r for r in report.read_scores(tmp_path / "compat" / "scores.csv")}["000000000002"]
    default = {r["id"]: r for r in report.read_scores(tmp_path / "default" / "scores.csv")}["000000000002"]

    stored = Image.open(root / "annotation_images" / "9_style" / "000000000002.jpg").convert("RGB")  # as stored
    edited = Image.open(results / "000000000002" / "edit_1.png")
    border = decode_mask([], border=True)
    assert compat["psnr"] == pytest.approx(metrics.psnr(stored, edited, border, compat=True), rel=1e-6)
    assert 0 <= compat["clip_edited"] <= 100  # the border-only image is scored, not NaN

    source = Image.open(results / "000000000002" / "input.png")
    assert default["psnr"] == pytest.approx(metrics.psnr(source, edited), rel=1e-6)
    assert math.isnan(default["clip_edited"])


def test_compat_refuses_a_missing_stored_photo(tmp_path, metric_models, capsys):
    root, results = _pie_root(tmp_path), _results(tmp_path)
    assert score_main(_args(results, root, tmp_path / "r", metric_models, "--pie-bench-compat")) == 2
    err = capsys.readouterr().err
    assert "000000000001.jpg is missing" in err and len(err.strip().splitlines()) == 1


def test_metrics_choice_without_models_then_fill_in(tmp_path, metric_models, capsys):
    root, results, out = _pie_root(tmp_path), _results(tmp_path), tmp_path / "report"
    no_models = [str(results), "--pie-bench", str(root), "--out", str(out), "--clip-model", "nobody/no-clip",
                 "--dino-model", "nobody/no-dino", "--lpips-backbone", str(tmp_path / "none.pth"), "--quiet"]
    (tmp_path / "none.pth").write_bytes(b"not a state dict")
    assert score_main([*no_models, "--metrics", "psnr,ssim,mse"]) == 0
    rows = report.read_scores(out / "scores.csv")
    assert all(r["psnr"] > 0 and r["lpips"] is None and r["clip_whole"] is None for r in rows)
    assert "not scored yet" in capsys.readouterr().out
    assert "Not scored yet" in (out / "summary.md").read_text()
    first = {r["id"]: r["psnr"] for r in rows}

    # every metric, CLIP missing: stopped before scoring, one line naming the model, the fix and --metrics
    assert score_main(no_models) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "nobody/no-clip" in err and "huggingface-cli download" in err
    assert "--metrics structure_distance,psnr,lpips,mse,ssim" in err
    assert report.read_scores(out / "scores.csv") == rows

    # with the models: the missing metrics are filled in, the ones the rows have are kept
    assert score_main(_args(results, root, out, metric_models)) == 0
    assert "filled in metrics of 2 earlier rows" in capsys.readouterr().out
    again = report.read_scores(out / "scores.csv")
    assert {r["id"]: r["psnr"] for r in again} == first
    assert all(r["lpips"] is not None and r["clip_whole"] is not None for r in again)
    assert "Not scored yet" not in (out / "summary.md").read_text()
