"""Freezing a pipeline's weights for the length of a call, so that a backward pass reaches only
the tensors the caller optimizes (null-text's embeddings) and every flag is put back afterwards."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


def pipeline_modules(pipe) -> list[torch.nn.Module]:
    """Every ``torch.nn.Module`` among the pipeline's components (UNet, VAE, text encoder, …)."""
    parts = getattr(pipe, "components", None)
    if parts is None:  # a pipeline-like object without diffusers' registry
        parts = {name: getattr(pipe, name, None) for name in ("unet", "vae", "text_encoder")}
    return [m for m in parts.values() if isinstance(m, torch.nn.Module)]


@contextmanager
def frozen_weights(*modules: torch.nn.Module) -> Iterator[None]:
    """Turn ``requires_grad`` off on every parameter of ``modules`` for the block.

    On exit — also when the block raises — each parameter gets back its own flag, so a flag the
    caller had turned off stays off. Existing ``.grad`` tensors are left as they are: a frozen
    weight receives no gradient. Not for a model another thread is training at the same time.
    """
    params = list({id(p): p for m in modules for p in m.parameters()}.values())  # shared weights once
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def with_frozen_weights(fn: F) -> F:
    """Decorate ``fn(pipe, ...)`` so that the pipeline's weights are frozen while it runs.

    The undecorated function stays reachable as ``fn.__wrapped__`` (``functools.wraps``): the
    benchmarks time it as the baseline with trainable weights.
    """

    @functools.wraps(fn)
    def wrapper(pipe, *args, **kwargs):
        with frozen_weights(*pipeline_modules(pipe)):
            return fn(pipe, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
