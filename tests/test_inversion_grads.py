"""Inversion leaves the caller's model alone: no weight gets a gradient, every ``requires_grad``
flag comes back as it was (also after an error mid-optimization), and the results are the same
as with trainable weights."""

import pytest
import torch

from inversion import invert
from inversion.ddim import ddim_inversion
from inversion.null_text import null_text_optimization
from models.codec import encode_image, encode_text
from models.frozen import frozen_weights, pipeline_modules
from models.loading import image_size, load_pipeline
from data.images import load_image

PHOTO = "assets/chelsea.png"
PROMPT = "a cat sitting on a wooden floor"


@pytest.fixture
def pipe():
    """A private tiny pipeline: these tests change flags and hooks on it."""
    return load_pipeline("tiny", device="cpu")


def _params(pipe) -> list[tuple[str, torch.nn.Parameter]]:
    return [(f"{k}.{n}", p) for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)
            for n, p in m.named_parameters()]


def _flags(pipe) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in _params(pipe)}


def _with_grad(pipe) -> list[str]:
    return [name for name, p in _params(pipe) if p.grad is not None]


@pytest.mark.parametrize("method", ["null-text", "negative-prompt", "ddim"])
def test_no_weight_receives_a_gradient(pipe, method):
    reached = []
    handles = [p.register_hook(lambda g, name=name: reached.append(name)) for name, p in _params(pipe)]
    assert all(p.requires_grad for _, p in _params(pipe))  # as from_pretrained leaves them
    try:
        invert(pipe, [PHOTO, PHOTO], PROMPT, method=method, num_steps=3, num_inner_steps=2, progress=False)
    finally:
        for h in handles:
            h.remove()
    assert reached == []
    assert _with_grad(pipe) == []
    assert all(p.requires_grad for _, p in _params(pipe))


def test_weights_are_frozen_during_the_optimization(pipe):
    calls = []  # (autograd recording, any weight trainable) at each UNet call
    pipe.unet.register_forward_pre_hook(
        lambda m, a: calls.append((torch.is_grad_enabled(), any(p.requires_grad for p in m.parameters()))))
    invert(pipe, PHOTO, PROMPT, num_steps=2, num_inner_steps=2, progress=False)
    assert (True, False) in calls and (True, True) not in calls


def test_mixed_flags_and_existing_grads_come_back_unchanged(pipe):
    pipe.text_encoder.requires_grad_(False)
    pipe.unet.conv_in.requires_grad_(False)
    kept = pipe.unet.conv_out.weight
    kept.grad = torch.ones_like(kept)
    before = _flags(pipe)
    assert not all(before.values()) and any(before.values())
    invert(pipe, PHOTO, PROMPT, num_steps=3, num_inner_steps=2, progress=False)
    assert _flags(pipe) == before
    assert _with_grad(pipe) == ["unet.conv_out.weight"]
    assert torch.equal(kept.grad, torch.ones_like(kept))


class Stop(RuntimeError):
    pass


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_flags_restored_after_an_error_mid_optimization(pipe, where):
    pipe.vae.requires_grad_(False)
    before = _flags(pipe)
    calls = []

    def fail_late(*_):
        calls.append(1)
        # forward: DDIM inversion's 3 calls, ε_c, then the first inner step; stop in the second
        if len(calls) == (6 if where == "forward" else 2):
            raise Stop(where)

    if where == "forward":
        pipe.unet.register_forward_pre_hook(fail_late)
    else:  # fires inside loss.backward(): the embeddings' gradient flows through conv_out
        pipe.unet.conv_out.register_full_backward_hook(fail_late)
    with pytest.raises(Stop):
        invert(pipe, PHOTO, PROMPT, num_steps=3, num_inner_steps=3, progress=False)
    assert len(calls) == (6 if where == "forward" else 2)
    assert _flags(pipe) == before
    assert _with_grad(pipe) == []


def test_tensors_passed_in_get_no_gradient(pipe):
    latent = encode_image(pipe, load_image(PHOTO, size=image_size(pipe)))
    cond = encode_text(pipe, [PROMPT]).requires_grad_(True)
    trajectory = ddim_inversion(pipe, latent, cond, 2).requires_grad_(True)
    uncond = encode_text(pipe, [""]).requires_grad_(True)
    null_text_optimization(pipe, trajectory, cond, uncond, 2, num_inner_steps=2)
    assert trajectory.grad is None and cond.grad is None and uncond.grad is None
    assert _with_grad(pipe) == []


def test_same_embeddings_as_with_trainable_weights():
    """Today's code with the weights left trainable (the undecorated function) against the frozen
    one, in float64: the same null embeddings to float noise."""
    pipe = load_pipeline("tiny", device="cpu", dtype=torch.float64)
    latent = encode_image(pipe, load_image(PHOTO, size=image_size(pipe)))
    cond, uncond = encode_text(pipe, [PROMPT]), encode_text(pipe, [""])
    trajectory = ddim_inversion(pipe, latent, cond, 6)
    frozen, stats = null_text_optimization(pipe, trajectory, cond, uncond, 6, num_inner_steps=4)
    assert _with_grad(pipe) == []
    trainable, stats_trainable = null_text_optimization.__wrapped__(pipe, trajectory, cond, uncond, 6, num_inner_steps=4)
    assert _with_grad(pipe)  # the old behaviour really did compute weight gradients
    assert (frozen - trainable).abs().max().item() <= 1e-6
    assert stats["inner_steps"] == stats_trainable["inner_steps"]


def test_frozen_weights_shared_parameters_and_nesting():
    a = torch.nn.Linear(2, 2)
    b = torch.nn.Sequential(a, torch.nn.Linear(2, 2))  # shares a's parameters
    b[1].bias.requires_grad_(False)
    before = [p.requires_grad for p in b.parameters()]
    with frozen_weights(a, b):
        assert not any(p.requires_grad for p in b.parameters())
        with frozen_weights(b):
            pass
        assert not any(p.requires_grad for p in b.parameters())
    assert [p.requires_grad for p in b.parameters()] == before


def test_pipeline_modules(tiny_pipe):
    assert {id(m) for m in pipeline_modules(tiny_pipe)} >= {id(tiny_pipe.unet), id(tiny_pipe.vae), id(tiny_pipe.text_encoder)}
