"""The grounding losses the shapes model is trained with: which words look where, the processor
that keeps the maps (and changes nothing else), the losses' bounds (the token and pixel terms on
cross-attention, the locality term on self-attention), and a fine-tuning run using them."""

from __future__ import annotations

import pytest
import torch

from data.shapes import ShapeObject, render
from models.grounding import (
    GroundingProcessor,
    grounding_loss,
    install,
    locality_loss,
    pixel_loss,
    scene_labels,
    scene_targets,
    word_tokens,
)
from models.tokenizer import build_clip_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


def two_objects():
    return render([ShapeObject("circle", "red", "small", (0.7, 0.3)), ShapeObject("square", "blue", "big", (0.3, 0.65))],
                  "white")


def test_words_look_at_their_object_and_the_background_words_at_the_rest(tokenizer):
    scene = two_objects()
    assert scene.caption == "a big blue square and a small red circle on a white background"
    targets = scene_targets(scene, tokenizer)
    positions = dict((w, p) for w, p in word_tokens(scene.caption, tokenizer))
    square, circle = (torch.from_numpy(m).float() for m in scene.masks[::-1])  # caption: left to right
    for word in ("big", "blue", "square"):
        assert torch.equal(targets.regions[positions[word][0]], square), word
    for word in ("small", "red", "circle"):
        assert torch.equal(targets.regions[positions[word][0]], circle), word
    rest = 1 - torch.clamp(square + circle, max=1)
    for word in ("white", "background"):
        assert torch.equal(targets.regions[positions[word][0]], rest), word
    grounded = {p for w, ps in word_tokens(scene.caption, tokenizer) if w not in ("a", "and", "on") for p in ps}
    assert set(torch.nonzero(targets.used).flatten().tolist()) == grounded
    assert targets.regions[0].sum() == 0 and targets.regions[-1].sum() == 0  # start token, padding


def test_the_processor_keeps_the_maps_and_changes_no_output():
    from models.loading import load_pipeline

    unet = load_pipeline("tiny", device="cpu").unet
    torch.manual_seed(0)
    sample = torch.randn(2, 4, 16, 16)
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        before = unet(sample, 10, encoder_hidden_states=context).sample
        self_maps = GroundingProcessor()
        grounding = install(unet, self_maps)
        after = unet(sample, 10, encoder_hidden_states=context).sample
    assert (after - before).abs().max() < 1e-5
    crossed = sum(name.endswith("attn2.processor") for name in unet.attn_processors)
    assert len(grounding.maps) == crossed == len(self_maps.maps) > 0
    for probs in grounding.maps:
        assert probs.shape[0] == 2 and probs.shape[2] == 77
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
    for probs in self_maps.maps:  # pixels × pixels
        assert probs.shape[0] == 2 and probs.shape[1] == probs.shape[2]
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
    assert all(p is (grounding if n.endswith("attn2.processor") else self_maps) for n, p in unet.attn_processors.items())
    # without a self-attention processor, self-attention keeps its own
    fresh = load_pipeline("tiny", device="cpu").unet
    install(fresh)
    assert sum(isinstance(p, GroundingProcessor) for p in fresh.attn_processors.values()) == crossed


def test_loss_is_zero_inside_one_outside_and_none_without_words():
    regions = torch.zeros(1, 3, 8, 8)
    regions[0, 1, :4] = 1  # token 1 looks at the top half
    used = torch.tensor([[False, True, False]])
    inside = torch.zeros(1, 64, 3)
    inside[0, :32, 1] = 1 / 32
    inside[0, :, 0] = 1 / 64
    outside = torch.zeros(1, 64, 3)
    outside[0, 32:, 1] = 1 / 32
    assert grounding_loss([inside], regions, used).item() == pytest.approx(0.0, abs=1e-6)
    assert grounding_loss([outside], regions, used).item() == pytest.approx(1.0, abs=1e-6)
    half = (inside + outside) / 2
    assert grounding_loss([half, inside], regions, used).item() == pytest.approx((0.25 + 0) / 2, abs=1e-6)
    assert grounding_loss([half], regions, torch.zeros_like(used)).item() == 0.0
    maps = half.clone().requires_grad_(True)
    grounding_loss([maps], regions, used).backward()
    assert maps.grad[0, 40, 1] > 0 > maps.grad[0, 10, 1]  # mass outside is penalised, inside rewarded


def test_pixel_loss_wants_the_map_even_over_the_region():
    regions = torch.zeros(1, 3, 8, 8)
    regions[0, 1, :4] = 1  # token 1 looks at the top half
    used = torch.tensor([[False, True, False]])
    even = torch.full((1, 64, 3), 1 / 64)
    even[0, :, 1] = 0
    even[0, :32, 1] = 1 / 32
    peaked = torch.zeros(1, 64, 3)
    peaked[0, :32, 1] = torch.linspace(0.1, 1, 32) / torch.linspace(0.1, 1, 32).sum()  # all inside, not even
    spread = torch.full((1, 64, 3), 1 / 64)
    flat, tip, over = (pixel_loss([m], regions, used).item() for m in (even, peaked, spread))
    assert flat == pytest.approx(0.0, abs=1e-4)
    # the token loss cannot tell a peaked map from an even one; the pixel loss can
    assert grounding_loss([peaked], regions, used).item() == pytest.approx(0.0, abs=1e-6)
    assert tip > 0.2 and over > 0.2
    assert pixel_loss([spread], regions, torch.zeros_like(used)).item() == 0.0
    maps = (0.9 * peaked + 0.1 * spread).requires_grad_(True)
    pixel_loss([maps], regions, used).backward()
    assert maps.grad[0, 0, 1] < 0  # the weak corner of the region is pulled up
    assert maps.grad[0, 40, 1] > 0  # mass outside is pushed down


def test_scene_labels_split_the_image_into_background_and_objects():
    scene = two_objects()
    labels = scene_labels(scene)
    assert labels.shape == (3, 64, 64) and torch.equal(labels.sum(0), torch.ones(64, 64))
    for k, mask in enumerate(scene.masks):
        assert torch.equal(labels[1 + k].bool(), torch.from_numpy(mask))
    one = scene_labels(render([ShapeObject("circle", "red", "big", (0.5, 0.5))], "black"))
    assert one[2].sum() == 0 and torch.equal(one.sum(0), torch.ones(64, 64))


def test_locality_loss_wants_each_pixel_to_attend_within_its_region():
    # 8×8 labels, an object on the left half: pooling to the maps' side (8) keeps them exact
    labels = torch.zeros(1, 3, 8, 8)
    labels[0, 1, :, :4] = 1
    labels[0, 0, :, 4:] = 1
    region = labels[0, :2].flatten(1).argmax(0)  # [64]: 1 object, 0 background
    same = (region[:, None] == region[None, :]).float()
    within = (same / same.sum(1, keepdim=True))[None]
    assert locality_loss([within], labels).item() == pytest.approx(0.0, abs=1e-7)
    uniform = torch.full((1, 64, 64), 1 / 64, requires_grad=True)
    assert locality_loss([uniform], labels).item() == pytest.approx(0.25)  # half the mass elsewhere: (1 − ½)²
    locality_loss([uniform], labels).backward()
    # the own region's mass is pushed up; the rest goes down through the softmax that made the map
    assert uniform.grad[0, 0, 0] < 0 and uniform.grad[0, 63, 63] < 0 and uniform.grad[0, 0, 63] == 0
    # two layers average; a coarser layer pools the labels to its side
    assert locality_loss([within, torch.full((1, 16, 16), 1 / 16)], labels).item() == pytest.approx(0.125)
    # only the kept scenes count (the training's timestep cut-off), and none kept is no loss
    both = torch.cat([within, uniform.detach()])
    labels2 = labels.expand(2, -1, -1, -1)
    assert locality_loss([both], labels2, torch.tensor([True, False])).item() == pytest.approx(0.0, abs=1e-7)
    assert locality_loss([both], labels2, torch.tensor([False, True])).item() == pytest.approx(0.25)
    assert locality_loss([both], labels2).item() == pytest.approx(0.125)
    assert locality_loss([both], labels2, torch.tensor([False, False])).item() == 0.0


def test_fine_tuning_with_word_tokens_and_grounding(tmp_path):
    from models.loading import load_pipeline
    from models.shapes_training import TrainConfig, train

    small = dict(vae_steps=3, unet_steps=3, batch_size=2, latent_scenes=8, warmup_steps=2)
    start = tmp_path / "start"
    train(start, TrainConfig(**small), checkpoint_dir=tmp_path / "ck0", resume=False)
    config = TrainConfig(**small, text_layers=0, grounding_weight=0.1, pixel_weight=0.05, locality_weight=0.3,
                         init_from=str(start))
    assert config.key() != TrainConfig(**small).key()
    summary = train(tmp_path / "tuned", config, checkpoint_dir=tmp_path / "ck1", resume=False)
    assert summary["finished"] and summary["vae_steps"] == 0  # the VAE came with the start
    assert len(summary["losses"]["grounding"]) == 3 and all(0 <= g <= 1 for g in summary["losses"]["grounding"])
    assert len(summary["losses"]["pixel"]) == 3 and all(g > 0 for g in summary["losses"]["pixel"])
    assert len(summary["losses"]["locality"]) == 3 and all(0 < g < 1 for g in summary["losses"]["locality"])
    # a timestep cut-off no training timestep is under: the term is logged as nothing
    cut = TrainConfig(**{**small, "unet_steps": 1}, text_layers=0, grounding_weight=0.1, locality_weight=0.3,
                      locality_max_t=1, init_from=str(start))
    assert cut.key() != TrainConfig(**small, text_layers=0, grounding_weight=0.1, locality_weight=0.3,
                                    init_from=str(start)).key()
    cut_summary = train(tmp_path / "cut", cut, checkpoint_dir=tmp_path / "ck2", resume=False)
    assert cut_summary["losses"]["locality"] == [0.0]
    tuned, first = load_pipeline(tmp_path / "tuned", device="cpu"), load_pipeline(start, device="cpu")
    assert tuned.text_encoder.config.num_hidden_layers == 0
    for a, b in zip(tuned.vae.parameters(), first.vae.parameters()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(tuned.unet.parameters(), first.unet.parameters()))
    # the exported model runs on diffusers' own processors, not the training one
    assert not any(isinstance(p, GroundingProcessor) for p in tuned.unet.attn_processors.values())


def test_masked_terms_over_halves_with_the_whole_count_average_to_the_whole_batch_mean():
    # data-parallel training: two halves of a batch hold 1 and 5 grounded tokens, 0 and 2 kept scenes
    torch.manual_seed(0)
    cross = [torch.rand(4, 16, 6).softmax(-1), torch.rand(4, 4, 6).softmax(-1)]
    regions = (torch.rand(4, 6, 8, 8) > 0.5).float()
    used = torch.tensor([[1, 0, 0, 0, 0, 0], [0] * 6, [1, 1, 1, 0, 0, 0], [0, 1, 0, 1, 0, 0]], dtype=torch.bool)
    own = [torch.rand(4, 16, 16).softmax(-1)]
    labels = torch.nn.functional.one_hot(torch.randint(0, 3, (4, 8, 8)), 3).permute(0, 3, 1, 2).float()
    keep = torch.tensor([False, False, True, True])
    halves = (slice(0, 2), slice(2, 4))
    terms = (
        (grounding_loss(cross, regions, used), lambda h, n: grounding_loss([m[h] for m in cross], regions[h], used[h], n), 3.0),
        (pixel_loss(cross, regions, used), lambda h, n: pixel_loss([m[h] for m in cross], regions[h], used[h], n), 3.0),
        (locality_loss(own, labels, keep), lambda h, n: locality_loss([m[h] for m in own], labels[h], keep[h], n), 1.0),
    )
    for whole, part, share in terms:
        assert float(part(halves[0], share) + part(halves[1], share)) / 2 == pytest.approx(float(whole), rel=1e-5)
        # each half's own mean would weigh the lone token (or the empty half) as much as the rest
        assert float(part(halves[0], None) + part(halves[1], None)) / 2 != pytest.approx(float(whole), rel=1e-2)
