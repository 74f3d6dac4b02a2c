"""Prompt-to-Prompt on the tiny model: what is injected, where, and what it changes."""

import pytest
import torch

from editing import EditSpec, attention_pictures, build_controller, edit
from editing.align import replacement_mapper, refinement_mapper, word_token_indices
from editing.processor import controlled_attention
from editing.sampler import denoise
from models.codec import encode_text

STEPS = 10


@pytest.fixture(scope="module")
def start():
    return torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))


class Recorder:
    """Wraps a controller and records, per call, the maps before and after it acted."""

    def __init__(self, inner, everywhere=False):
        self.inner = inner
        self.everywhere = everywhere
        self.calls = []
        self.latents = []

    def needs_maps(self, layer, pixels, step):
        return self.everywhere or self.inner.needs_maps(layer, pixels, step)

    def on_attention(self, maps, layer, step):
        before = maps.clone()
        after = self.inner.on_attention(maps, layer, step) if self.inner.needs_maps(layer, maps.shape[2], step) else maps
        self.calls.append((layer, step, before, after.clone()))
        return after

    def on_step_end(self, latents, step):
        before = latents.clone()
        after = self.inner.on_step_end(latents, step)
        self.latents.append((step, before, after.clone()))
        return after


def run(pipe, spec, start, controller, steps=STEPS):
    cond = encode_text(pipe, spec.prompts)
    return denoise(pipe, cond, encode_text(pipe, [""]), start, controller, steps, 7.5)[0]


def test_no_control_matches_diffusers_pipeline(tiny_pipe, start):
    spec = EditSpec(["a cat sitting on a bench", "a dog sitting on a bench"], cross_replace_steps=0, self_replace_steps=0)
    result = edit(tiny_pipe, spec, latents=start, num_steps=50)
    for k, prompt in enumerate(spec.prompts):
        plain = tiny_pipe(prompt, latents=start.clone(), num_inference_steps=50, guidance_scale=7.5, output_type="latent").images
        assert (result.latents[k] - plain[0]).abs().max() <= 1e-4
    assert result.stats["explicit_attention_calls"] == 0  # nothing edited: all fused


def test_identical_prompts_full_injection_keep_the_source(tiny_pipe, start):
    spec = EditSpec(["a cat sitting on a bench"] * 2, cross_replace_steps=1.0, self_replace_steps=1.0)
    result = edit(tiny_pipe, spec, latents=start, num_steps=STEPS)
    assert (result.latents[1] - result.latents[0]).abs().max() <= 1e-5
    assert result.stats["explicit_attention_calls"] > 0


def test_word_swap_injects_mapped_maps_inside_the_window(tiny_pipe, start):
    spec = EditSpec(
        ["a cat sitting on a bench", "a hippopotamus sitting on a bench"],
        cross_replace_steps={"default_": 0.6, "hippopotamus": 0.3},
        self_replace_steps=0.0,
    )
    rec = Recorder(build_controller(spec, tiny_pipe.tokenizer, STEPS), everywhere=True)
    run(tiny_pipe, spec, start, rec)
    mapper = replacement_mapper(*spec.prompts, tiny_pipe.tokenizer)
    word = word_token_indices(spec.prompts[1], "hippopotamus", tiny_pipe.tokenizer)
    other = [j for j in range(77) if j not in word]
    default_end, word_end = int(0.6 * (STEPS + 1)), int(0.3 * (STEPS + 1))
    checked = 0
    for layer, step, before, after in rec.calls:
        if not layer.is_cross:
            torch.testing.assert_close(after, before, rtol=0, atol=0)
            continue
        mapped = torch.einsum("hpi,ij->hpj", before[0], mapper)
        for cols, end in ((other, default_end), (word, word_end)):
            expected = mapped[..., cols] if step < end else before[1][..., cols]
            torch.testing.assert_close(after[1][..., cols], expected, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)  # the source is never edited
        checked += 1
    assert checked == STEPS * 7  # 7 cross layers in the tiny UNet, every step checked


def test_refine_copies_aligned_tokens_and_keeps_new_ones(tiny_pipe, start):
    spec = EditSpec(["a cat sitting on a bench", "a fat cat sitting on a wooden bench"], cross_replace_steps=0.5)
    assert spec.resolved_mode() == "refine"
    rec = Recorder(build_controller(spec, tiny_pipe.tokenizer, STEPS), everywhere=True)
    run(tiny_pipe, spec, start, rec)
    mapper, alphas = refinement_mapper(*spec.prompts, tiny_pipe.tokenizer)
    new = [j for j in range(77) if alphas[j] == 0]
    assert new == [2, 7]  # "fat", "wooden"
    end = int(0.5 * (STEPS + 1))
    for layer, step, before, after in rec.calls:
        if not layer.is_cross:
            continue
        if step < end:
            aligned = [j for j in range(77) if alphas[j] == 1]
            torch.testing.assert_close(after[1][..., aligned], before[0][..., mapper[aligned]], rtol=0, atol=0)
            torch.testing.assert_close(after[1][..., new], before[1][..., new], rtol=0, atol=0)
        else:
            torch.testing.assert_close(after[1], before[1], rtol=0, atol=0)


def test_self_attention_injected_only_in_window_and_small_layers(tiny_pipe, start):
    spec = EditSpec(["a cat", "a dog"], cross_replace_steps=0.0, self_replace_steps=(0.2, 0.6), self_replace_max_pixels=8 * 8)
    rec = Recorder(build_controller(spec, tiny_pipe.tokenizer, STEPS), everywhere=True)
    run(tiny_pipe, spec, start, rec)
    injected = 0
    for layer, step, before, after in rec.calls:
        if layer.is_cross:
            continue
        if 2 <= step < 6 and before.shape[2] <= 64:
            torch.testing.assert_close(after[1], before[0], rtol=0, atol=0)
            injected += 1
        else:
            torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert injected > 0
    late_self = [before for layer, step, before, _ in rec.calls if not layer.is_cross and step == STEPS - 1]
    assert not torch.equal(late_self[-1][1], late_self[-1][0])  # the rows really differ


def test_reweight_scales_exactly_the_word_columns(tiny_pipe, start):
    spec = EditSpec(["a cat on a bench", "a dog on a bench"], cross_replace_steps=1.0, reweight={"dog": 3.0}, self_replace_steps=0)
    rec = Recorder(build_controller(spec, tiny_pipe.tokenizer, STEPS))
    run(tiny_pipe, spec, start, rec)
    dog = word_token_indices(spec.prompts[1], "dog", tiny_pipe.tokenizer)
    assert dog == [2]
    for layer, step, before, after in rec.calls:
        if not layer.is_cross:
            continue
        expected = before[0].clone()  # cat→dog is one token for one: the mapper is the identity
        expected[..., 2] *= 3.0
        torch.testing.assert_close(after[1], expected, rtol=1e-6, atol=1e-7)


def test_reweight_by_one_changes_nothing(tiny_pipe, start):
    prompts = ["a cat on a bench", "a dog on a bench"]
    plain = edit(tiny_pipe, EditSpec(prompts), latents=start, num_steps=STEPS).latents
    same = edit(tiny_pipe, EditSpec(prompts, reweight={"dog": 1.0}), latents=start, num_steps=STEPS).latents
    torch.testing.assert_close(same, plain, rtol=0, atol=1e-6)
    louder = edit(tiny_pipe, EditSpec(prompts, reweight={"dog": 2.0}), latents=start, num_steps=STEPS).latents
    assert (louder[1] - plain[1]).abs().max() > 1e-3
    torch.testing.assert_close(louder[0], plain[0], rtol=0, atol=1e-6)  # the source row is untouched


def test_local_blend_keeps_source_outside_the_mask(tiny_pipe, start):
    # random weights attend almost uniformly (normalized maps lie in 0.5..1): a high threshold
    # gives a mask that is neither empty nor everything
    spec = EditSpec(["a cat sitting on a bench", "a dog sitting on a bench"], blend_words=(["cat"], ["dog"]),
                    blend_threshold=0.95)
    inner = build_controller(spec, tiny_pipe.tokenizer, STEPS)
    masks = {}

    class MaskRecorder(Recorder):
        def on_step_end(self, latents, step):
            masks[step] = inner.blend.mask(inner.store, (16, 16))[1, 0]  # the mask this step uses
            return super().on_step_end(latents, step)

    rec = MaskRecorder(inner)
    run(tiny_pipe, spec, start, rec)
    first = int(0.2 * STEPS)
    for step, before, after in rec.latents:
        if step < first:
            torch.testing.assert_close(after, before, rtol=0, atol=0)
            continue
        mask = masks[step]
        assert 0 < int(mask.sum()) < mask.numel()  # a real region, not all or nothing
        torch.testing.assert_close(after[1][:, ~mask], after[0][:, ~mask], rtol=0, atol=0)
        torch.testing.assert_close(after[1][:, mask], before[1][:, mask], rtol=0, atol=1e-6)
        torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    assert sum(1 for step, _, _ in rec.latents if step >= first) == STEPS - first


def test_local_blend_subtract_removes_region(tiny_pipe, start):
    spec = EditSpec(["a cat sitting on a bench", "a dog sitting on a bench"], blend_words=(["cat"], ["dog"]))
    inner = build_controller(spec, tiny_pipe.tokenizer, STEPS)
    run(tiny_pipe, spec, start, inner)
    mask = inner.blend.mask(inner.store, (16, 16))
    sub = EditSpec(spec.prompts, blend_words=(["cat"], ["dog"]), blend_subtract_words=(["bench"], ["bench"]))
    inner.blend.subtract = build_controller(sub, tiny_pipe.tokenizer, STEPS).blend.subtract
    reduced = inner.blend.mask(inner.store, (16, 16))
    assert bool((reduced <= mask).all()) and reduced.sum() < mask.sum()


def test_fused_and_explicit_paths_agree(tiny_pipe, tiny_pipe64, start):
    spec = EditSpec(["a cat sitting on a bench", "a dog sitting on a bench"], cross_replace_steps=0, self_replace_steps=0)
    cond = encode_text(tiny_pipe, spec.prompts)
    z = start.expand(4, -1, -1, -1)
    emb = torch.cat([encode_text(tiny_pipe, ["", ""]), cond])
    with torch.no_grad():
        fused = tiny_pipe.unet(z, 981, encoder_hidden_states=emb).sample
        explicit = Recorder(build_controller(spec, tiny_pipe.tokenizer, STEPS), everywhere=True)
        with controlled_attention(tiny_pipe.unet, explicit):
            forced = tiny_pipe.unet(z, 981, encoder_hidden_states=emb).sample
    assert len(explicit.calls) == 14  # every layer went the explicit way
    torch.testing.assert_close(forced, fused, rtol=0, atol=1e-5)
    # a whole 10-step run, in float64 so that the comparison is free of float32 noise
    start64 = start.double()
    a = run(tiny_pipe64, spec, start64, Recorder(build_controller(spec, tiny_pipe64.tokenizer, STEPS), everywhere=True))
    b = run(tiny_pipe64, spec, start64, None)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_processors_restored_even_on_error(tiny_pipe, start):
    original = dict(tiny_pipe.unet.attn_processors)

    class Boom(Recorder):
        def on_attention(self, maps, layer, step):
            if step == 3:
                raise RuntimeError("boom")
            return maps

    spec = EditSpec(["a cat", "a dog"])
    with pytest.raises(RuntimeError, match="boom"):
        run(tiny_pipe, spec, start, Boom(build_controller(spec, tiny_pipe.tokenizer, STEPS), everywhere=True))
    after = tiny_pipe.unet.attn_processors
    assert all(after[name] is proc for name, proc in original.items())


def test_several_targets_in_one_batch(tiny_pipe64, start):
    # float64: batch size changes float32 rounding, which guidance amplifies over the steps
    prompts = ["a cat on a bench", "a dog on a bench", "a fox on a bench"]
    together = edit(tiny_pipe64, EditSpec(prompts), latents=start.double(), num_steps=STEPS)
    assert together.latents.shape[0] == 3 and together.stats["unet_calls"] == STEPS  # one batch per step
    alone = edit(tiny_pipe64, EditSpec([prompts[0], prompts[2]]), latents=start.double(), num_steps=STEPS).latents
    torch.testing.assert_close(together.latents[[0, 2]], alone, rtol=0, atol=1e-9)
    assert (together.latents[1] - together.latents[2]).abs().max() > 1e-3


def test_attention_pictures(tiny_pipe, start):
    spec = EditSpec(["a cat on a bench", "a dog on a bench"])
    result = edit(tiny_pipe, spec, latents=start, num_steps=STEPS, return_attention=True)
    assert result.attention.shape == (2, 8, 8, 77)
    # averaged over steps and heads, each pixel's map over tokens still sums to 1 for the source
    torch.testing.assert_close(result.attention[0].sum(-1), torch.ones(8, 8), rtol=0, atol=1e-4)
    picture = attention_pictures(result, 1)
    assert picture.width > picture.height > 128  # 7 captioned tiles in a row
    with pytest.raises(ValueError, match="return_attention"):
        attention_pictures(edit(tiny_pipe, spec, latents=start, num_steps=2), 0)


def test_generator_draws_the_start(tiny_pipe):
    spec = EditSpec(["a cat", "a dog"])
    a = edit(tiny_pipe, spec, generator=torch.Generator().manual_seed(1), num_steps=2).latents
    b = edit(tiny_pipe, spec, generator=torch.Generator().manual_seed(1), num_steps=2).latents
    c = edit(tiny_pipe, spec, generator=torch.Generator().manual_seed(2), num_steps=2).latents
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(edit(tiny_pipe, spec, num_steps=2).images) == 2
