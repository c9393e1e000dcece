"""Frequency-sorted vocabularies and cutoffs for the adaptive softmax (``models.adaptive_softmax``).

The adaptive softmax needs token ids in order of frequency. For GPT-2's byte-level BPE the ids
are only the vocabulary's token -> id map (the merges are ranked separately), so a copy of the
tokenizer whose ``vocab.json`` numbers the tokens by their count in the training corpus encodes
every text into the same tokens, renumbered: ``write_frequency_ordered_bpe``. The cutoffs then
follow from how much of the corpus the most frequent tokens cover: ``coverage_cutoffs``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from train.data.tokenizers import ByteLevelBPETokenizer


def frequency_order(tokens, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, counts)``: the old ids from most to least frequent in ``tokens`` (ties, including
    the tokens never seen, by id), and their counts in that order."""
    counts = np.bincount(np.asarray(tokens, np.int64), minlength=vocab_size)[:vocab_size]
    order = np.argsort(-counts, kind="stable")
    return order, counts[order]


def coverage_cutoffs(sorted_counts, coverage=(0.9, 0.99)) -> tuple[int, ...]:
    """The cutoffs at which the most frequent tokens cover each fraction of the corpus: the
    shortlist holds the tokens making up ``coverage[0]`` of it, the first tail cluster those up to
    ``coverage[1]``, and so on; the last cluster holds the rest of the vocabulary."""
    coverage = tuple(float(c) for c in coverage)
    if not coverage or any(not 0 < c < 1 for c in coverage) or any(b <= a for a, b in zip(coverage, coverage[1:])):
        raise ValueError(f"coverage {list(coverage)} must be increasing fractions in (0, 1), e.g. [0.9, 0.99]")
    cumulative = np.cumsum(sorted_counts) / max(int(np.sum(sorted_counts)), 1)
    cutoffs = [int(np.searchsorted(cumulative, c) + 1) for c in coverage]
    cutoffs = sorted(set(min(c, len(sorted_counts) - 1) for c in cutoffs))
    return tuple(c for c in cutoffs if c > 0)


def write_frequency_ordered_bpe(tokenizer_dir, order: np.ndarray, out_dir) -> Path:
    """A byte-level BPE tokenizer folder whose ids follow ``order`` (new id i = old id order[i]):
    ``vocab.json`` renumbered, ``merges.txt`` as it was."""
    tokenizer = ByteLevelBPETokenizer.from_directory(tokenizer_dir)
    if sorted(order.tolist()) != list(range(tokenizer.vocab_size)):
        raise ValueError(f"order must be a permutation of the {tokenizer.vocab_size} ids of {tokenizer_dir}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {tokenizer.id_to_token(int(old)): new for new, old in enumerate(order)}
    merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return out
