"""Metrics on their real code paths, with random-weight stand-ins for CLIP, DINO and the LPIPS
backbones (no weights can be downloaded here)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from eval import metrics
from eval.lpips import LPIPS, MetricModelError, feature_stack, load_lpips


def _photo(size=64):
    return Image.open("assets/chelsea.png").convert("RGB").resize((size, size))


def _noisy(image, sigma, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(np.asarray(image).shape) * sigma
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def test_identical_images(metric_models):
    a = _photo()
    assert metrics.mse(a, a) == 0
    assert metrics.psnr(a, a) == math.inf
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    for net in ("alex", "vgg", "squeeze"):
        assert metrics.lpips(a, a, net=net, backbone="random") == pytest.approx(0.0, abs=1e-7)
    assert metrics.structure_distance(a, a, model=metric_models["dino"]) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_noise_makes_every_metric_worse(metric_models, net):
    a = _photo()
    levels = [_noisy(a, s) for s in (4, 16, 48)]
    m = [metrics.mse(a, b) for b in levels]
    p = [metrics.psnr(a, b) for b in levels]
    s = [metrics.ssim(a, b) for b in levels]
    lp = [metrics.lpips(a, b, net=net, backbone="random") for b in levels]
    sd = [metrics.structure_distance(a, b, model=metric_models["dino"]) for b in levels]
    assert m == sorted(m) and p == sorted(p, reverse=True) and s == sorted(s, reverse=True)
    assert lp == sorted(lp) and lp[0] > 0
    assert sd == sorted(sd) and sd[0] > 0


def test_psnr_value():
    a = Image.new("RGB", (8, 8), (0, 0, 0))
    b = Image.new("RGB", (8, 8), (51, 51, 51))  # error 0.2 everywhere → MSE 0.04 → 13.98 dB
    assert metrics.mse(a, b) == pytest.approx(0.04, rel=1e-5)
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(1 / 0.04), rel=1e-5)


def test_masks_restrict_background_metrics():
    a = _photo()
    b = np.asarray(a).copy()
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:40, 20:50] = 1
    b[mask == 1] = 255 - b[mask == 1]  # change only the edited region
    b = Image.fromarray(b)
    assert metrics.mse(a, b) > 0.01  # the images do differ
    for compat in (False, True):
        assert metrics.mse(a, b, mask, compat) == 0
        assert metrics.psnr(a, b, mask, compat) == math.inf
    # compat zeroes the edit region in both images: what is left is identical
    assert metrics.lpips(a, b, mask=mask, compat=True, backbone="random") == pytest.approx(0, abs=1e-7)
    assert metrics.ssim(a, b, mask, compat=True) == pytest.approx(1.0, abs=1e-6)
    # default: deep features near the edit see it through their receptive field, far less than unmasked
    inside = metrics.lpips(a, b, mask=mask, backbone="random")
    assert 0 < inside < metrics.lpips(a, b, backbone="random")
    # default mode: SSIM and LPIPS are averaged over unedited pixels only, so the edit leaks in
    # only through their windows near the mask's edge; far-away pixels see no change
    far = np.ones((64, 64), dtype=np.uint8)
    far[:6, :6] = 0
    assert metrics.ssim(a, b, far) == pytest.approx(1.0, abs=1e-6)
    # a change outside the mask is seen
    c = np.asarray(a).copy()
    c[0:4, 0:4] = 0
    assert metrics.mse(a, Image.fromarray(c), mask) > 0


def test_compat_zeroes_the_edit_region():
    a = _photo()
    b = _noisy(a, 30)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:32] = 1
    # default: mean over the 2048 unedited pixels; compat: zeros in the edit region count too
    default = metrics.mse(a, b, mask)
    compat = metrics.mse(a, b, mask, compat=True)
    assert compat == pytest.approx(default / 2, rel=1e-5)
    everything = np.ones((64, 64), dtype=np.uint8)
    assert math.isnan(metrics.mse(a, b, everything))


def test_clip_score(metric_models):
    a = _photo(48)
    scores = metrics.clip_score([a, _noisy(a, 60)], ["a cat", "a dog"], model=metric_models["clip"])
    assert len(scores) == 2 and all(0 <= s <= 100 for s in scores)
    again = metrics.clip_score([a], ["a cat"], model=metric_models["clip"])
    assert again[0] == pytest.approx(scores[0], abs=1e-4)
    corner = np.zeros((48, 48))
    corner[:12, :12] = 1
    masked = metrics.clip_score([a], ["a cat"], model=metric_models["clip"], masks=[corner])
    assert masked[0] != pytest.approx(scores[0], abs=1e-4)  # the mostly black image scores differently
    with pytest.raises(ValueError, match="empty mask"):
        metrics.clip_score([a], ["a cat"], model=metric_models["clip"], masks=[np.zeros((48, 48))])


def test_clip_score_is_100_max_cosine(metric_models):
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(metric_models["clip"]), CLIPProcessor.from_pretrained(metric_models["clip"])
    a = _photo(48)
    inputs = proc(text=["a cat"], images=[a], return_tensors="pt", padding="max_length")
    with torch.no_grad():
        out = model(**inputs)
    cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
    assert metrics.clip_score([a], ["a cat"], model=metric_models["clip"])[0] == pytest.approx(100 * max(cos, 0), abs=1e-3)


def test_missing_models_are_clear_errors():
    with pytest.raises(MetricModelError, match="huggingface-cli download"):
        metrics.clip_score([_photo()], ["a cat"], model="nobody/no-clip")
    with pytest.raises(MetricModelError, match="--lpips-backbone"):
        load_lpips("alex", backbone="/nonexistent/alexnet.pth")


def test_lpips_loads_torchvision_layout(tmp_path):
    features, _ = feature_stack("squeeze")
    state = {f"features.{k}": v + 1 for k, v in features.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "sq.pth")
    model = load_lpips("squeeze", backbone=tmp_path / "sq.pth")
    first = next(iter(model.features.state_dict().items()))
    assert torch.equal(first[1], state[f"features.{first[0]}"])
    assert len(LPIPS("squeeze").heads) == 7 and len(LPIPS("vgg").heads) == 5


def test_dino_compat_changes_the_input_scale(metric_models):
    a = _photo(48)
    plain = metrics.dino_key_self_similarity(a, model=metric_models["dino"])
    compat = metrics.dino_key_self_similarity(a, model=metric_models["dino"], compat=True)
    assert plain.shape == (17, 17)  # 16 patches + CLS
    assert not torch.allclose(plain, compat)


def _forms(image):
    """The same picture in every accepted form."""
    array = np.asarray(image)
    uint8 = torch.from_numpy(array.copy()).permute(2, 0, 1)
    return [image, array, uint8, uint8[None], uint8.float() / 255, (uint8.float() / 255)[None]]


@pytest.mark.parametrize("name", ["psnr", "ssim", "mse"])
def test_every_image_form_gives_the_same_value(name):
    a, b = _photo(), _noisy(_photo(), 20)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[10:30, 10:40] = 1
    masks = [mask, mask.astype(bool), torch.from_numpy(mask), torch.from_numpy(mask)[None, None].bool(),
             Image.fromarray(mask * 255)]
    fn = getattr(metrics, name)
    plain = fn(a, b)
    assert all(fn(x, y) == pytest.approx(plain, rel=1e-6) for x, y in zip(_forms(a), _forms(b)))
    masked = fn(a, b, mask)
    assert all(fn(_forms(a)[5], _forms(b)[5], m) == pytest.approx(masked, rel=1e-6) for m in masks)


def test_lpips_takes_torchmetrics_tensors():
    a, b = _photo(), _noisy(_photo(), 20)
    x, y = _forms(a)[5], _forms(b)[5]
    assert metrics.lpips(x, y, backbone="random") == pytest.approx(metrics.lpips(a, b, backbone="random"), rel=1e-6)
    # a batch of two identical pairs scores as one pair
    assert metrics.lpips(torch.cat([x, x]), torch.cat([y, y]), backbone="random") == pytest.approx(
        metrics.lpips(x, y, backbone="random"), rel=1e-5)


@pytest.mark.parametrize("bad", [
    np.zeros((64, 64, 3), dtype=np.float32),           # float array: 0–1 or 0–255?
    torch.zeros(64, 64, 3, dtype=torch.uint8),          # channels last in a tensor
    torch.full((1, 3, 64, 64), 2.0),                    # float tensor outside [0, 1]
    torch.full((1, 3, 64, 64), float("nan")),
    torch.zeros(1, 1, 64, 64),                          # one channel
    "photo.png",
])
def test_other_images_are_a_type_error_naming_the_forms(bad):
    with pytest.raises(TypeError, match="uint8 array \\[H, W, 3\\]"):
        metrics.psnr(bad, _photo())


@pytest.mark.parametrize("bad", [np.full((64, 64), 255, dtype=np.uint8), np.zeros((64, 64, 3)), "mask.png"])
def test_other_masks_are_a_type_error(bad):
    with pytest.raises(TypeError, match="mask"):
        metrics.mse(_photo(), _photo(), bad)


def test_dino_resize_antialiases_except_in_compat(metric_models, monkeypatch):
    """PIE-Bench's evaluator resizes its DINO input with torchvision 0.13, which does not
    antialias tensors; the default mode does."""
    seen = []
    real = metrics.F.interpolate
    monkeypatch.setattr(metrics.F, "interpolate", lambda *a, **k: seen.append(k.get("antialias")) or real(*a, **k))
    metrics.dino_key_self_similarity(_photo(48), model=metric_models["dino"])
    metrics.dino_key_self_similarity(_photo(48), model=metric_models["dino"], compat=True)
    assert seen == [True, False]
