"""ProxEdit's proximal guidance and the latent guard: hand-computed tensors, then edits on tiny."""

import pytest
import torch

from editing import EditSpec, EditSpecError, edit
from editing.proximal import Proximal, apply_guard, guard_keep, proximal_delta
from inversion import invert

PHOTO = "assets/chelsea.png"
PROMPT = "a cat sitting on a wooden floor"
TARGET = "a dog sitting on a wooden floor"


def test_l0_zeroes_within_tau_and_shrinks_the_rest():
    delta = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 3.0])
    out, tau = proximal_delta(delta, Proximal("l0", -1.0))  # Q ≤ 0: τ = −Q = 1
    assert tau.item() == 1.0
    assert out.tolist() == [-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 2.0]


def test_l1_follows_the_authors_two_where_steps():
    delta = torch.tensor([-3.0, -1.5, -0.5, 0.0, 0.5, 1.5, 2.5])
    out, _ = proximal_delta(delta, Proximal("l1", -1.0))
    # after l0: [-2, -0.5, 0, 0, 0, 0.5, 1.5]; positive: −1, and back +1 if that went negative;
    # negative: +1 (so -0.5 becomes 0.5)
    assert out.tolist() == [-1.0, 0.5, 0.0, 0.0, 0.0, 0.5, 0.5]


def test_quantile_is_taken_over_the_whole_batch():
    delta = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 3.0)])  # two rows
    out, tau = proximal_delta(delta, Proximal("l0", 0.5))
    assert tau.item() == pytest.approx(2.0)  # the median of four 1s and four 3s
    assert torch.equal(out[0], torch.zeros(1, 2, 2)) and torch.allclose(out[1], torch.full((1, 2, 2), 1.0))


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="l0, l1"):
        proximal_delta(torch.ones(3), Proximal("l2", 0.5))
    with pytest.raises(EditSpecError, match="l0, l1"):
        EditSpec([PROMPT, TARGET], prox="l2")


def test_guard_keep_dilates_the_region_per_channel():
    delta = torch.zeros(1, 2, 5, 5)
    delta[0, 0, 2, 2] = 5.0
    keep = guard_keep(delta, torch.tensor(1.0), radius=1)
    assert keep[0, 0, 1:4, 1:4].sum() == 0 and keep[0, 0].sum() == 25 - 9
    assert keep[0, 1].sum() == 25  # the other channel has no region
    assert guard_keep(delta, torch.tensor(1.0), radius=0)[0, 0].sum() == 24


def test_apply_guard_puts_kept_pixels_on_the_target():
    z, target = torch.randn(2, 4, 3, 3, dtype=torch.float64), torch.randn(1, 4, 3, 3, dtype=torch.float64)
    keep = (torch.rand(2, 4, 3, 3) > 0.5).double()
    out = apply_guard(z, target, keep, 1.0)
    assert torch.allclose(out[keep == 1], target.expand_as(z)[keep == 1], atol=1e-12)
    assert torch.equal(out[keep == 0], z[keep == 0])


@pytest.fixture(scope="module")
def npi(tiny_pipe64):
    return invert(tiny_pipe64, PHOTO, PROMPT, method="negative-prompt", num_steps=8, progress=False)


@pytest.fixture(scope="module")
def nti(tiny_pipe64):
    return invert(tiny_pipe64, PHOTO, PROMPT, method="null-text", num_steps=8, num_inner_steps=2, progress=False)


def test_zero_threshold_is_plain_guidance(tiny_pipe64, nti):
    plain = edit(tiny_pipe64, EditSpec([PROMPT, TARGET]), inversion=nti)
    prox = edit(tiny_pipe64, EditSpec([PROMPT, TARGET], prox="l0", prox_quantile=0.0), inversion=nti)
    torch.testing.assert_close(prox.latents, plain.latents, rtol=0, atol=1e-12)


def test_full_quantile_leaves_no_guidance_so_targets_equal_the_source(tiny_pipe64, nti):
    result = edit(tiny_pipe64, EditSpec([PROMPT, TARGET, "a cat sitting on a stone floor"], prox="l0",
                                        prox_quantile=1.0), inversion=nti)
    torch.testing.assert_close(result.latents[1:], result.latents[:1].expand(2, -1, -1, -1), rtol=0, atol=1e-10)
    plain = edit(tiny_pipe64, EditSpec([PROMPT, TARGET]), inversion=nti)
    assert (plain.latents[1] - plain.latents[0]).abs().max() > 1e-3


def test_guard_with_nothing_kept_puts_every_row_on_the_trajectory(tiny_pipe64, npi):
    # Q = 1: no guidance survives, so the guard's region is empty and it acts everywhere
    spec = EditSpec([PROMPT, TARGET], prox="l0", prox_quantile=1.0, latent_guard=1000)
    result = edit(tiny_pipe64, spec, inversion=npi)
    torch.testing.assert_close(result.latents, npi.z_0.expand(2, -1, -1, -1), rtol=0, atol=1e-10)


def test_guard_keeps_only_outside_the_region_and_only_below_its_timestep(tiny_pipe64, npi):
    base = EditSpec([PROMPT, TARGET], prox="l0", prox_quantile=0.75)
    prox = edit(tiny_pipe64, base, inversion=npi).latents
    guarded = edit(tiny_pipe64, EditSpec([PROMPT, TARGET], prox="l0", latent_guard=1000), inversion=npi).latents
    on_z0 = (guarded[1] - npi.z_0[0]).abs() < 1e-10
    assert 0.2 < on_z0.double().mean() < 1.0  # part of the target row is put back, not all of it
    assert (prox[1] - npi.z_0[0]).abs().lt(1e-10).double().mean() < 0.01
    never = edit(tiny_pipe64, EditSpec([PROMPT, TARGET], prox="l0", latent_guard=1), inversion=npi).latents
    torch.testing.assert_close(never, prox, rtol=0, atol=0)  # no timestep is below 1


def test_guard_alone_uses_the_l0_region_and_keeps_plain_guidance(tiny_pipe64, npi):
    plain = edit(tiny_pipe64, EditSpec([PROMPT, TARGET]), inversion=npi).latents
    alone = edit(tiny_pipe64, EditSpec([PROMPT, TARGET], latent_guard=1000), inversion=npi).latents
    on_z0 = (alone[1] - npi.z_0[0]).abs() < 1e-10
    assert 0.2 < on_z0.double().mean() < 1.0 and (plain[1] - npi.z_0[0]).abs().lt(1e-10).double().mean() < 0.01
    # with nothing kept by the l0 rule (Q = 1), the guard acts everywhere, guidance or not
    everywhere = edit(tiny_pipe64, EditSpec([PROMPT, TARGET], latent_guard=1000, prox_quantile=1.0), inversion=npi)
    torch.testing.assert_close(everywhere.latents, npi.z_0.expand(2, -1, -1, -1), rtol=0, atol=1e-10)
    # a guard that never acts leaves plain guidance exactly as it was
    never = edit(tiny_pipe64, EditSpec([PROMPT, TARGET], latent_guard=1), inversion=npi).latents
    torch.testing.assert_close(never, plain, rtol=0, atol=0)


def test_guard_needs_an_inversion(tiny_pipe):
    with pytest.raises(EditSpecError, match="inversion"):
        edit(tiny_pipe, EditSpec([PROMPT, TARGET], prox="l0", latent_guard=400), num_steps=2,
             generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bad", [{"prox_quantile": 1.5}, {"prox_quantile": float("nan")}, {"latent_guard": -1},
                                 {"latent_guard": 2.5}, {"guard_radius": -1}, {"guard_rate": 2}])
def test_bad_guidance_options_are_refused(bad):
    with pytest.raises(EditSpecError):
        EditSpec([PROMPT, TARGET], prox="l0", **bad)


@pytest.mark.parametrize("fixture", ["tiny_xl_pipe", "tiny_v_pipe"])
def test_xl_and_v_prediction_run_both_options(request, fixture):
    pipe = request.getfixturevalue(fixture)
    inv = invert(pipe, PHOTO, PROMPT, method="negative-prompt", num_steps=4, progress=False)
    full = edit(pipe, EditSpec([PROMPT, TARGET], prox="l1", prox_quantile=1.0, latent_guard=1000), inversion=inv)
    torch.testing.assert_close(full.latents, inv.z_0.expand(2, -1, -1, -1).to(full.latents.dtype), rtol=0, atol=1e-5)
