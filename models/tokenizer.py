"""Stable Diffusion's CLIP tokenizer, rebuilt offline from the vendored BPE merges file.

The merges file (``assets/tokenizer/bpe_simple_vocab_16e6.txt.gz``, MIT, from open_clip) is the
one OpenAI's CLIP was trained with. The vocabulary is derived from it the way CLIP's
SimpleTokenizer does: the 256 byte symbols, the same symbols with ``</w>``, one entry per merge,
then the start and end tokens, 49,408 entries in all.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from transformers import CLIPTokenizer

BPE_FILE = Path(__file__).parent / "assets" / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins CLIP's BPE uses for raw bytes, in CLIP's vocabulary order.

    Printable bytes stand for themselves and come first; the others are mapped, in byte order,
    to the code points from 256 up and follow.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def build_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Derive CLIP's vocabulary and merge list from the vendored BPE file.

    Returns:
        (vocab, merges): token → id (49,408 entries) and the merge rules as "a b" strings.
    """
    lines = gzip.decompress(BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 1 + VOCAB_SIZE - 2 * 256 - 2]
    base = _byte_symbols()
    tokens = base + [s + "</w>" for s in base] + ["".join(m.split()) for m in merges]
    tokens += [START_TOKEN, END_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"derived CLIP vocabulary has {len(vocab)} entries, expected {VOCAB_SIZE}")
    return vocab, merges


def build_clip_tokenizer(pad_token: str = END_TOKEN) -> CLIPTokenizer:
    """SD v1's CLIP tokenizer (49,408 tokens, padding to 77), built from the vendored BPE file.

    ``pad_token``: the end token (SD, SDXL's first tokenizer) or "!" (SDXL's second one, as
    open_clip pads with id 0)."""
    vocab, merges = build_vocab_and_merges()
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=[tuple(m.split()) for m in merges],
        model_max_length=77,
        bos_token=START_TOKEN,
        eos_token=END_TOKEN,
        unk_token=END_TOKEN,
        pad_token=pad_token,
    )
    check_tokenizer(tokenizer, str(BPE_FILE))
    return tokenizer


def check_tokenizer(tokenizer, where: str) -> None:
    """Raise ValueError unless ``tokenizer`` has CLIP's full 49,408-token vocabulary.

    ``CLIPTokenizer.from_pretrained`` on a folder without tokenizer files silently returns a
    2-token tokenizer; every prompt would then tokenize to nonsense.
    """
    if len(tokenizer) != VOCAB_SIZE:
        raise ValueError(
            f"the tokenizer loaded from {where} has {len(tokenizer)} tokens, not CLIP's {VOCAB_SIZE}: "
            "its tokenizer/ folder is missing vocab.json and merges.txt. Re-download the model "
            "or copy the tokenizer/ folder of a Stable Diffusion checkpoint into it."
        )
