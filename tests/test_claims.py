"""The papers' claims on the shapes model (issue #14): the measurements on rendered scenes, where the
truth is known (always run), and claims (b), (d), (f) and (g) on the shipped weights (skipped until
``models/shapes/`` has them; ``PROMPTEDIT_SHAPES_MODEL=DIR`` points these tests at another folder)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from bench.claims import SWAPS, make_case, pick_targets, summarize_swaps, swap_prompts, swapped
from data.shapes import ShapeObject, centred, render, shape_mask
from eval.claims import (
    THRESHOLDS,
    Source,
    attention_mask,
    background_mask,
    background_psnr,
    centroid_distance,
    is_monotonic,
    judge_attention,
    judge_refine,
    judge_swap,
    kept_inside,
    object_box,
    saturation,
    target_shape_mask,
)
from eval.shapes import iou
from models.defaults import BlendDefaults, read_blend_defaults

RED_CIRCLE = ShapeObject("circle", "red", "big", (0.45, 0.55))


# ---------------------------------------------------------------- the renderer's shapes anywhere
@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_shape_mask_is_the_renderers_mask(shape):
    obj = ShapeObject(shape, "blue", "small", (0.3, 0.62))
    assert np.array_equal(shape_mask(shape, obj.center, obj.radius), render([obj], "white").masks[0])


@pytest.mark.parametrize("world", [1, 2])
def test_object_box_gives_back_the_renderers_place_and_size(world):
    for obj in (RED_CIRCLE, ShapeObject("triangle", "green", "small", (0.7, 0.3))):
        (cx, cy), r = object_box(render([obj], "gray", world=world).masks[0], world)
        assert abs(cx - obj.center[0]) * 64 <= 0.5 and abs(cy - obj.center[1]) * 64 <= 0.5
        assert abs(r - obj.radius) * 64 <= 0.5
    with pytest.raises(ValueError, match="empty"):
        object_box(np.zeros((64, 64), bool))


@pytest.mark.parametrize("world", [1, 2])
def test_target_shape_is_drawn_in_the_source_objects_square(world):
    circle, triangle = (render([obj], "white", world=world).masks[0]
                        for obj in (RED_CIRCLE, centred(RED_CIRCLE, shape="triangle")))
    assert iou(target_shape_mask("triangle", circle, world), triangle) > 0.95
    assert iou(target_shape_mask("circle", triangle, world), circle) > 0.95
    # why a shape swap is judged against the target shape: against the source mask a perfect
    # circle → triangle swap scores 0.51 in world 1 (0.59 in world 2), whatever the edit kept
    assert iou(circle, triangle) == pytest.approx({1: 0.51, 2: 0.59}[world], abs=0.01)


# ---------------------------------------------------------------- geometry and pixels
def test_centroid_distance_and_kept_inside():
    a = np.zeros((64, 64), bool)
    a[10:20, 10:20] = True
    b = np.roll(a, 3, axis=1)
    assert centroid_distance(a, b) == pytest.approx(3.0)
    assert kept_inside(a, b) == pytest.approx(0.7)
    assert kept_inside(a, a | b) == 1.0
    assert centroid_distance(a, np.zeros_like(a)) > 60  # no object found: far beyond every threshold


def test_background_is_farther_than_two_pixels_from_every_object():
    a = np.zeros((32, 32), bool)
    a[10, 10] = True
    b = np.zeros_like(a)
    b[20, 25] = True
    keep = background_mask([a, b])
    # exactly 2 px away is not "farther than 2 px"; √5 ≈ 2.24 px is
    for (y, x), expected in {(10, 12): False, (12, 10): False, (11, 11): False, (12, 11): True, (10, 13): True,
                             (20, 27): False, (20, 28): True, (0, 0): True}.items():
        assert keep[y, x] == expected, (y, x)


def test_background_psnr_sees_only_the_background():
    scene = render([RED_CIRCLE], "white")
    recoloured = render([centred(RED_CIRCLE, colour="blue")], "white")
    assert math.isinf(background_psnr(scene.image, recoloured.image, [scene.masks[0], recoloured.masks[0]]))
    pixels = np.asarray(recoloured.image).copy()
    pixels[1, 1] = (0, 0, 0)  # one background pixel changed
    value = background_psnr(scene.image, pixels, [scene.masks[0]])
    keep = background_mask([scene.masks[0]])
    expected = 10 * math.log10(1 / (3 * 1.0 / 3 / keep.sum()))
    assert value == pytest.approx(expected, abs=1e-3)


def test_saturation_of_the_palette():
    scene = render([RED_CIRCLE], "gray")
    mask = scene.masks[0]
    assert saturation(scene.image, mask) == pytest.approx((220 - 40) / 220, abs=0.01)
    assert saturation(scene.image, ~background_mask([mask], 0) & False) == 0.0  # no pixels
    assert saturation(scene.image, background_mask([mask])) == 0.0  # gray
    assert saturation(render([RED_CIRCLE], "black").image, background_mask([mask])) == 0.0


def test_attention_map_at_half_its_maximum_covers_the_object():
    scene = render([RED_CIRCLE], "white")
    mask = scene.masks[0]
    coarse = mask.reshape(8, 8, 8, 8).mean((1, 3))  # an 8×8 map that attends where the object is
    assert attention_mask(coarse, mask.shape).shape == mask.shape
    assert judge_attention(coarse, mask) >= THRESHOLDS["attention_iou"]
    assert judge_attention(np.ones((8, 8)), mask) < THRESHOLDS["attention_iou"]  # attends everywhere
    assert judge_attention(np.zeros((8, 8)), mask) == 0.0


def test_monotonic():
    assert is_monotonic([0.1, 0.2, 0.2, 0.5])
    assert not is_monotonic([0.1, 0.3, 0.2])
    assert is_monotonic([3, 2, 1], increasing=False)


# ---------------------------------------------------------------- judging edits, with the truth known
@pytest.mark.parametrize("kind,target,edited", [
    ("colour", "blue", [centred(RED_CIRCLE, colour="blue")]),
    ("shape", "triangle", [centred(RED_CIRCLE, shape="triangle")]),
    ("shape", "square", [centred(RED_CIRCLE, shape="square")]),
])
def test_a_perfect_swap_meets_the_thresholds(kind, target, edited):
    source = Source.from_scene(render([RED_CIRCLE], "white"))
    judged = judge_swap(kind, target, source, render(edited, "white").image)
    assert judged["changed"]
    # the renderer's mask (pixels covered at least half) against the detector's (anti-aliased
    # fringe included): 0.91–0.98 for a perfect edit
    assert judged["iou"] >= 0.9 and judged["centroid_px"] <= 1.0
    assert math.isinf(judged["background_db"])


def test_world_2_judges_a_triangle_swap_that_keeps_the_centre_of_mass_as_kept():
    """Prompt-to-Prompt keeps an object's centre of mass (the attention maps hold it). World 2 draws
    every shape about it, so such a triangle → circle swap is a perfect one; world 1's triangle has
    its centroid a third of a radius below its box's centre, and there the same kind of edit lands
    that far off the target drawn in the triangle's square."""
    triangle = ShapeObject("triangle", "red", "big", (0.45, 0.55), r=0.22)
    source = Source.from_scene(render([triangle], "white", world=2), world=2)
    judged = judge_swap("shape", "circle", source, render([centred(triangle, shape="circle")], "white", world=2).image)
    assert judged["changed"] and judged["iou"] >= 0.9 and judged["centroid_px"] <= 1.0
    old = render([triangle], "white").masks[0]
    low = ((np.nonzero(old)[0].mean() + 0.5) / 64 - triangle.center[1]) * 64  # its centroid, r/3 down
    kept_mass = render([ShapeObject("circle", "red", "big", (0.45, 0.55 + low / 64), r=0.22)], "white").image
    off = judge_swap("shape", "circle", Source.from_scene(render([triangle], "white")), kept_mass)
    assert off["centroid_px"] == pytest.approx(0.22 * 64 / 3, abs=0.7) and off["iou"] < THRESHOLDS["shape_iou"] + 0.1


def test_a_background_swap_keeps_the_object():
    source = Source.from_scene(render([RED_CIRCLE], "white"))
    judged = judge_swap("background", "black", source, render([RED_CIRCLE], "black").image)
    assert judged["changed"] and judged["iou"] > 0.95 and math.isnan(judged["background_db"])


def test_a_failed_or_moved_swap_is_seen():
    source = Source.from_scene(render([RED_CIRCLE], "white"))
    unchanged = judge_swap("colour", "blue", source, source.image)
    assert not unchanged["changed"] and unchanged["iou"] > 0.95
    moved = render([ShapeObject("triangle", "red", "big", (0.6, 0.55))], "white").image
    judged = judge_swap("shape", "triangle", source, moved)
    assert judged["changed"] and judged["centroid_px"] > THRESHOLDS["centroid_px"] and judged["iou"] < THRESHOLDS["shape_iou"]
    empty = judge_swap("colour", "blue", source, render([], "white").image)
    assert not empty["changed"] and empty["iou"] == 0.0


def test_refinement_in_place():
    small = ShapeObject("circle", "red", "small", (0.5, 0.5))
    source = Source.from_scene(render([small], "white"))
    judged = judge_refine(source, render([ShapeObject("circle", "red", "big", (0.5, 0.5))], "black").image, "big", "black")
    assert judged["changed"] and judged["centroid_px"] < 0.5 and judged["kept_inside"] == 1.0
    assert not judge_refine(source, source.image, "big", "black")["changed"]
    assert judged["size_changed"] and judged["background_changed"] and judged["fits_in_place"]
    # only the background made: the parts say which word took
    half = judge_refine(source, render([small], "black").image, "big", "black")
    assert not half["changed"] and half["background_changed"] and not half["size_changed"]


def test_refinement_knows_when_a_big_object_cannot_stay_in_place():
    # a small circle near the left edge: a big one centred there would cross the edge
    near_edge = Source.from_scene(render([ShapeObject("circle", "red", "small", (0.2, 0.5))], "white"))
    grown = render([ShapeObject("circle", "red", "big", (0.28, 0.5))], "black").image
    judged = judge_refine(near_edge, grown, "big", "black")
    assert judged["changed"] and not judged["fits_in_place"]


# ---------------------------------------------------------------- the benchmark's cases and tables
def test_cases_are_seeded_and_every_swap_changes_one_word():
    assert make_case(5) == make_case(5)
    for seed in range(30):
        case = make_case(seed)
        prompts = swap_prompts(case.prompt, {"colour": case.colour, "shape": case.shape,
                                             "background": case.background}, case.targets)
        for kind in SWAPS:
            old, new = case.prompt.split(" "), prompts[kind].split(" ")
            assert len(old) == len(new) and sum(a != b for a, b in zip(old, new)) == 1
            assert case.targets[kind] != getattr(case, kind)
        assert case.refine_prompt.startswith("a big ") and case.refine_background != case.background
    assert swapped("a red circle on a red background", "red", "blue") == "a blue circle on a blue background"
    with pytest.raises(ValueError):
        swapped("a red circle", "square", "circle")
    targets = pick_targets(np.random.default_rng(0), "red", "circle", "white")
    assert targets["colour"] != "red" and targets["shape"] != "circle" and targets["background"] != "white"


def test_summary_applies_the_thresholds():
    good = {"changed": True, "iou": 0.9, "centroid_px": 1.0, "background_db": 35.0}
    shape_ok = {"changed": True, "iou": 0.75, "centroid_px": 2.0, "background_db": 33.0}
    rows = [{"colour": good, "shape": shape_ok, "background": dict(good, background_db=float("nan"))}] * 9
    rows.append({"colour": dict(good, changed=False), "shape": dict(shape_ok, centroid_px=9.0),
                 "background": dict(good, iou=0.5, background_db=float("nan"))})
    summary = summarize_swaps(rows)
    assert summary["colour"]["changed"] == 0.9 and summary["colour"]["passed"]
    assert summary["shape"]["centroid_px_median"] == 2.0 and summary["shape"]["passed"]
    assert summary["background"]["iou"] == pytest.approx(0.86) and summary["background"]["passed"]
    # nine cases at 0.9 and one at 0.5: sample standard deviation √0.016, over √10 cases
    assert summary["background"]["iou_se"] == pytest.approx(0.04, abs=1e-3)
    assert summary["colour"]["iou_se"] == 0.0
    assert math.isnan(summary["background"]["background_db"])
    rows.append({"colour": dict(good, changed=False), "shape": dict(shape_ok, iou=0.1), "background": good})
    summary = summarize_swaps(rows)
    assert not summary["colour"]["passed"] and not summary["shape"]["passed"]


def test_the_printed_claims_show_each_swap_iou_with_its_standard_error():
    from bench.claims import print_claims, summarize

    good = {"changed": True, "iou": 0.9, "centroid_px": 1.0, "background_db": 35.0}
    records = [{"p2p": {"colour": good, "shape": dict(good, iou=iou), "background": dict(good, background_db=float("nan"))},
                "attention_iou": 0.6, "attention_side": 16} for iou in (0.6, 0.7, 0.8)]
    claims = summarize({"records": records}, None, None, (16, 0.3))
    report = {"model": "m", "blend": {"map_side": 16, "threshold": 0.3, "from_model": True}, "claims": claims,
              "seconds": {}, "passed": False}
    shape_line = next(line for line in print_claims(report).splitlines() if "p2p   shape" in line)
    # three cases at 0.6, 0.7, 0.8: standard deviation 0.1, standard error 0.1 / √3
    assert "IoU 0.70 ± 0.06" in shape_line


def test_swaps_from_an_inversion_are_reported_beside_b_without_a_verdict():
    from bench.claims import summarize

    good = {"changed": True, "iou": 0.9, "centroid_px": 1.0, "background_db": 35.0}
    swaps = {"colour": good, "shape": dict(good, iou=0.75), "background": dict(good, background_db=float("nan"))}
    moved = dict(swaps, background=dict(good, iou=0.1, background_db=float("nan")), reconstruction_db=36.0)
    records = [{"p2p": swaps, "attention_iou": 0.6, "attention_side": 16, "inverted": moved}] * 2
    claims = summarize({"records": records}, None, None, (16, 0.3))
    inverted = claims["i_generated_inverted"]
    assert inverted["reconstruction_db"] == 36.0
    assert inverted["p2p"]["colour"]["passed"] and not inverted["p2p"]["background"]["passed"]
    # a measurement beside (b), not a claim: the failing background swap from the inversion fails nothing
    assert "passed" not in inverted and claims["b_generated"]["passed"]
    records = [{k: v for k, v in r.items() if k != "inverted"} for r in records]
    assert "i_generated_inverted" not in summarize({"records": records}, None, None, (16, 0.3))


def test_refinement_is_also_reported_where_a_big_object_fits_without_changing_the_verdict():
    from bench.claims import summarize

    good = {"changed": True, "iou": 0.9, "centroid_px": 1.0, "background_db": 35.0}
    swaps = {"colour": good, "shape": dict(good, iou=0.75), "background": dict(good, background_db=float("nan"))}
    kept = {"changed": True, "size_changed": True, "background_changed": True, "centroid_px": 1.0,
            "kept_inside": 0.95, "fits_in_place": True}
    moved = dict(kept, centroid_px=20.0, kept_inside=0.0, fits_in_place=False)
    muddy = dict(kept, changed=False, size_changed=False, centroid_px=9.0, kept_inside=0.1)
    plain = dict(kept, centroid_px=12.0, kept_inside=0.5)
    records = [{"p2p": swaps, "plain": swaps, "attention_iou": 0.6, "attention_side": 16, "refine": r,
                "refine_plain": plain} for r in (kept, kept, kept, moved, muddy)]
    refine = summarize({"records": records}, None, None, (16, 0.3))["c_refine"]
    assert refine["cases"] == 5 and refine["fits_in_place"] == 0.8 and not refine["passed"]
    assert refine["kept_inside"] == pytest.approx((3 * 0.95 + 0.1) / 5, abs=1e-3)
    fits = refine["where_it_fits"]  # the case that cannot stay in place left out, the muddy one kept
    assert fits["cases"] == 4 and fits["changed"] == 0.75 and fits["centroid_px_median"] == 1.0
    assert fits["kept_inside"] == pytest.approx((3 * 0.95 + 0.1) / 4, abs=1e-3)
    assert refine["plain"] == {"cases": 5, "changed": 1.0, "centroid_px_median": 12.0, "kept_inside": 0.5}
    # the verdict stays the whole set's even where every source with room would pass on its own
    records = records[:3] + [records[3], records[0]]  # kept ×4, moved ×1
    refine = summarize({"records": records}, None, None, (16, 0.3))["c_refine"]
    assert refine["where_it_fits"]["kept_inside"] >= 0.85 and refine["where_it_fits"]["centroid_px_median"] <= 3.0
    assert not refine["passed"]
    no_room = [dict(r, refine=moved) for r in records]
    assert summarize({"records": no_room}, None, None, (16, 0.3))["c_refine"]["where_it_fits"] is None


def test_bench_claims_parts_reach_the_generated_cases(monkeypatch):
    import bench.claims as claims
    import models.loading

    seen = []
    monkeypatch.setattr(models.loading, "load_pipeline", lambda *a, **k: None)
    monkeypatch.setattr(claims, "blend_defaults", lambda pipe: BlendDefaults())
    monkeypatch.setattr(claims, "run_generated",
                        lambda pipe, count, blend, steps, pictures, parts: seen.append(parts) or {"records": [], "skipped_seeds": []})
    monkeypatch.setattr(claims, "run_reweight", lambda *a, **k: seen.append("e"))
    monkeypatch.setattr(claims, "run_photos", lambda *a, **k: seen.append("f") or {"records": []})
    for asked, given in (("bcdefgi", ["bcdgi", "e", "f"]), ("bi", ["bi"]), ("di", ["di"]), ("bcdg", ["bcdg"]), ("ef", ["e", "f"])):
        claims.bench_shapes_claims(parts=asked)
        assert seen == given
        seen.clear()


# ---------------------------------------------------------------- the model's own blend defaults
def test_blend_defaults_are_read_from_the_model_folder(tmp_path):
    assert read_blend_defaults(tmp_path) == BlendDefaults()
    (tmp_path / "promptedit.json").write_text(json.dumps({"local_blend": {"map_side": 16, "threshold": 0.4}}))
    assert read_blend_defaults(tmp_path) == BlendDefaults(16, 0.4)
    for bad in ({"local_blend": {"map_side": 0}}, {"local_blend": {"threshold": 1.0}},
                {"local_blend": {"map_side": True}}, [1, 2]):
        (tmp_path / "promptedit.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="promptedit.json"):
            read_blend_defaults(tmp_path)


# ---------------------------------------------------------------- (b), (d), (f) on the shipped weights
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "shapes"


@pytest.fixture(scope="module")
def shapes_pipe():
    """The shipped shapes model (or the folder in PROMPTEDIT_SHAPES_MODEL), one torch thread."""
    import torch

    from models.loading import load_pipeline

    model = os.environ.get("PROMPTEDIT_SHAPES_MODEL", "shapes")
    if model == "shapes" and not (SHIPPED / "model_index.json").is_file():
        pytest.skip("models/shapes/ has no weights yet (model_index.json is missing): the claims are measured "
                    "once the shapes model ships; set PROMPTEDIT_SHAPES_MODEL=DIR to check a trained folder")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_pipeline(model, device="cpu", dtype=torch.float32)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def generated(shapes_pipe):
    from bench.claims import model_blend, run_generated

    return run_generated(shapes_pipe, 3, model_blend(shapes_pipe), parts="bcd")


@pytest.fixture(scope="module")
def reweighted(shapes_pipe):
    from bench.claims import run_reweight

    return run_reweight(shapes_pipe, 2)


@pytest.fixture(scope="module")
def photos(shapes_pipe):
    from bench.claims import model_blend, run_photos

    return run_photos(shapes_pipe, 1, model_blend(shapes_pipe), methods=("null-text",), with_plain=False)


def _failures(summary: dict) -> list[str]:
    return [f"{kind}: {s}" for kind, s in summary.items() if kind in SWAPS and not s["passed"]]


@pytest.mark.xfail(strict=True, reason="measured short on the shipped shapes model (world 2, recipe r11, "
                   "2026-12-07): on the bench's 12 generated cases the colour and shape swaps pass (IoU 0.87, 0.74) "
                   "and the background swap reads 0.796 (0.8 needed; one case loses its object), on 36 cases 0.79; "
                   "this test's first 3 include that case (background 0.46); on rendered photos by null-text the "
                   "background swap reads 0.52 (docs/benchmarks.md). Strict: remove the mark when a model passes.")
def test_b_word_swaps_keep_the_layout_and_make_the_change(generated, photos):
    from bench.claims import summarize_swaps

    assert not _failures(summarize_swaps([r["p2p"] for r in generated["records"]])), "generated"
    assert not _failures(summarize_swaps([r["null-text"] for r in photos["records"]])), "rendered photo"


@pytest.mark.xfail(strict=True, reason="measured short on the shipped shapes model (world 2, recipe r11, "
                   "2026-12-07): on this test's first 3 cases the object is made big but the third grows away from "
                   "its place (centroid 19 px, 24 % kept); on the bench's 12 cases 58 % made, 4.4 px, 52 % kept "
                   "(85 %, 3 px, 85 % needed; docs/benchmarks.md). Strict: remove the mark when a model passes.")
def test_c_refinement_makes_the_object_big_in_place(generated):
    """(c) "a red circle …" → "a big red circle …": the size (and background) words take effect, the
    object grows about its own centre and keeps the source object's pixels."""
    from bench.claims import summarize_refine

    refine = summarize_refine([r["refine"] for r in generated["records"]])
    assert refine["changed"] >= THRESHOLDS["detector"], refine
    assert refine["centroid_px_median"] <= THRESHOLDS["centroid_px"], refine
    assert refine["kept_inside"] >= THRESHOLDS["kept_inside"], refine


def test_e_the_big_fader_grows_the_object_at_every_step(reweighted):
    """(e) "big" scaled over ×{−1, 0, 0.5, 1, 1.5, 2}: the object's mean area never shrinks as the
    scale rises, and moves by more than a token amount."""
    assert reweighted["cases"] == 2, reweighted
    assert reweighted["monotonic"]["area"] and reweighted["moves"]["area"], reweighted["mean"]


def test_d_local_blend_keeps_the_background(generated):
    values = [r["blend"][k]["background_db"] for r in generated["records"] for k in r["blend"]]
    assert np.mean(values) >= THRESHOLDS["blend_psnr_db"], values


def test_g_the_shape_words_map_covers_the_object(generated):
    values = [r["attention_iou"] for r in generated["records"]]
    assert np.mean(values) >= THRESHOLDS["attention_iou"], values


def test_f_real_photo_edits_keep_the_background(photos):
    record = photos["records"][0]
    values = [record["blend"][k]["background_db"] for k in record["blend"]]
    assert np.mean(values) >= THRESHOLDS["real_background_db"], record
    assert all(record["blend"][k]["changed"] for k in record["blend"]), record


def test_the_generated_cases_show_a_progress_bar(shapes_pipe, capfd):
    from bench.claims import model_blend, run_generated

    found = run_generated(shapes_pipe, 1, model_blend(shapes_pipe), parts="")
    assert len(found["records"]) == 1
    err = capfd.readouterr().err
    assert "claims: generated cases" in err and "1/1" in err, err


def test_i_an_inverted_generation_is_reconstructed_and_its_swaps_judged(shapes_pipe):
    from bench.claims import GENERATED_SEEDS, noise, swap_from_inversion, uncontrolled
    from bench.shapes import PSNR_GATE
    from editing import edit
    from eval.shapes import detect

    case = make_case(GENERATED_SEEDS[0])
    image = edit(shapes_pipe, uncontrolled([case.prompt] * 2), latents=noise(shapes_pipe, case.seed)).images[0]
    source = Source.from_detection(image, detect(image))
    prompts = swap_prompts(case.prompt, {"colour": case.colour, "shape": case.shape,
                                         "background": case.background}, case.targets)
    judged, images = swap_from_inversion(shapes_pipe, case.prompt, prompts, case.targets, source)
    assert judged["reconstruction_db"] >= PSNR_GATE, judged
    assert len(images) == 1 + len(SWAPS)
    for j, kind in enumerate(SWAPS):  # each judgement is of its own swap's image
        again = judge_swap(kind, case.targets[kind], source, images[1 + j])
        assert {k: v for k, v in judged[kind].items() if k != "background_db"} == \
               {k: v for k, v in again.items() if k != "background_db"}


def test_edit_uses_the_models_blend_defaults_where_the_spec_gives_none(tmp_path):
    import shutil

    from editing import EditSpec, build_controller
    from models.defaults import blend_defaults
    from models.loading import load_pipeline
    from models.tiny import tiny_model_dir

    folder = tmp_path / "tiny-with-defaults"
    shutil.copytree(tiny_model_dir(), folder)
    (folder / "promptedit.json").write_text(json.dumps({"local_blend": {"map_side": 4, "threshold": 0.45}}))
    pipe = load_pipeline(str(folder), device="cpu")
    own = blend_defaults(pipe)
    assert own == BlendDefaults(4, 0.45)
    prompts = ["a cat on a mat", "a dog on a mat"]
    spec = EditSpec(prompts, blend_words=(["cat"], ["dog"]))
    native = pipe.unet.config.sample_size
    blend = build_controller(spec, pipe.tokenizer, 10, native_side=native, model_blend=own).blend
    assert blend.threshold == 0.45 and blend.factor == native // 4
    # the spec's own values win; without either, SPEC's 0.3 and its choice of maps
    given = EditSpec(prompts, blend_words=(["cat"], ["dog"]), blend_threshold=0.2, blend_resolution=native)
    blend = build_controller(given, pipe.tokenizer, 10, native_side=native, model_blend=own).blend
    assert blend.threshold == 0.2 and blend.factor == 1
    blend = build_controller(spec, pipe.tokenizer, 10, native_side=native).blend
    assert blend.threshold == 0.3 and blend.factor is None


def test_guidance_table_has_a_row_per_inversion_and_variant(shapes_pipe):
    """Issue #30's table on one photo at a few steps: every inversion × {p2p, +prox, +guard, +both}."""
    from bench import claims
    from bench.shapes import INVERSIONS

    rows = claims.run_guidance_table(shapes_pipe, 1, steps=6, inner_steps=2)
    assert [(r["inversion"], r["guidance"]) for r in rows] == [
        (label, variant) for label, _ in INVERSIONS for variant, _ in claims.GUIDANCE_VARIANTS]
    by = {(r["inversion"], r["guidance"]): r for r in rows}
    # the direct inversion's source row is the photo's own latent; DDIM's, guided at 7.5 over 6 steps, is not
    assert by[("direct", "p2p")]["reconstruction_db"] > by[("ddim", "p2p")]["reconstruction_db"] + 3
    assert by[("direct", "+prox")]["colour_iou"] != by[("direct", "p2p")]["colour_iou"] or \
        by[("direct", "+prox")]["background_db"] != by[("direct", "p2p")]["background_db"]  # prox changes the edit
    assert all(0 <= r["colour_changed"] <= 1 for r in rows)
    text = "\n".join(claims.print_guidance_table(rows))
    assert "| fixed-point-anchor | +both |" in text
