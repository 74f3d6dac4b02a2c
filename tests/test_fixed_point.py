"""Fixed-point inversion (SPDInv) and DCI's anchor on the tiny models."""

import pytest
import torch
from PIL import Image, ImageOps

from editing import EditSpec, edit
from inversion import invert, reconstruct_latent
from inversion.fixed_point import THRESHOLD, anchored, fixed_point_inversion
from models.codec import encode_image, encode_prompts

PHOTO = "assets/chelsea.png"
PROMPT = "a cat sitting on a wooden floor"
STEPS = 12


def _err(inv, pipe):
    return (reconstruct_latent(pipe, inv) - inv.z_0.to(pipe.unet.dtype)).pow(2).mean().item()


@pytest.fixture(scope="module")
def fixed64(tiny_pipe64):
    return invert(tiny_pipe64, PHOTO, PROMPT, method="fixed-point", num_steps=STEPS, fixed_point_steps=50,
                  progress=False)


def test_residual_below_threshold_wherever_the_optimizer_stopped_early(fixed64):
    residual, iterations = fixed64.stats["residual"], fixed64.stats["iterations"]
    assert len(residual) == len(iterations) == STEPS
    assert all(1 <= n < 50 for n in iterations)  # every step converged before K
    assert all(r < THRESHOLD for r in residual)
    assert any(n > 1 for n in iterations)  # and some needed more than one update


def test_reconstruction_beats_plain_ddim_inversion_under_the_same_guidance(tiny_pipe64, fixed64):
    """Negative-prompt inversion is plain DDIM inversion under the same (negative-prompt) guidance."""
    npi = invert(tiny_pipe64, PHOTO, PROMPT, method="negative-prompt", num_steps=STEPS, progress=False)
    fixed = _err(fixed64, tiny_pipe64)
    assert fixed * 2 < _err(npi, tiny_pipe64)
    # the edit uses the prompt as negative: the source row's guided step is the conditional one
    assert torch.equal(fixed64.null_embeddings[0], encode_prompts(tiny_pipe64, [PROMPT])[0:1].to(torch.float64))
    result = edit(tiny_pipe64, EditSpec([PROMPT, "a dog sitting on a wooden floor"]), inversion=fixed64)
    assert (result.latents[0] - reconstruct_latent(tiny_pipe64, fixed64)[0]).abs().max() <= 1e-8


def test_no_refinement_is_plain_ddim_inversion(tiny_pipe64):
    plain = invert(tiny_pipe64, PHOTO, PROMPT, method="ddim", num_steps=5, progress=False)
    none = invert(tiny_pipe64, PHOTO, PROMPT, method="fixed-point", num_steps=5, fixed_point_steps=0, progress=False)
    torch.testing.assert_close(none.trajectory, plain.trajectory, rtol=0, atol=1e-12)
    assert none.stats["unet_backward"] == 0 and none.stats["iterations"] == [0] * 5


def test_counts_forward_and_backward(tiny_pipe):
    inv = invert(tiny_pipe, PHOTO, PROMPT, method="fixed-point", num_steps=6, fixed_point_steps=3, progress=False)
    done = sum(inv.stats["iterations"])
    assert inv.stats["unet_backward"] == done
    assert inv.stats["unet_forward"] == 6 + done  # the guess, then one forward per AdamW step


def test_weights_stay_frozen_and_flags_return_also_after_an_exception(tiny_pipe):
    unet = tiny_pipe.unet
    first = next(unet.parameters())
    flags = [p.requires_grad for p in unet.parameters()]
    first.requires_grad_(False)  # a flag the caller set stays as it was

    def boom(stage, done, total):
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            invert(tiny_pipe, PHOTO, PROMPT, method="fixed-point", num_steps=4, progress=False, on_step=boom)
        inv = invert(tiny_pipe, PHOTO, PROMPT, method="fixed-point", num_steps=4, progress=False)
        assert sum(inv.stats["iterations"]) > 0
        assert all(p.grad is None for p in unet.parameters())
        assert not first.requires_grad
        assert [p.requires_grad for p in unet.parameters()][1:] == flags[1:]
        assert not inv.trajectory.requires_grad
    finally:
        first.requires_grad_(flags[0])


def test_batched_equals_one_by_one_with_own_early_stop(tiny_pipe64):
    photo = Image.open(PHOTO).convert("RGB")
    photos = [photo, ImageOps.flip(photo)]
    both = invert(tiny_pipe64, photos, PROMPT, method="fixed-point", num_steps=5, progress=False)
    for image, inv in zip(photos, both):
        alone = invert(tiny_pipe64, image, PROMPT, method="fixed-point", num_steps=5, progress=False)
        assert inv.stats["iterations"] == alone.stats["iterations"]
        torch.testing.assert_close(inv.trajectory, alone.trajectory, rtol=0, atol=1e-10)
    assert both[0].stats["iterations"] != both[1].stats["iterations"]  # each stopped on its own


def test_anchor_is_a_unit_step_toward_the_photo():
    eps = torch.tensor([[[[3.0, 0.0]]], [[[0.0, 0.0]]]], requires_grad=True)
    photo = torch.tensor([[[[0.0, 0.0]]], [[[0.0, 4.0]]]])
    out = anchored(eps, photo, 2.0)
    # per item: eps − 2 (eps − z0)/‖eps − z0‖
    torch.testing.assert_close(out.detach(), torch.tensor([[[[1.0, 0.0]]], [[[0.0, 2.0]]]]))
    out.sum().backward()
    assert torch.equal(eps.grad, torch.ones_like(eps))  # the correction is not differentiated
    assert anchored(eps, photo, 0.0) is eps


def test_anchor_changes_the_trajectory_and_defaults_to_five_steps(tiny_pipe, tmp_path):
    spd = invert(tiny_pipe, PHOTO, PROMPT, method="fixed-point", num_steps=4, progress=False, cache_dir=tmp_path)
    dci = invert(tiny_pipe, PHOTO, PROMPT, method="fixed-point", num_steps=4, fixed_point_anchor=2.0, progress=False,
                 cache_dir=tmp_path)
    assert not dci.stats["cache_hit"]  # the anchor is part of the key
    assert max(dci.stats["iterations"]) <= 5 and (dci.trajectory - spd.trajectory).abs().max() > 1e-4


def test_fixed_point_direct_call_counts(tiny_pipe):
    latent = encode_image(tiny_pipe, Image.open(PHOTO).convert("RGB").resize((128, 128)))
    counts = {}
    trajectory, stats = fixed_point_inversion(tiny_pipe, latent, encode_prompts(tiny_pipe, [PROMPT]), 3, max_steps=2,
                                              counts=counts)
    assert trajectory.shape == (4, 1, 4, 16, 16) and counts["unet_backward"] == sum(stats["iterations"][i][0] for i in range(3))


@pytest.mark.parametrize("bad", [{"fixed_point_steps": -1}, {"fixed_point_steps": 2.5}, {"fixed_point_anchor": -1},
                                 {"fixed_point_anchor": float("nan")}])
def test_bad_fixed_point_options_are_refused(tiny_pipe, bad):
    with pytest.raises(ValueError, match="fixed_point"):
        invert(tiny_pipe, PHOTO, PROMPT, method="fixed-point", num_steps=2, progress=False, **bad)


@pytest.mark.parametrize("fixture", ["tiny_xl_pipe", "tiny_v_pipe"])
def test_xl_and_v_prediction_reconstruct_better_than_negative_prompt(request, fixture):
    pipe = request.getfixturevalue(fixture)
    fixed = invert(pipe, PHOTO, PROMPT, method="fixed-point", num_steps=6, fixed_point_steps=40, progress=False)
    npi = invert(pipe, PHOTO, PROMPT, method="negative-prompt", num_steps=6, progress=False)
    assert _err(fixed, pipe) < _err(npi, pipe)
