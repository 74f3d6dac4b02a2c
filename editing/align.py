"""Token bookkeeping between prompts: where a word's tokens are, and how source tokens map to
target tokens for a word swap (replacement mapper) or an added phrase (refinement alignment).

Positions count the start token as 0, so a prompt's first word starts at position 1.
"""

from __future__ import annotations

import string

import torch

MAX_TOKENS = 77


class WordNotFoundError(ValueError):
    """A word was asked for that the prompt does not contain."""


def _bpe(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without start and end tokens."""
    return tokenizer(text, add_special_tokens=False).input_ids if text else []


def word_spans(prompt: str, tokenizer) -> list[tuple[str, int, int]]:
    """Split ``prompt`` on spaces and find each word's tokens.

    Returns:
        One (word, start, end) per space-separated word: its tokens are positions start..end-1 of
        the tokenized prompt (start token at 0). Surrounding punctuation is kept out of the span
        ("cat," spans only the tokens of "cat") where it tokenizes separately, which CLIP's BPE does.
    """
    spans = []
    position = 1
    for word in prompt.split(" "):
        core = word.strip(string.punctuation)
        ids = _bpe(tokenizer, word)
        start, end = position, position + len(ids)
        if core and core != word:
            lead = word[: word.index(core)]
            lead_ids, core_ids = _bpe(tokenizer, lead), _bpe(tokenizer, core)
            if ids[len(lead_ids) : len(lead_ids) + len(core_ids)] == core_ids:
                start, end = position + len(lead_ids), position + len(lead_ids) + len(core_ids)
        spans.append((word, start, end))
        position += len(ids)
    return spans


def _norm(word: str) -> str:
    return word.strip(string.punctuation).lower()


def word_matches(prompt: str, words: str) -> list[int]:
    """Indices (into ``prompt.split(" ")``) where ``words`` starts: one word or several
    consecutive ones ("in the snow"), matched ignoring case and surrounding punctuation."""
    query = [_norm(w) for w in words.split()]
    have = [_norm(w) for w in prompt.split(" ")]
    if not query or not all(query):
        return []
    return [i for i in range(len(have) - len(query) + 1) if have[i : i + len(query)] == query]


def word_token_indices(prompt: str, words: str, tokenizer) -> list[int]:
    """Token positions of every occurrence of ``words`` in ``prompt`` (see ``word_matches``).

    Raises:
        WordNotFoundError: ``words`` does not occur in ``prompt``.
    """
    spans = word_spans(prompt, tokenizer)
    n = len(words.split())
    found = sorted(
        {pos for i in word_matches(prompt, words) for _, start, end in spans[i : i + n] for pos in range(start, end)}
    )
    if not found:
        raise WordNotFoundError(
            f"'{words}' is not a word of the prompt '{prompt}' (its words are: "
            f"{', '.join(repr(w) for w, _, _ in spans)}). Use a word exactly as it appears in the prompt."
        )
    return found


def token_count(prompt: str, tokenizer) -> int:
    """Number of tokens ``prompt`` takes, start and end tokens included."""
    return len(_bpe(tokenizer, prompt)) + 2


def replacement_mapper(source: str, target: str, tokenizer, max_len: int = MAX_TOKENS) -> torch.Tensor:
    """The L×L word-swap mapper P: ``edit = M_src · P`` sends source token i to target token j.

    Both prompts must have the same number of space-separated words. Unchanged words map token to
    token; a swapped word of n source tokens and m target tokens maps k-th to k-th when n = m and
    every source token to every target token with weight 1/m otherwise. Start, end and padding
    tokens map along (i → j walking both sequences together).

    Returns:
        Tensor [max_len, max_len] (float32).
    """
    src_words, tgt_words = source.split(" "), target.split(" ")
    if len(src_words) != len(tgt_words):
        raise ValueError(
            f"a word swap needs prompts with the same number of words: '{source}' has "
            f"{len(src_words)}, '{target}' has {len(tgt_words)}"
        )
    mapper = torch.zeros(max_len, max_len)
    i = j = 0

    def walk(n: int) -> None:
        nonlocal i, j
        for _ in range(n):
            if i < max_len and j < max_len:
                mapper[i, j] = 1.0
            i, j = i + 1, j + 1

    walk(1)  # start token
    for sw, tw in zip(src_words, tgt_words):
        s_ids, t_ids = _bpe(tokenizer, sw), _bpe(tokenizer, tw)
        if sw == tw or len(s_ids) == len(t_ids):
            walk(len(s_ids))
            continue
        rows = [r for r in range(i, i + len(s_ids)) if r < max_len]
        cols = [c for c in range(j, j + len(t_ids)) if c < max_len]
        for r in rows:
            mapper[r, cols] = 1.0 / len(t_ids)
        i, j = i + len(s_ids), j + len(t_ids)
    walk(max_len)  # end token and padding
    return mapper


def _align(x: list[int], y: list[int]) -> list[int]:
    """Needleman–Wunsch alignment (match +1, mismatch −1, gap 0) of token sequences x (source)
    and y (target). Returns, per position of y, the aligned position in x or −1.

    Ties, frequent with gap 0, are broken as the reference does: a gap in x (y token unaligned)
    first, then a gap in y, then the diagonal; traced back from the bottom-right corner.
    """
    n, m = len(x), len(y)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    move = [[0] * (m + 1) for _ in range(n + 1)]  # 1 left (gap in x), 2 up (gap in y), 3 diagonal
    for j in range(1, m + 1):
        move[0][j] = 1
    for i in range(1, n + 1):
        move[i][0] = 2
        for j in range(1, m + 1):
            left = score[i][j - 1]
            up = score[i - 1][j]
            diag = score[i - 1][j - 1] + (1 if x[i - 1] == y[j - 1] else -1)
            best = max(left, up, diag)
            score[i][j] = best
            move[i][j] = 1 if best == left else 2 if best == up else 3
    aligned = [-1] * m
    i, j = n, m
    while i > 0 or j > 0:
        if move[i][j] == 3:
            i, j = i - 1, j - 1
            aligned[j] = i
        elif move[i][j] == 1:
            j -= 1
        else:
            i -= 1
    return aligned


def refinement_mapper(source: str, target: str, tokenizer, max_len: int = MAX_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Alignment of an added phrase: for each target token, the source token it copies.

    Returns:
        (mapper, alphas): mapper [max_len] int64, the source position each target position reads
        (itself for padding beyond the target); alphas [max_len] float, 1 where the target token
        is aligned to a source token (or is padding), 0 where it is new.
    """
    x = tokenizer(source).input_ids
    y = tokenizer(target).input_ids
    aligned = _align(x, y)[:max_len]
    mapper = torch.arange(max_len)
    alphas = torch.ones(max_len)
    for j, a in enumerate(aligned):
        mapper[j] = a if a >= 0 else j
        alphas[j] = 1.0 if a >= 0 else 0.0
    return mapper, alphas
