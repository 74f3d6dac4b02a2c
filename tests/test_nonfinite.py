"""Non-finite numbers never become a saved image (issue #33, point 6): a cache file holding NaN or
tensors of the wrong shape is recomputed; a latent that turns NaN or infinite during inversion,
editing or decoding stops the run with one line naming the stage and step and `--dtype fp32`."""

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from editing import EditSpec, edit
from inversion import Inversion, invert
from inversion.invert import reconstruct_latent
from inversion.result import load_cached
from models.codec import NonFiniteError, check_finite, decode_latents

ROOT = Path(__file__).resolve().parents[1]
PHOTO = str(ROOT / "assets" / "red_circle.png")
PROMPT = "a red circle"
FAST = dict(num_steps=3, num_inner_steps=1, progress=False, size=64)


def _rewrite(path: Path, change) -> None:
    """Load the safetensors file, let ``change(tensors)`` alter them, save them back (metadata kept)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def _finite_file(path: Path) -> bool:
    with safe_open(str(path), framework="pt") as f:
        return all(bool(torch.isfinite(f.get_tensor(k)).all()) for k in f.keys())


def _not_black(images) -> bool:
    return all(np.asarray(im).max() > 0 for im in images)


@contextmanager
def nan_unet(pipe, from_call: int):
    """The UNet's output is NaN from its ``from_call``-th forward call on (1-based)."""
    calls = [0]

    def hook(module, args, out):
        calls[0] += 1
        if calls[0] >= from_call:
            return type(out)(sample=torch.full_like(out.sample, float("nan")))
        return out

    handle = pipe.unet.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


# ------------------------------------------------------------------ the cache
@pytest.mark.parametrize("method, tensor", [("null-text", "trajectory"), ("null-text", "null_embeddings"),
                                            ("direct", "offsets"), ("ddim", "trajectory")])
def test_nan_cache_entry_is_recomputed(tiny_pipe, tmp_path, caplog, method, tensor):
    kw = dict(FAST, method=method, cache_dir=tmp_path)
    first = invert(tiny_pipe, PHOTO, PROMPT, **kw)
    (path,) = tmp_path.glob("*.safetensors")

    def poison(tensors):
        tensors[tensor][-1].view(-1)[3] = float("nan")

    _rewrite(path, poison)
    with caplog.at_level(logging.WARNING, logger="inversion.result"):
        again = invert(tiny_pipe, PHOTO, PROMPT, **kw)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and path.name in warnings[0].getMessage() and "NaN" in warnings[0].getMessage()
    assert again.stats["cache_hit"] is False
    assert torch.equal(again.trajectory, first.trajectory) and bool(torch.isfinite(again.x_T).all())
    assert _finite_file(path)  # the fresh result replaced it
    assert invert(tiny_pipe, PHOTO, PROMPT, **kw).stats["cache_hit"] is True
    result = edit(tiny_pipe, EditSpec([PROMPT, "a blue circle"]), inversion=again)
    assert bool(torch.isfinite(result.latents).all()) and _not_black(result.images)


def test_infinite_cache_entry_is_recomputed(tiny_pipe, tmp_path, caplog):
    kw = dict(FAST, cache_dir=tmp_path)
    invert(tiny_pipe, PHOTO, PROMPT, **kw)
    (path,) = tmp_path.glob("*.safetensors")
    _rewrite(path, lambda t: t["null_embeddings"][0].view(-1).__setitem__(0, float("inf")))
    with caplog.at_level(logging.WARNING):
        again = invert(tiny_pipe, PHOTO, PROMPT, **kw)
    assert again.stats["cache_hit"] is False and "infinite" in caplog.text and _finite_file(path)


WRONG_SHAPES = {
    "latent side": lambda t: t.__setitem__("trajectory", t["trajectory"][..., :4]),
    "latent channels": lambda t: t.__setitem__("trajectory", t["trajectory"][:, :, :3]),
    "trajectory length": lambda t: t.__setitem__("trajectory", t["trajectory"][:-1]),
    "embedding width": lambda t: t.__setitem__("null_embeddings", t["null_embeddings"][..., :16]),
    "embedding count": lambda t: t.__setitem__("null_embeddings", t["null_embeddings"][:2]),
    "embedding rank": lambda t: t.__setitem__("null_embeddings", t["null_embeddings"][:, 0]),
}


@pytest.mark.parametrize("damage", list(WRONG_SHAPES))
def test_wrong_shape_cache_entry_is_recomputed(tiny_pipe, tmp_path, caplog, damage):
    kw = dict(FAST, cache_dir=tmp_path)
    first = invert(tiny_pipe, PHOTO, PROMPT, **kw)
    (path,) = tmp_path.glob("*.safetensors")
    _rewrite(path, WRONG_SHAPES[damage])
    with caplog.at_level(logging.WARNING, logger="inversion.result"):
        again = invert(tiny_pipe, PHOTO, PROMPT, **kw)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and path.name in warnings[0], warnings
    assert again.stats["cache_hit"] is False
    assert again.trajectory.shape == first.trajectory.shape == (4, 1, 4, 8, 8)
    assert Inversion.load(path).null_embeddings.shape == (3, 1, 77, 32)  # rewritten whole


def test_latents_of_another_size_are_refused_by_load_cached(tiny_pipe, tmp_path, caplog):
    invert(tiny_pipe, PHOTO, PROMPT, **dict(FAST, cache_dir=tmp_path))
    (path,) = tmp_path.glob("*.safetensors")
    key_prefix = path.stem.split("-", 1)[1]  # cache_path keeps the key's first 32 characters
    assert load_cached(tmp_path, key_prefix, {"trajectory": (1, 4, 8, 8)}) is not None
    with caplog.at_level(logging.WARNING):
        assert load_cached(tmp_path, key_prefix, {"trajectory": (1, 4, 16, 16)}) is None
    assert "not [4, 1, 4, 16, 16]" in caplog.text


# ------------------------------------------------------------------ during inversion
def _assert_message(exc: NonFiniteError, *parts: str) -> None:
    text = str(exc)
    assert "\n" not in text and "--dtype fp32" in text, text
    for part in parts:
        assert part in text, text


@pytest.mark.parametrize("method, options, from_call, step, stage", [
    ("ddim", {}, 2, 2, "DDIM"),
    ("negative-prompt", {}, 3, 3, "DDIM"),
    ("null-text", {"num_inner_steps": 0}, 3 + 2 * 1 + 1, 2, "null-text"),  # DDIM 3; then 2 per step
    ("direct", {}, 3 + 2, 2, "direct offsets"),
    ("fixed-point", {"fixed_point_steps": 0}, 2, 2, "fixed-point"),
])
def test_nan_during_inversion_names_stage_and_step(tiny_pipe, tmp_path, method, options, from_call, step, stage):
    kw = dict(FAST, method=method, cache_dir=tmp_path, **options)
    with nan_unet(tiny_pipe, from_call), pytest.raises(NonFiniteError) as caught:
        invert(tiny_pipe, PHOTO, PROMPT, **kw)
    _assert_message(caught.value, f"inversion step {step} of 3", f"({stage})", "NaN")
    assert not list(tmp_path.iterdir())  # nothing cached


def test_finite_runs_are_unchanged_by_the_checks(tiny_pipe, monkeypatch):
    """The checks only read: the same inversion and edit with check_finite made a no-op agree
    bit for bit."""
    import editing.sampler
    import inversion.ddim
    import inversion.null_text

    spec = EditSpec([PROMPT, "a blue circle"])
    checked = invert(tiny_pipe, PHOTO, PROMPT, **FAST)
    edited = edit(tiny_pipe, spec, inversion=checked)
    for module in (inversion.ddim, inversion.null_text, editing.sampler):
        monkeypatch.setattr(module, "check_finite", lambda *a, **k: None)
    plain = invert(tiny_pipe, PHOTO, PROMPT, **FAST)
    assert torch.equal(plain.trajectory, checked.trajectory)
    assert torch.equal(plain.null_embeddings, checked.null_embeddings)
    assert torch.equal(edit(tiny_pipe, spec, inversion=plain).latents, edited.latents)


# ------------------------------------------------------------------ during editing and decoding
@pytest.fixture(scope="module")
def inverted(tiny_pipe):
    return invert(tiny_pipe, PHOTO, PROMPT, **FAST)


def test_nan_during_editing_names_step(tiny_pipe, inverted):
    with nan_unet(tiny_pipe, 2), pytest.raises(NonFiniteError) as caught:
        edit(tiny_pipe, EditSpec([PROMPT, "a blue circle"]), inversion=inverted)
    _assert_message(caught.value, "editing step 2 of 3", "NaN")


def test_nan_during_reconstruction_names_step(tiny_pipe, inverted):
    with nan_unet(tiny_pipe, 1), pytest.raises(NonFiniteError) as caught:
        reconstruct_latent(tiny_pipe, inverted)
    _assert_message(caught.value, "reconstruction step 1 of 3")


def test_infinite_latent_in_an_inversion_record_stops_the_edit(tiny_pipe, inverted):
    broken = Inversion(**{**inverted.__dict__, "trajectory": inverted.trajectory.clone()})
    broken.trajectory[-1].view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteError, match="editing step 1 of 3"):
        edit(tiny_pipe, EditSpec([PROMPT, "a blue circle"]), inversion=broken)


def test_decoding_refuses_non_finite(tiny_pipe, inverted):
    latent = inverted.z_0.clone()
    assert _not_black(decode_latents(tiny_pipe, latent))
    latent.view(-1)[5] = float("nan")
    with pytest.raises(NonFiniteError) as caught:
        decode_latents(tiny_pipe, latent)
    _assert_message(caught.value, "during decoding")
    # the decoder itself overflowing: a finite latent, a NaN image
    handle = tiny_pipe.vae.decoder.register_forward_hook(lambda m, a, out: torch.full_like(out, float("nan")))
    try:
        with pytest.raises(NonFiniteError) as caught:
            decode_latents(tiny_pipe, inverted.z_0)
    finally:
        handle.remove()
    _assert_message(caught.value, "the decoded image became NaN during decoding")


def test_check_finite_message():
    check_finite(torch.ones(3), "editing", 1, 2)
    with pytest.raises(NonFiniteError) as caught:
        check_finite(torch.tensor([1.0, float("-inf")]), "inversion", 12, 50, "null-text")
    assert str(caught.value) == ("the latent became infinite at inversion step 12 of 50 (null-text); this usually "
                                 "means float16 overflowed: run again with --dtype fp32")


# ------------------------------------------------------------------ through the command
def _cli_args(tmp_path, out):
    return [PHOTO, "--src", PROMPT, "--tgt", "a blue circle", "--model", "tiny", "--steps", "2", "--inner-steps", "1",
            "--size", "64", "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--quiet"]


def test_cli_recomputes_a_nan_cache_entry(tmp_path, capsys):
    from pipelines.edit_real import main

    assert main(_cli_args(tmp_path, tmp_path / "first")) == 0
    (path,) = (tmp_path / "cache").glob("*.safetensors")
    _rewrite(path, lambda t: t["trajectory"].fill_(float("nan")))
    capsys.readouterr()
    assert main(_cli_args(tmp_path, tmp_path / "second")) == 0
    run = json.loads((tmp_path / "second" / "run.json").read_text())
    assert run["inversion"]["cache_hit"] is False
    assert _finite_file(path)
    for name in ("reconstruction.png", "edit_1.png"):
        with Image.open(tmp_path / "second" / name) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
        assert np.isfinite(pixels).all() and pixels.max() > 0, name


def test_cli_nan_during_editing_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    import editing.sampler
    from pipelines.edit_real import main

    real = editing.sampler.noise_pair
    calls = [0]

    def poisoned(*args, **kwargs):
        calls[0] += 1
        out_uncond, out_cond = real(*args, **kwargs)
        return (out_uncond, out_cond) if calls[0] < 2 else (out_uncond * float("nan"), out_cond)

    monkeypatch.setattr(editing.sampler, "noise_pair", poisoned)
    out = tmp_path / "out"
    code = main(_cli_args(tmp_path, out))
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "editing step 2 of 2" in lines[0] and "--dtype fp32" in lines[0]
    assert not out.exists() or not list(out.glob("*.png"))  # nothing published


def test_sdxl_cache_shapes_fit_and_nan_pooled_is_recomputed(tiny_xl_pipe, tmp_path, caplog):
    kw = dict(FAST, method="negative-prompt", cache_dir=tmp_path)
    first = invert(tiny_xl_pipe, PHOTO, PROMPT, **kw)
    assert invert(tiny_xl_pipe, PHOTO, PROMPT, **kw).stats["cache_hit"] is True  # its own shapes pass
    (path,) = tmp_path.glob("*.safetensors")
    _rewrite(path, lambda t: t["null_pooled"][1].view(-1).__setitem__(0, float("nan")))
    with caplog.at_level(logging.WARNING):
        again = invert(tiny_xl_pipe, PHOTO, PROMPT, **kw)
    assert again.stats["cache_hit"] is False and "null_pooled" in caplog.text and _finite_file(path)
    assert torch.equal(again.null_pooled, first.null_pooled)
