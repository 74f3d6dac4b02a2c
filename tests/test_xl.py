"""SDXL (``tiny-xl``) and v-prediction (``tiny-v``): conditioning as diffusers builds it, equality
with diffusers' own pipelines, Prompt-to-Prompt's injections, null-text inversion, the commands."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from data.images import load_image
from editing import EditSpec, attention_pictures, build_controller, edit
from editing.align import replacement_mapper, word_token_indices
from editing.controllers import default_blend_shape
from editing.sampler import denoise
from editing.spec import EditSpecError
from inversion import Inversion, invert, reconstruct_latent
from inversion.invert import photo_time_ids
from models.codec import encode_null, encode_prompts, native_time_ids
from models.loading import image_size, load_pipeline

ROOT = Path(__file__).resolve().parents[1]
PHOTO = str(ROOT / "assets" / "chelsea.png")
PROMPT = "a cat sitting on a wooden floor"
STEPS = 10
CROSS_LAYERS_XL = 11  # tiny-xl: 1 + 2 down, 2 mid, 4 + 2 up (transformer depth 2 at the quarter side)


@pytest.fixture(scope="module")
def start():
    return torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))


class Recorder:
    """Wraps a controller; records every layer's maps before and after it acted."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def needs_maps(self, layer, pixels, step):
        return True

    def on_attention(self, maps, layer, step):
        before = maps.clone()
        after = self.inner.on_attention(maps, layer, step) if self.inner.needs_maps(layer, maps.shape[2], step) else maps
        self.calls.append((layer, step, before, after.clone()))
        return after

    def on_step_end(self, latents, step):
        return self.inner.on_step_end(latents, step)


def run(pipe, spec, start, controller, steps=STEPS):
    return denoise(pipe, encode_prompts(pipe, spec.prompts), encode_null(pipe), start, controller, steps, 7.5)[0]


def _err(latent, inv):
    return (latent.float() - inv.z_0.float()).pow(2).mean().item()


# ------------------------------------------------------------------ the models and their conditioning
def test_tiny_xl_is_sdxl_shaped(tiny_xl_pipe):
    pipe = tiny_xl_pipe
    assert isinstance(pipe, StableDiffusionXLPipeline) and image_size(pipe) == 128
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.tokenizer_2.pad_token == "!" and len(pipe.tokenizer_2) == 49408
    cross = {name.split(".attentions")[0] for name in pipe.unet.attn_processors if ".attn2." in name}
    assert cross == {"down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.1"}
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and pipe.scheduler.config.steps_offset == 1


def test_conditioning_is_what_diffusers_builds(tiny_xl_pipe):
    pipe, prompts = tiny_xl_pipe, ["a cat sitting on a bench", "a dog"]
    cond, null = encode_prompts(pipe, prompts), encode_null(pipe)
    embeds, neg, pooled, neg_pooled = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=True)
    assert torch.equal(cond.embeds, embeds) and torch.equal(cond.pooled, pooled)
    assert torch.equal(null.embeds, neg[:1]) and torch.equal(null.pooled, neg_pooled[:1])  # zeros: forced
    assert null.embeds.abs().max() == 0 and null.time_ids is None
    ids = pipe._get_add_time_ids((128, 128), (0, 0), (128, 128), dtype=torch.float32, text_encoder_projection_dim=32)
    assert torch.equal(cond.time_ids, ids.expand(2, -1)) and torch.equal(native_time_ids(pipe), ids)
    # a model whose config does not force zeros: the empty negative prompt, encoded
    unforced = StableDiffusionXLPipeline(**pipe.components, force_zeros_for_empty_prompt=False, add_watermarker=False)
    _, neg, _, neg_pooled = unforced.encode_prompt(["a cat"], device="cpu", do_classifier_free_guidance=True)
    null = encode_null(unforced)
    assert torch.equal(null.embeds, neg) and torch.equal(null.pooled, neg_pooled) and null.embeds.abs().max() > 0


def test_time_ids_come_from_the_photo(tiny_xl_pipe):
    wide = Image.new("RGB", (300, 200), "white")
    ids = photo_time_ids(tiny_xl_pipe, [load_image(wide, 128), load_image(wide, 128, crop=(10, 0, 0, 0))])
    # original (h, w); where the square was cut, in the resized frame: (300 − 200)/2 · 128/200; target
    assert ids.tolist() == [[200, 300, 0, 32, 128, 128], [200, 300, 0, 35, 128, 128]]
    again = load_image(load_image(wide, 128), 128)  # a second pass keeps the photo's geometry
    assert photo_time_ids(tiny_xl_pipe, [again]).tolist() == ids[:1].tolist()


def test_fp16_runs_the_sdxl_vae_in_float32():
    pipe = load_pipeline("tiny-xl", device="cpu", dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16 and pipe.text_encoder_2.dtype == torch.float16
    assert pipe.vae.dtype == torch.float32


def test_low_precision_sdxl_keeps_float32_null_embeddings():
    pipe = load_pipeline("tiny-xl", device="cpu", dtype=torch.bfloat16)  # bf16: runs on a CPU
    inv = invert(pipe, PHOTO, PROMPT, num_steps=2, num_inner_steps=2, progress=False)
    assert inv.null_embeddings.dtype == torch.float32 and inv.null_pooled.dtype == torch.float32


def test_prompt_length_is_checked_on_both_tokenizers(tiny_xl_pipe, monkeypatch):
    monkeypatch.setattr(tiny_xl_pipe.tokenizer_2, "model_max_length", 5)
    with pytest.raises(EditSpecError, match="limit of 5"):
        edit(tiny_xl_pipe, EditSpec(["a cat sitting on a bench", "a dog sitting on a bench"]), num_steps=1)


# ------------------------------------------------------------------ no control = diffusers' pipelines
@pytest.mark.parametrize("which", ["tiny_xl_pipe", "tiny_v_pipe"])
def test_no_control_matches_diffusers_pipeline(which, request, start):
    pipe = request.getfixturevalue(which)
    spec = EditSpec(["a cat sitting on a bench", "a dog sitting on a bench"], cross_replace_steps=0, self_replace_steps=0)
    result = edit(pipe, spec, latents=start, num_steps=20)
    for k, prompt in enumerate(spec.prompts):
        plain = pipe(prompt, latents=start.clone(), num_inference_steps=20, guidance_scale=7.5, output_type="latent").images
        assert (result.latents[k] - plain[0]).abs().max() <= 1e-4
    assert result.stats["explicit_attention_calls"] == 0
    if which == "tiny_v_pipe":
        assert pipe.scheduler.config.prediction_type == "v_prediction"


# ------------------------------------------------------------------ Prompt-to-Prompt on SDXL
def test_identical_prompts_full_injection_keep_the_source(tiny_xl_pipe, start):
    spec = EditSpec(["a cat sitting on a bench"] * 2, cross_replace_steps=1.0, self_replace_steps=1.0)
    result = edit(tiny_xl_pipe, spec, latents=start, num_steps=STEPS)
    assert (result.latents[1] - result.latents[0]).abs().max() <= 1e-5
    assert result.stats["explicit_attention_calls"] > 0


def test_word_swap_injects_exactly_the_mapped_maps(tiny_xl_pipe, start):
    pipe = tiny_xl_pipe
    spec = EditSpec(["a cat sitting on a bench", "a hippopotamus sitting on a bench"],
                    cross_replace_steps={"default_": 0.6, "hippopotamus": 0.3}, self_replace_steps=0.0)
    rec = Recorder(build_controller(spec, pipe.tokenizer, STEPS))
    run(pipe, spec, start, rec)
    mapper = replacement_mapper(*spec.prompts, pipe.tokenizer)
    word = word_token_indices(spec.prompts[1], "hippopotamus", pipe.tokenizer)
    other = [j for j in range(77) if j not in word]
    checked = 0
    for layer, step, before, after in rec.calls:
        if not layer.is_cross:
            assert torch.equal(after, before)
            continue
        mapped = torch.einsum("hpi,ij->hpj", before[0], mapper)
        for cols, end in ((other, int(0.6 * (STEPS + 1))), (word, int(0.3 * (STEPS + 1)))):
            expected = mapped[..., cols] if step < end else before[1][..., cols]
            torch.testing.assert_close(after[1][..., cols], expected, rtol=1e-6, atol=1e-7)
        assert torch.equal(after[0], before[0])
        checked += 1
    assert checked == STEPS * CROSS_LAYERS_XL


def test_local_blend_and_pictures_at_a_quarter_of_the_latent(tiny_xl_pipe, start):
    pipe = tiny_xl_pipe
    spec = EditSpec(["a cat sitting on a bench", "a dog sitting on a bench"], blend_words=(["cat"], ["dog"]),
                    reweight={"dog": 2.0})
    controller = build_controller(spec, pipe.tokenizer, STEPS)
    final = run(pipe, spec, start, controller)
    assert controller.store.shapes() == [(4, 4), (8, 8)] and default_blend_shape((16, 16), [(4, 4), (8, 8)]) == (4, 4)
    mask = controller.blend.mask(controller.store, (16, 16))  # random weights: near-uniform maps, a wide mask
    assert mask.shape == (2, 1, 16, 16) and bool(mask[1].any())
    keep = ~mask[1].expand(4, -1, -1)
    assert torch.equal(final[1][keep], final[0][keep])  # outside the mask the edit is the source
    result = edit(pipe, spec, latents=start, num_steps=STEPS, return_attention=True)
    assert result.attention.shape == (2, 4, 4, 77) and result.attention_shape == (4, 4)
    assert attention_pictures(result, 1).width > 128


# ------------------------------------------------------------------ null-text inversion
@pytest.mark.parametrize("which", ["tiny_xl_pipe", "tiny_v_pipe"])
def test_null_text_reconstructs_better_than_ddim(which, request, tmp_path):
    pipe = request.getfixturevalue(which)
    kw = dict(num_steps=12, guidance_scale=7.5, progress=False)
    ddim, nti = invert(pipe, PHOTO, PROMPT, method="ddim", **kw), invert(pipe, PHOTO, PROMPT, **kw)
    ddim_err, nti_err = _err(reconstruct_latent(pipe, ddim), ddim), _err(reconstruct_latent(pipe, nti), nti)
    assert nti_err * 2 < ddim_err
    if which == "tiny_xl_pipe":
        assert nti.time_ids.tolist() == [[300, 451, 0, 0, 128, 192]]  # the whole 451 × 300 photo at 192 × 128
        assert nti.null_embeddings.shape == (12, 1, 77, 64) and nti.null_pooled.shape == (12, 1, 32)
        back = Inversion.load(nti.save(tmp_path / "x.safetensors"))
        assert torch.equal(back.null_pooled, nti.null_pooled) and torch.equal(back.time_ids, nti.time_ids)
    result = edit(pipe, EditSpec([PROMPT, PROMPT]), inversion=nti)
    torch.testing.assert_close(result.latents[:1], reconstruct_latent(pipe, nti), rtol=0, atol=1e-4)


def test_batched_sdxl_inversion_keeps_each_photos_conditions():
    # float64: a batch changes float32 rounding, which guidance amplifies
    pipe = load_pipeline("tiny-xl", device="cpu", dtype=torch.float64)
    wide = Image.open(PHOTO).crop((0, 0, 400, 300))
    kw = dict(num_steps=3, num_inner_steps=2, progress=False, size=128)  # one size: one batch, two crops
    both = invert(pipe, [PHOTO, wide], [PROMPT, "a cat"], **kw)
    assert both[0].stats["batch_size"] == 2
    alone = [invert(pipe, PHOTO, PROMPT, **kw), invert(pipe, wide, "a cat", **kw)]
    assert both[1].time_ids.tolist() == [[300, 400, 0, 21, 128, 128]]
    for b, a in zip(both, alone):
        assert torch.equal(b.time_ids, a.time_ids)
        torch.testing.assert_close(b.null_embeddings, a.null_embeddings, rtol=0, atol=1e-9)
        torch.testing.assert_close(b.null_pooled, a.null_pooled, rtol=0, atol=1e-9)
    assert not torch.equal(both[0].null_pooled[0], both[0].null_pooled[-1])  # the pooled one is optimized


# ------------------------------------------------------------------ the commands
def _cli(module, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_edit_real_on_tiny_xl_end_to_end(tmp_path):
    out = tmp_path / "out"
    proc = _cli("pipelines.edit_real", PHOTO, "--src", "a cat sitting on a floor", "--tgt", "a dog sitting on a floor",
                "--blend", "cat:dog", "--attention", "--out", str(out), "--model", "tiny-xl", "--steps", "3",
                "--inner-steps", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["unet_calls"]["edit"] == 3
    with Image.open(out / "edit_1.png") as im:
        assert im.size == (192, 128)  # the photo's 3:2 at the model's area


def test_edit_generated_on_tiny_v_end_to_end(tmp_path):
    out = tmp_path / "gen"
    proc = _cli("pipelines.edit_generated", "--src", "a cat riding a bicycle", "--tgt", "a cat riding a car",
                "--out", str(out), "--model", "tiny-v", "--steps", "3", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {"source.png", "edit_1.png", "grid.png", "run.json"}
