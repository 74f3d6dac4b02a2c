import pytest

from models.tokenizer import VOCAB_SIZE, build_clip_tokenizer, check_tokenizer

# Token ids of OpenAI's CLIP tokenizer (the one SD v1 ships), as published with SD.
KNOWN = {
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
    "a hippopotamus": [49406, 320, 28398, 45825, 718, 49407],
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


def test_vocabulary_size(tokenizer):
    assert len(tokenizer) == VOCAB_SIZE == 49408


@pytest.mark.parametrize("text", sorted(KNOWN))
def test_ids_match_sd_tokenizer(tokenizer, text):
    assert tokenizer(text).input_ids == KNOWN[text]


def test_multi_token_word_splits_like_sd(tokenizer):
    # "hippopotamus" is one word but three BPE tokens in SD's vocabulary.
    assert tokenizer.tokenize("hippopotamus") == ["hippo", "potam", "us</w>"]
    assert tokenizer.tokenize("cat,") == ["cat</w>", ",</w>"]


def test_pads_to_77_with_end_token(tokenizer):
    ids = tokenizer("a cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(ids) == 77
    assert ids[:4] == [49406, 320, 2368, 49407]
    assert set(ids[4:]) == {49407}


def test_pipeline_tokenizer_is_the_real_one(tiny_pipe):
    assert tiny_pipe.tokenizer("a hippopotamus").input_ids == KNOWN["a hippopotamus"]


def test_two_token_tokenizer_is_rejected():
    class Broken:
        def __len__(self):
            return 2

    with pytest.raises(ValueError, match="49408"):
        check_tokenizer(Broken(), "somewhere")
