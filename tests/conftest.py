"""Shared fixtures: the tiny offline model, loaded once per test session."""

import os

# Without this a hub id is retried for minutes before failing; set before diffusers is imported.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from pipelines.models import load_pipeline


@pytest.fixture(scope="session")
def tiny_pipe():
    """The tiny pipeline in float32 on the CPU (tests must not modify its weights)."""
    return load_pipeline("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_pipe64():
    """The tiny pipeline in float64, for comparisons free of float32 rounding."""
    return load_pipeline("tiny", device="cpu", dtype=torch.float64)
