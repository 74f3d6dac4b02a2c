"""DirectInversion on the tiny models: the offsets put the source row back on the trajectory."""

import numpy as np
import pytest
import torch

from editing import EditSpec, edit
from editing.sampler import denoise
from inversion import Inversion, invert, reconstruct_latent
from inversion.direct import direct_offsets
from models.codec import decode_latents, encode_null, encode_prompts

PHOTO = "assets/chelsea.png"
PROMPT = "a cat sitting on a wooden floor"
TARGET = "a dog sitting on a wooden floor"
STEPS = 12


class _Recorder:
    """A controller that changes nothing and keeps every step's latents."""

    def __init__(self):
        self.latents = []

    def needs_maps(self, layer, pixels, step):
        return False

    def on_attention(self, maps, layer, step):
        return maps

    def on_step_end(self, latents, step):
        self.latents.append(latents.clone())
        return latents


@pytest.fixture(scope="module")
def direct64(tiny_pipe64):
    return invert(tiny_pipe64, PHOTO, PROMPT, method="direct", num_steps=STEPS, progress=False)


def test_offsets_put_the_source_row_on_the_trajectory_at_every_step(tiny_pipe64, direct64):
    inv = direct64
    assert inv.offsets.shape == (STEPS, 1, 4, 16, 24) and inv.offsets.dtype == torch.float64
    assert inv.null_embeddings is None and inv.method == "direct"
    assert inv.offsets.abs().max() > 1e-3  # the guided walk really leaves the trajectory
    recorder = _Recorder()
    cond = encode_prompts(tiny_pipe64, [PROMPT, TARGET])
    denoise(tiny_pipe64, cond, encode_null(tiny_pipe64), inv.x_T, recorder, STEPS, 7.5,
            source_offsets=inv.offsets)
    for i, z in enumerate(recorder.latents):
        assert (z[0] - inv.trajectory[STEPS - i - 1][0]).abs().max() <= 1e-6, f"step {i}"
    # the target row gets no offset: it leaves the trajectory
    assert (recorder.latents[-1][1] - inv.z_0[0]).abs().max() > 1e-2


def test_edit_source_image_is_the_decoded_photo_latent(tiny_pipe64, direct64):
    result = edit(tiny_pipe64, EditSpec([PROMPT, TARGET]), inversion=direct64)
    assert (result.latents[0] - direct64.z_0[0]).abs().max() <= 1e-6
    photo = np.asarray(decode_latents(tiny_pipe64, direct64.z_0)[0], dtype=np.int16)
    assert np.abs(np.asarray(result.images[0], dtype=np.int16) - photo).max() <= 1
    assert (reconstruct_latent(tiny_pipe64, direct64) - direct64.z_0).abs().max() <= 1e-6


def test_offsets_are_the_gap_of_one_guided_step_from_the_trajectory(tiny_pipe64, direct64):
    """Step i's offset, recomputed by hand from z*_{T−i} (the walk restarts from the trajectory)."""
    pipe, inv = tiny_pipe64, direct64
    from models.guidance import guided_noise

    pipe.scheduler.set_timesteps(STEPS)
    i = 5
    t = pipe.scheduler.timesteps[i]
    z = inv.trajectory[STEPS - i]
    landed = pipe.scheduler.step(guided_noise(pipe, z, t, encode_prompts(pipe, [PROMPT]), encode_null(pipe), 7.5),
                                 t, z, eta=0.0).prev_sample
    torch.testing.assert_close(inv.offsets[i], inv.trajectory[STEPS - i - 1] - landed, rtol=0, atol=1e-12)


def test_without_injection_the_target_is_the_uncorrected_walk(tiny_pipe64, direct64):
    """Identical prompts and no attention injection: the source row is the photo, and the target
    row (which gets no offset, as in the authors' code) is plain guided sampling from x_T."""
    spec = EditSpec([PROMPT, PROMPT], cross_replace_steps=0.0, self_replace_steps=0.0)
    result = edit(tiny_pipe64, spec, inversion=direct64)
    plain = Inversion(direct64.trajectory, None, PROMPT, "ddim", STEPS, 7.5)
    uncorrected = edit(tiny_pipe64, spec, inversion=plain)
    torch.testing.assert_close(result.latents[1], uncorrected.latents[1], rtol=0, atol=1e-10)
    assert (result.latents[0] - direct64.z_0[0]).abs().max() <= 1e-6


def test_batched_equals_one_by_one(tiny_pipe):
    from PIL import Image, ImageOps

    photo = Image.open(PHOTO).convert("RGB")
    photos = [photo, ImageOps.mirror(photo)]
    both = invert(tiny_pipe, photos, PROMPT, method="direct", num_steps=6, progress=False)
    for image, inv in zip(photos, both):
        alone = invert(tiny_pipe, image, PROMPT, method="direct", num_steps=6, progress=False)
        torch.testing.assert_close(inv.offsets, alone.offsets, rtol=0, atol=1e-4)
        torch.testing.assert_close(inv.trajectory, alone.trajectory, rtol=0, atol=1e-4)


def test_cache_round_trip_keeps_offsets_and_never_serves_another_method(tiny_pipe, tmp_path):
    nti = invert(tiny_pipe, PHOTO, PROMPT, method="null-text", num_steps=4, num_inner_steps=1, progress=False,
                 cache_dir=tmp_path)
    first = invert(tiny_pipe, PHOTO, PROMPT, method="direct", num_steps=4, progress=False, cache_dir=tmp_path)
    assert not first.stats["cache_hit"] and nti.offsets is None
    again = invert(tiny_pipe, PHOTO, PROMPT, method="direct", num_steps=4, progress=False, cache_dir=tmp_path)
    assert again.stats["cache_hit"] and again.method == "direct"
    assert torch.equal(again.offsets, first.offsets) and again.null_embeddings is None
    other_w = invert(tiny_pipe, PHOTO, PROMPT, method="direct", num_steps=4, guidance_scale=3.0, progress=False,
                     cache_dir=tmp_path)
    assert not other_w.stats["cache_hit"]  # the offsets depend on w


def test_saved_offsets_of_the_wrong_length_are_refused(tiny_pipe, tmp_path):
    from inversion import InversionCacheError

    inv = invert(tiny_pipe, PHOTO, PROMPT, method="direct", num_steps=3, progress=False)
    inv.offsets = inv.offsets[:2]
    path = inv.save(tmp_path / "bad.safetensors")
    with pytest.raises(InversionCacheError, match="3 steps"):
        Inversion.load(path)


def test_direct_costs_one_guided_pass_after_ddim(tiny_pipe):
    inv = invert(tiny_pipe, PHOTO, PROMPT, method="direct", num_steps=5, progress=False)
    assert inv.stats["unet_forward"] == 5 + 5 and inv.stats["unet_backward"] == 0  # inversion + one batch-2 pass


@pytest.mark.parametrize("fixture", ["tiny_xl_pipe", "tiny_v_pipe"])
def test_xl_and_v_prediction(request, fixture):
    pipe = request.getfixturevalue(fixture)
    inv = invert(pipe, PHOTO, PROMPT, method="direct", num_steps=6, progress=False)
    result = edit(pipe, EditSpec([PROMPT, TARGET]), inversion=inv)
    assert (result.latents[0] - inv.z_0[0].to(result.latents.dtype)).abs().max() <= 1e-4
    assert (result.latents[1] - inv.z_0[0]).abs().max() > 1e-3


def test_direct_offsets_follow_the_models_dtype(tiny_pipe):
    cond = encode_prompts(tiny_pipe, [PROMPT])
    trajectory = torch.randn(4, 1, 4, 16, 16)
    offsets = direct_offsets(tiny_pipe, trajectory, cond, encode_null(tiny_pipe), 3, 7.5)
    assert offsets.shape == (3, 1, 4, 16, 16) and offsets.dtype == torch.float32
