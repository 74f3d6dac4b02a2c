
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from data.images import ImageInputError, image_hash, load_image

SAMPLE = "assets/chelsea.png"


def _save(image, path, **kw):
    image.save(path, **kw)
    return path


def test_sample_photo_loads_square_rgb():
    image = load_image(SAMPLE, size=64)
    assert image.size == (64, 64) and image.mode == "RGB"


def test_missing_file(tmp_path):
    with pytest.raises(ImageInputError, match="no such file") as info:
        load_image(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(info.value)


def test_folder(tmp_path):
    with pytest.raises(ImageInputError, match="folder"):
        load_image(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageInputError, match="empty"):
        load_image(tmp_path / "empty.png")


def test_non_image(tmp_path):
    (tmp_path / "notes.png").write_text("this is not a picture")
    with pytest.raises(ImageInputError, match="not an image"):
        load_image(tmp_path / "notes.png")


def test_truncated(tmp_path):
    data = (tmp_path / "full.jpg")
    _save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), data, quality=95)
    raw = data.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageInputError, match="truncated"):
        load_image(tmp_path / "cut.jpg")


def test_pixel_cap(tmp_path):
    path = _save(Image.new("RGB", (200, 100)), tmp_path / "big.png")
    with pytest.raises(ImageInputError, match="over the cap"):
        load_image(path, max_pixels=10_000)
    assert load_image(path, size=8, max_pixels=20_000).size == (8, 8)


@pytest.mark.parametrize(
    "mode,value,expected",
    [
        ("RGBA", (255, 0, 0, 255), (255, 0, 0)),
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent → white background
        ("LA", (0, 255), (0, 0, 0)),
        ("L", 128, (128, 128, 128)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 32896, (128, 128, 128)),
        ("I", 65535, (255, 255, 255)),
        ("F", 0.5, (128, 128, 128)),
    ],
)
def test_mode_conversion(mode, value, expected):
    out = load_image(Image.new(mode, (10, 10), value), size=4)
    assert out.mode == "RGB"
    assert tuple(np.asarray(out)[1, 1]) == expected


def test_palette_with_transparency_goes_on_white(tmp_path):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0] + [0, 255, 0] * 255)
    image.info["transparency"] = 0
    path = _save(image, tmp_path / "p.png", transparency=0)
    assert tuple(np.asarray(load_image(path, size=4))[0, 0]) == (255, 255, 255)


def test_exif_orientation_applied(tmp_path):
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = 255  # left half white in the stored pixels
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display: stored left half ends on top
    path = _save(image, tmp_path / "rot.jpg", exif=exif, quality=100)
    out = np.asarray(load_image(path, size=20)).astype(int)
    assert out[2, 10].mean() > 200 and out[17, 10].mean() < 50


def test_offset_crop_matches_reference_layout():
    array = np.zeros((100, 200, 3), dtype=np.uint8)
    array[:, 150:] = 255  # right quarter white
    image = Image.fromarray(array)
    centred = np.asarray(load_image(image, size=10))
    shifted = np.asarray(load_image(image, size=10, crop=(100, 0, 0, 0)))  # keep x in 100..200
    assert centred.mean() == 0
    assert shifted[:, 6:].mean() > 200 and shifted[:, :4].mean() < 50


def test_bad_crop_is_refused():
    with pytest.raises(ImageInputError, match="leave nothing"):
        load_image(Image.new("RGB", (10, 10)), size=4, crop=(5, 5, 0, 0))
    with pytest.raises(ImageInputError):
        load_image(Image.new("RGB", (10, 10)), size=4, crop="corner")


def test_image_hash_tracks_pixels():
    a = Image.new("RGB", (4, 4), (1, 2, 3))
    b = Image.new("RGB", (4, 4), (1, 2, 4))
    assert image_hash(a) == image_hash(a.copy()) != image_hash(b)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=400))
def test_any_bytes_give_an_image_or_a_clear_error(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("fuzz") / "x.png"
    path.write_bytes(payload)
    try:
        image = load_image(path, size=8)
    except ImageInputError as exc:
        assert "x.png" in str(exc)
    else:
        assert image.size == (8, 8) and image.mode == "RGB"


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM"]), st.binary(max_size=200))
def test_corrupt_headers_give_a_clear_error(tmp_path_factory, magic, rest):
    path = tmp_path_factory.mktemp("fuzz") / "y.img"
    path.write_bytes(magic + rest)
    try:
        load_image(path, size=8)
    except ImageInputError as exc:
        assert "y.img" in str(exc)
