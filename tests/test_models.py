
import pytest
import torch

from models.loading import ModelLoadError, image_size, load_pipeline
from models.tiny import build_tiny_pipeline


def _state(pipe):
    out = {}
    for name in ("unet", "vae", "text_encoder"):
        for key, value in getattr(pipe, name).state_dict().items():
            out[f"{name}.{key}"] = value
    return out


def test_tiny_build_is_bit_identical():
    a, b = _state(build_tiny_pipeline()), _state(build_tiny_pipeline())
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_is_sd_shaped(tiny_pipe):
    unet = tiny_pipe.unet
    places = {name.split(".")[0] for name in unet.attn_processors if name.endswith("attn2.processor")}
    assert places == {"down_blocks", "mid_block", "up_blocks"}
    assert tiny_pipe.vae_scale_factor == 8
    assert image_size(tiny_pipe) == 128
    assert len(tiny_pipe.tokenizer) == 49408
    assert tiny_pipe.safety_checker is None


def test_scheduler_follows_spec(tiny_pipe):
    sched = tiny_pipe.scheduler
    assert type(sched).__name__ == "DDIMScheduler"
    assert sched.config.steps_offset == 1 and not sched.config.clip_sample
    assert not sched.config.set_alpha_to_one
    sched.set_timesteps(50)
    assert sched.timesteps[0].item() == 981 and sched.timesteps[-1].item() == 1


def test_roundtrip_through_save_pretrained(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "model")
    again = load_pipeline(tmp_path / "model", device="cpu")
    a, b = _state(tiny_pipe), _state(again)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_generates_image_of_native_size(tiny_pipe):
    image = tiny_pipe("a cat", num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (128, 128)


def test_dtype_is_followed():
    pipe = load_pipeline("tiny", device="cpu", dtype=torch.float64)
    assert pipe.unet.dtype == torch.float64 and pipe.vae.dtype == torch.float64


def test_unknown_hub_id_offline_is_a_clear_error():
    with pytest.raises(ModelLoadError) as info:
        load_pipeline("nobody/no-such-model-xyz", device="cpu")
    message = str(info.value)
    assert "nobody/no-such-model-xyz" in message and "huggingface-cli download" in message


def test_folder_without_model_index_is_a_clear_error(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_pipeline(tmp_path, device="cpu")


def test_folder_with_missing_tokenizer_is_refused(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path)
    for path in (tmp_path / "tokenizer").iterdir():
        if path.name != "tokenizer_config.json":
            path.unlink()
    with pytest.raises(ModelLoadError):
        load_pipeline(tmp_path, device="cpu")
