"""The web app's text fields read into edit options, and the faders' words and values."""

import pytest

from pipelines.app_inputs import (
    AppInputError,
    fader_values,
    fader_words,
    parse_blend,
    parse_cross_replace,
    parse_reweights,
    parse_window,
    reweight_text,
    reweights_in,
    target_prompts,
)


def test_target_prompts_one_per_line():
    assert target_prompts(" a dog \n\n a cat on a mat\n") == ["a dog", "a cat on a mat"]
    for empty in ("", "  \n ", None):
        with pytest.raises(AppInputError, match="target prompt"):
            target_prompts(empty)


def test_windows():
    assert parse_window("0.8", "Self-replace", 0.4) == 0.8
    assert parse_window(" 0.2, 0.6 ", "Self-replace", 0.4) == (0.2, 0.6)
    assert parse_window("", "Self-replace", 0.4) == 0.4
    for bad in ("1.5", "0.6,0.2", "a", "nan", "0.1,0.2,0.3"):
        with pytest.raises(AppInputError, match="Self-replace"):
            parse_window(bad, "Self-replace", 0.4)


def test_cross_replace_with_words():
    assert parse_cross_replace("") == 0.8
    assert parse_cross_replace("0.6") == 0.6
    assert parse_cross_replace("0.6\ndog=0.2,0.4\n") == {"default_": 0.6, "dog": (0.2, 0.4)}
    assert parse_cross_replace("dog=0.4") == {"default_": 0.8, "dog": 0.4}
    with pytest.raises(AppInputError, match="one window"):
        parse_cross_replace("0.6\n0.7")
    with pytest.raises(AppInputError, match="WORD=WINDOW"):
        parse_cross_replace("=0.4")


def test_reweights_and_blend():
    assert parse_reweights("fluffy=2\n\n dog = -1.5 ") == {"fluffy": 2.0, "dog": -1.5}
    assert parse_reweights("  ") is None
    for bad, words in (("fluffy", "WORD=SCALE"), ("=2", "WORD=SCALE"), ("dog=lots", "not a number"), ("dog=inf", "not a number")):
        with pytest.raises(AppInputError, match=words):
            parse_reweights(bad)
    assert parse_blend("cat:dog, floor : rug") == (["cat", "floor"], ["dog", "rug"])
    assert parse_blend("") is None
    with pytest.raises(AppInputError, match="SOURCE_WORD:TARGET_WORD"):
        parse_blend("cat")


def test_faders_write_the_reweight_field_and_read_it_back():
    words = fader_words("A fluffy dog.\na dog, sleeping", limit=12)
    assert words == ["a", "fluffy", "dog", "sleeping"]
    assert fader_words("one two three", limit=2) == ["one", "two"]
    text = reweight_text(words, [1.0, 2.0, -0.5, 1.0])
    assert text == "fluffy=2\ndog=-0.5"
    assert parse_reweights(text) == {"fluffy": 2.0, "dog": -0.5}
    assert fader_values(words, text) == [1.0, 2.0, -0.5, 1.0]
    assert fader_values(words, "Fluffy=9\nnot a line") == [1.0, 1.0, 1.0, 1.0]  # unreadable: all at 1
    assert fader_values(words, "Fluffy=9") == [1.0, 2.0, 1.0, 1.0]  # clipped to the faders' range


def test_changed_targets_drop_the_reweights_of_words_they_no_longer_have():
    assert reweights_in("a dog on a mat", "fluffy=2\ndog=-1\non a=0.5") == "dog=-1\non a=0.5"
    assert reweights_in("a dog", "") == ""
    assert reweights_in("a dog", "not a line") == "not a line"  # left for the edit to report
