"""Controllers as tensor functions, on hand-made maps (no model)."""

import torch

from editing.controllers import AttentionStore, LayerInfo, LocalBlend, default_blend_shape, refine_edit, replace_edit, reweight_edit


def _store_with(maps):
    store = AttentionStore()
    store.add(maps, LayerInfo("down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor", "down", True))
    return store


def test_local_blend_mask_follows_the_reference_recipe():
    # two prompts, 2 heads, 4×4 map; the blend word (token 2) attends to pixel (1, 1) only
    maps = torch.full((2, 2, 16, 77), 1e-3)
    maps[:, :, 1 * 4 + 1, 2] = 1.0
    store = _store_with(maps)
    words = torch.zeros(2, 77)
    words[:, 2] = 1
    blend = LocalBlend(words=words, subtract=None, threshold=0.3, start_step=0, factor=2)
    mask = blend.mask(store, (8, 8))
    # 3×3 max pool around (1,1) covers rows/cols 0..2 of the 4×4 map; nearest upsampling ×2 → 0..5
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:6, :6] = True
    assert torch.equal(mask[0, 0], expected) and torch.equal(mask[1, 0], expected)


def test_local_blend_or_with_source_and_subtract():
    maps = torch.full((2, 1, 16, 77), 1e-3)
    maps[0, :, 0, 2] = 1.0  # source word at (0,0)
    maps[1, :, 15, 2] = 1.0  # target word at (3,3)
    maps[:, :, 15, 5] = 1.0  # a subtracted word at (3,3)
    words = torch.zeros(2, 77)
    words[:, 2] = 1
    sub = torch.zeros(2, 77)
    sub[:, 5] = 1
    store = _store_with(maps)
    mask = LocalBlend(words, None, 0.3, 0, factor=1).mask(store, (4, 4))
    assert mask[1, 0, 0, 0] and mask[1, 0, 3, 3]  # the edited row: its own region OR the source's
    assert mask[0, 0, 0, 0] and not mask[0, 0, 3, 3]
    cut = LocalBlend(words, sub, 0.3, 0, factor=1).mask(store, (4, 4))
    assert not cut[1, 0, 3, 3] and cut[1, 0, 0, 0]  # subtraction is unpooled: only (3,3) goes


def test_blend_apply_formula():
    maps = torch.full((2, 1, 16, 77), 1e-3)
    maps[:, :, 0, 2] = 1.0
    words = torch.zeros(2, 77)
    words[:, 2] = 1
    blend = LocalBlend(words, None, 0.3, 0, factor=1)
    z = torch.randn(2, 4, 4, 4)
    out = blend.apply(z, _store_with(maps))
    mask = blend.mask(_store_with(maps), (4, 4))[1, 0]
    assert torch.equal(out[1][:, ~mask], z[0][:, ~mask])
    torch.testing.assert_close(out[1][:, mask], z[1][:, mask])


def test_default_blend_shape():
    assert default_blend_shape((64, 64), [(8, 8), (16, 16), (32, 32)]) == (16, 16)  # SD at 512 px
    assert default_blend_shape((16, 16), [(8, 8), (16, 16)]) == (8, 8)  # tiny: nothing at 4, smallest
    assert default_blend_shape((48, 72), [(6, 9), (12, 18), (24, 36)]) == (12, 18)  # SD at 576×384


def test_store_and_blend_on_a_non_square_latent():
    # latent 6×12 (h×w), maps downsampled twice: 3×6; the word attends to map cell (row 1, col 4)
    maps = torch.full((2, 1, 18, 77), 1e-3)
    maps[:, :, 1 * 6 + 4, 2] = 1.0
    store = AttentionStore(latent_hw=(6, 12))
    store.add(maps, LayerInfo("down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor", "down", True))
    assert store.shapes() == [(3, 6)]
    assert store.mean_map((3, 6))[0, 1, 4, 2] == 1.0
    words = torch.zeros(2, 77)
    words[:, 2] = 1
    mask = LocalBlend(words, None, 0.3, 0).mask(store, (6, 12))[0, 0]
    expected = torch.zeros(6, 12, dtype=torch.bool)
    expected[0:6, 6:12] = True  # pooled cells rows 0..2, cols 3..5, each 2×2 latent pixels
    assert torch.equal(mask, expected)


def test_edits_are_plain_tensor_functions():
    src = torch.rand(2, 3, 77)
    tgt = torch.rand(1, 2, 3, 77)
    perm = torch.eye(77)[torch.randperm(77)]
    torch.testing.assert_close(replace_edit(perm[None])(src, tgt)[0], src @ perm)
    mapper, alphas = torch.arange(77)[None], torch.zeros(1, 77)
    torch.testing.assert_close(refine_edit(mapper, alphas)(src, tgt), tgt)  # nothing aligned: own maps
    eq = torch.ones(1, 77)
    eq[0, 4] = -2.0
    out = reweight_edit(eq, None)(src, tgt)[0]
    torch.testing.assert_close(out[..., 4], -2 * src[..., 4])
    torch.testing.assert_close(out[..., :4], src[..., :4])
