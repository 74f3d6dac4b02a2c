"""Shared fixtures: the tiny offline model, loaded once per test session."""

import os

# Without this a hub id is retried for minutes before failing; set before diffusers is imported.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

# Under pytest-xdist the cores are shared out between the workers (and the commands they start):
# two workers each asking torch for every core would only slow each other down.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _threads = max(1, (os.cpu_count() or 1) // _workers)
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)

from models.loading import load_pipeline


@pytest.fixture(scope="session")
def tiny_pipe():
    """The tiny pipeline in float32 on the CPU (tests must not modify its weights)."""
    return load_pipeline("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_pipe64():
    """The tiny pipeline in float64, for comparisons free of float32 rounding."""
    return load_pipeline("tiny", device="cpu", dtype=torch.float64)


@pytest.fixture(scope="session")
def metric_models(tmp_path_factory):
    """Random-weight stand-ins for the metric models (no weights can be downloaded here): Tiny CLIP and DINO-shaped ViT saved as folders, loaded through the same from_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, ViTConfig, ViTModel

    from models.tokenizer import build_clip_tokenizer

    root = tmp_path_factory.mktemp("metric-models")
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    ))
    clip.save_pretrained(root / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=build_clip_tokenizer()).save_pretrained(root / "clip")
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                             image_size=32, patch_size=8), add_pooling_layer=False)
    vit.save_pretrained(root / "dino")
    return {"clip": str(root / "clip"), "dino": str(root / "dino")}


@pytest.fixture(scope="session")
def tiny_xl_pipe():
    """The SDXL-shaped tiny pipeline in float32 on the CPU (tests must not modify its weights)."""
    return load_pipeline("tiny-xl", device="cpu")


@pytest.fixture(scope="session")
def tiny_v_pipe():
    """The v-prediction tiny pipeline in float32 on the CPU."""
    return load_pipeline("tiny-v", device="cpu")
