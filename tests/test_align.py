import pytest
import torch

from editing.align import (
    WordNotFoundError,
    refinement_mapper,
    replacement_mapper,
    word_spans,
    word_token_indices,
)
from models.tokenizer import build_clip_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_clip_tokenizer()


def test_word_spans_skip_punctuation_and_cover_multi_token_words(tok):
    # "a cat, on a hippopotamus": cat=2, ","=3, on=4, a=5, hippo potam us=6..8
    spans = word_spans("a cat, on a hippopotamus", tok)
    assert spans == [("a", 1, 2), ("cat,", 2, 3), ("on", 4, 5), ("a", 5, 6), ("hippopotamus", 6, 9)]


def test_word_indices(tok):
    assert word_token_indices("a cat, on a hippopotamus", "cat", tok) == [2]
    assert word_token_indices("a cat, on a hippopotamus", "hippopotamus", tok) == [6, 7, 8]
    assert word_token_indices("a cat on a bench", "a", tok) == [1, 4]  # every occurrence
    assert word_token_indices("a cat in the snow", "in the snow", tok) == [3, 4, 5]
    assert word_token_indices("A Cat sat", "cat", tok) == [2]


def test_missing_word_is_an_error(tok):
    with pytest.raises(WordNotFoundError, match="'dog' is not a word"):
        word_token_indices("a cat on a bench", "dog", tok)
    with pytest.raises(WordNotFoundError):
        word_token_indices("a caterpillar", "cat", tok)  # no partial-word matches


def test_replacement_mapper_same_token_count(tok):
    p = replacement_mapper("a cat on a bench", "a dog on a bench", tok)
    assert torch.equal(p, torch.eye(77))  # cat and dog are one token each: the identity


def test_replacement_mapper_one_to_three_tokens(tok):
    # source: <s> a cat on a bench </s> ; target: <s> a hippo potam us on a bench </s>
    p = replacement_mapper("a cat on a bench", "a hippopotamus on a bench", tok)
    expected = torch.zeros(77, 77)
    expected[0, 0] = expected[1, 1] = 1
    expected[2, [2, 3, 4]] = 1 / 3
    for i in range(3, 75):  # on, a, bench, </s> and padding walk along, shifted by 2
        expected[i, i + 2] = 1
    assert torch.allclose(p, expected)
    assert p[75:].sum() == 0  # the last source padding has no target position left


def test_replacement_mapper_three_to_one_tokens(tok):
    p = replacement_mapper("a hippopotamus on a bench", "a cat on a bench", tok)
    expected = torch.zeros(77, 77)
    expected[0, 0] = expected[1, 1] = 1
    expected[[2, 3, 4], 2] = 1.0  # m = 1: weight 1/1
    for i in range(5, 77):
        expected[i, i - 2] = 1
    assert torch.allclose(p, expected)


def test_replacement_mapper_equal_multi_token_words_map_in_order(tok):
    # hippopotamus = hippo potam us, rhinoceros = rhino cer os: both 3 tokens, k-th to k-th
    assert len(tok.tokenize("hippopotamus")) == len(tok.tokenize("rhinoceros")) == 3
    p = replacement_mapper("a hippopotamus swims", "a rhinoceros swims", tok)
    assert torch.equal(p, torch.eye(77))
    # armadillo (2 tokens) → rhinoceros (3): every source token to every target token, 1/3
    p = replacement_mapper("a armadillo swims", "a rhinoceros swims", tok)
    assert torch.allclose(p[2:4, 2:5], torch.full((2, 3), 1 / 3))
    assert p[4, 5] == 1 and p[2:4, 5:].sum() == 0


def test_replacement_mapper_needs_same_word_count(tok):
    with pytest.raises(ValueError, match="same number of words"):
        replacement_mapper("a cat", "a big dog", tok)


def test_refinement_added_words(tok):
    # source <s> a cat on a bench </s> (0..6); target <s> a fat cat on a wooden bench </s> (0..8)
    mapper, alphas = refinement_mapper("a cat on a bench", "a fat cat on a wooden bench", tok)
    aligned = {0: 0, 1: 1, 3: 2, 4: 3, 5: 4, 7: 5, 8: 6}
    for j, i in aligned.items():
        assert mapper[j] == i and alphas[j] == 1
    assert alphas[2] == 0 and alphas[6] == 0  # "fat", "wooden" are new
    assert torch.equal(mapper[9:], torch.arange(9, 77)) and bool((alphas[9:] == 1).all())


def test_refinement_tie_breaking_prefers_gap_in_source(tok):
    # "a cat" → "a a cat": which "a" aligns is decided by the tie rule. Worked by hand: at cell
    # (source "a", second target "a") left and diagonal both score 2 and left (a gap in the
    # source) wins, so the traceback leaves the second target "a" unaligned.
    mapper, alphas = refinement_mapper("a cat", "a a cat", tok)
    assert alphas[:5].tolist() == [1, 1, 0, 1, 1]
    assert mapper[[0, 1, 3, 4]].tolist() == [0, 1, 2, 3]


def test_refinement_identical_prompts_is_identity(tok):
    mapper, alphas = refinement_mapper("a cat on a bench", "a cat on a bench", tok)
    assert torch.equal(mapper, torch.arange(77)) and bool((alphas == 1).all())
