"""BERT/ALBERT pretraining data: sentence pairs and masked-LM corruption.

Documents are tokenised sentence by sentence. Each epoch, documents are walked in a seeded
order and their sentences gathered into chunks of about ``max_len - 3`` tokens (10% of chunks
shorter, so the model also sees short inputs), each split at a random sentence boundary into
segments A and B, laid out as ``[CLS] A [SEP] B [SEP]`` with segment ids 0 and 1:

- next-sentence prediction (BERT): half the time B is replaced by sentences from another
  document; label 0 = B follows A, 1 = B is random (transformers' convention);
- sentence-order prediction (ALBERT): A and B are always consecutive; half the time they are
  swapped; label 0 = in order, 1 = swapped.

Truncation policy: while a pair is longer than ``max_len - 3`` tokens, the last token of the
longer segment is dropped (B on ties), so both keep their beginnings.

Masked LM: ``rate`` (15%) of each sequence's real tokens are selected, never [CLS], [SEP] or
padding; of those 80% become [MASK], 10% a random token, 10% stay; the loss covers the selected
positions only. Whole-word masking selects whole words (a word starts at a token the tokenizer
marks as a word start); n-gram masking (ALBERT) selects spans of 1..n words with p(n) ∝ 1/n.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from train.data.tokenized import TokenizedCorpus
from train.data.tokenizers import training_sentences

OBJECTIVES = ("nsp", "sop")


class SentenceBoundaries:
    """A tokenizer wrapper whose ``encode(document)`` marks the end of every sentence with
    ``boundary_id``, so a cached ``TokenizedCorpus`` keeps sentence boundaries."""

    def __init__(self, tokenizer, boundary_id: int):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.eos_id = boundary_id

    def encode(self, text: str) -> list[int]:
        ids = []
        for sentence in training_sentences([text]):
            ids += self.tokenizer.encode(sentence) + [self.eos_id]
        return ids


def document_sentences(corpus: TokenizedCorpus) -> list[list[np.ndarray]]:
    """The sentences (token arrays) of each document of a corpus made with ``SentenceBoundaries``."""
    tokens = np.asarray(corpus.tokens)
    docs = []
    for start, end in zip(corpus.doc_offsets[:-1], corpus.doc_offsets[1:]):
        doc = tokens[start:end]
        cuts = np.flatnonzero(doc == corpus.eos_id)
        sentences = [s for s in np.split(doc, cuts + 1) if len(s) > 1]
        docs.append([s[:-1] for s in sentences])  # drop each sentence's boundary marker
    docs = [d for d in docs if d]
    if not docs:
        raise ValueError("the corpus has no sentences")
    return docs


def truncate_pair(a: np.ndarray, b: np.ndarray, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop the last token of the longer segment (B on ties) until both fit ``max_tokens``."""
    la, lb = len(a), len(b)
    while la + lb > max_tokens:
        if la > lb:
            la -= 1
        else:
            lb -= 1
    if la == 0 or lb == 0:
        raise ValueError(f"a pair cannot fit in {max_tokens} tokens with both segments non-empty")
    return a[:la], b[:lb]


def build_pair(a, b, max_len: int, cls_id: int, sep_id: int, pad_id: int, truncate: bool = True):
    """``[CLS] A [SEP] B [SEP]`` padded to ``max_len`` -> (input_ids, token_type_ids, attention_mask)."""
    a, b = np.asarray(a, np.int32), np.asarray(b, np.int32)
    if len(a) + len(b) + 3 > max_len:
        if not truncate:
            raise ValueError(
                f"the pair has {len(a) + len(b) + 3} tokens with [CLS]/[SEP], over max_len={max_len}; "
                "truncate it (truncate=True drops tokens from the end of the longer segment) or raise max_len"
            )
        a, b = truncate_pair(a, b, max_len - 3)
    ids = np.full(max_len, pad_id, np.int32)
    types = np.zeros(max_len, np.int32)
    seq = np.concatenate([[cls_id], a, [sep_id], b, [sep_id]])
    ids[: len(seq)] = seq
    types[len(a) + 2 : len(seq)] = 1
    mask = (np.arange(max_len) < len(seq)).astype(np.int32)
    return ids, types, mask


def make_pairs(docs, max_len: int, objective: str, rng: np.random.Generator, short_seq_prob: float = 0.1):
    """One epoch of sentence-pair instances -> list of (A, B, label)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    budget = max_len - 3
    if budget < 2:
        raise ValueError(f"max_len={max_len} leaves no room for two segments between [CLS]/[SEP]")
    pairs = []
    for d in rng.permutation(len(docs)):
        doc = docs[d]
        target = budget if rng.random() >= short_seq_prob else int(rng.integers(2, budget + 1))
        chunk, length = [], 0
        for i, sentence in enumerate(doc):
            chunk.append(sentence)
            length += len(sentence)
            if i < len(doc) - 1 and length < target:
                continue
            pair = _split_chunk(chunk, docs, d, objective, target, rng)
            if pair is not None:
                pairs.append(pair)
            chunk, length = [], 0
            target = budget if rng.random() >= short_seq_prob else int(rng.integers(2, budget + 1))
    if not pairs:
        raise ValueError("no sentence pairs could be made: documents need at least two sentences")
    return pairs


def _split_chunk(chunk, docs, d, objective, target, rng):
    if len(chunk) < 2 and (objective == "sop" or len(docs) < 2):
        return None
    a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
    a = np.concatenate(chunk[:a_end])
    if objective == "nsp" and (len(chunk) == 1 or rng.random() < 0.5):
        other = docs[_other_doc(len(docs), d, rng)]
        start = int(rng.integers(len(other)))
        b_sentences, length = [], 0
        for s in other[start:]:
            b_sentences.append(s)
            length += len(s)
            if length >= target - len(a):
                break
        return a, np.concatenate(b_sentences), 1
    b = np.concatenate(chunk[a_end:])
    if objective == "sop" and rng.random() < 0.5:
        return b, a, 1
    return a, b, 0


def _other_doc(n: int, d: int, rng) -> int:
    other = int(rng.integers(n - 1))
    return other + (other >= d)


def mask_tokens(ids, maskable, rng, *, mask_id: int, random_ids, rate: float = 0.15, word_starts=None,
                max_ngram: int = 1):
    """Masked-LM corruption of one sequence -> (inputs, labels, weights).

    ``maskable``: bool per position (False for [CLS], [SEP], padding). ``word_starts``: bool
    per position, True where a word begins (None: every token is its own word). ``max_ngram`` > 1
    selects spans of up to that many words, with p(n) ∝ 1/n.
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"masking rate {rate} must lie in (0, 1)")
    positions = np.flatnonzero(maskable)
    inputs, labels, weights = ids.copy(), ids.copy(), np.zeros(len(ids), np.float32)
    if len(positions) == 0:
        return inputs, labels, weights
    starts = np.ones(len(positions), bool) if word_starts is None else np.asarray(word_starts)[positions]
    starts[0] = True
    words = np.split(positions, np.flatnonzero(starts)[1:])
    budget = max(1, int(round(len(positions) * rate)))
    ngram_p = 1.0 / np.arange(1, max_ngram + 1)
    ngram_p /= ngram_p.sum()
    chosen, count = [], 0
    for w in rng.permutation(len(words)):
        n = int(rng.choice(max_ngram, p=ngram_p)) + 1 if max_ngram > 1 else 1
        # The longest span of up to n words from here that is free and fits the budget.
        for m in range(n, 0, -1):
            span = np.concatenate(words[w : w + m])
            if count + len(span) <= budget and not weights[span].any():
                weights[span] = 1.0
                chosen.append(span)
                count += len(span)
                break
        if count >= budget:
            break
    if not chosen:  # every word is longer than the budget: mask the start of one
        span = words[int(rng.integers(len(words)))][:budget]
        weights[span] = 1.0
        chosen.append(span)
    selected = np.concatenate(chosen)
    roll = rng.random(len(selected))
    inputs[selected[roll < 0.8]] = mask_id
    swap = selected[(roll >= 0.8) & (roll < 0.9)]
    inputs[swap] = rng.choice(random_ids, size=len(swap))
    return inputs, labels, weights


class PairEncoder:
    """Lays out, pads and masks sentence pairs into model inputs."""

    def __init__(self, specials: Mapping[str, int], *, max_len: int, rate: float = 0.15, word_start_table=None,
                 max_ngram: int = 1):
        if not 0.0 < rate < 1.0:
            raise ValueError(f"masking rate {rate} must lie in (0, 1)")
        self.specials, self.max_len, self.rate, self.max_ngram = dict(specials), max_len, rate, max_ngram
        self.word_start_table = word_start_table
        special = {specials["cls"], specials["sep"], specials["pad"], specials["mask"]}
        self.random_ids = np.array([i for i in range(specials["vocab_size"]) if i not in special], np.int32)

    def rows(self, pairs, keys) -> dict:
        """One row per (pair or None for padding, masking rng key)."""
        s = self.specials
        out = {k: [] for k in ("input_ids", "token_type_ids", "attention_mask", "mlm_labels", "mlm_weights",
                               "pair_labels", "pair_weights")}
        for pair, key in zip(pairs, keys):
            real = pair is not None
            a, b, label = pair if real else (np.array([s["pad"]]), np.array([s["pad"]]), 0)
            ids, types, mask = build_pair(a, b, self.max_len, s["cls"], s["sep"], s["pad"])
            maskable = mask.astype(bool) & (ids != s["cls"]) & (ids != s["sep"])
            starts = None if self.word_start_table is None else self.word_start_table[ids]
            inputs, labels, weights = mask_tokens(
                ids, maskable, np.random.default_rng(key), mask_id=s["mask"], random_ids=self.random_ids,
                rate=self.rate, word_starts=starts, max_ngram=self.max_ngram,
            )
            for name, value in zip(out, (inputs, types, mask, labels, weights * real, label, float(real))):
                out[name].append(value)
        return {k: np.asarray(v, np.float32 if k.endswith("weights") else np.int32) for k, v in out.items()}


class SentencePairBatches:
    """Infinite, deterministic batches of masked sentence pairs, resumable like ``PackedBatches``.

    Yields ``input_ids``, ``token_type_ids``, ``attention_mask``, ``mlm_labels``, ``mlm_weights``,
    ``pair_labels`` (NSP or SOP), ``pair_weights``; all [batch, ...] numpy arrays. Each epoch
    draws its pairs and their order from the seed; row r of global step s in epoch e is masked
    with ``default_rng((seed, e, s, r))``, so any number of hosts gives the same global batch.
    """

    def __init__(self, docs, encoder: PairEncoder, *, batch_size: int, objective: str, seed: int = 0,
                 process_index: int = 0, process_count: int = 1):
        self.docs, self.encoder, self.objective = docs, encoder, objective
        self.batch_size, self.seed = batch_size, int(seed)
        self.process_index, self.global_batch_size = process_index, batch_size * process_count
        self._epoch, self._step, self._cached = 0, 0, (None, None)
        self.batches_per_epoch = len(self._epoch_pairs(0)) // self.global_batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(self._epoch_pairs(0))} sentence pairs are fewer than one global batch of "
                f"{self.global_batch_size}; use more data or a smaller batch"
            )

    def _epoch_pairs(self, epoch: int):
        if self._cached[0] != epoch:
            rng = np.random.default_rng((self.seed, epoch))
            pairs = make_pairs(self.docs, self.encoder.max_len, self.objective, rng)
            self._cached = (epoch, [pairs[i] for i in rng.permutation(len(pairs))])
        return self._cached[1]

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        pairs = self._epoch_pairs(self._epoch)
        first = self._step * self.global_batch_size + self.process_index * self.batch_size
        rows = range(first, first + self.batch_size)
        batch = self.encoder.rows([pairs[r] for r in rows], [(self.seed, self._epoch, self._step, r) for r in rows])
        self._step += 1
        if self._step == self.batches_per_epoch:
            self._epoch, self._step = self._epoch + 1, 0
        return batch

    def _settings(self) -> dict:
        return {"seed": self.seed, "global_batch_size": self.global_batch_size, "max_len": self.encoder.max_len,
                "objective": self.objective}

    def state(self) -> dict:
        return {"epoch": self._epoch, "step_in_epoch": self._step, **self._settings()}

    def restore(self, state: Mapping) -> None:
        for key, value in self._settings().items():
            if state.get(key) != value:
                raise ValueError(f"data state has {key}={state.get(key)!r}, this run has {value!r}")
        self._epoch, self._step = int(state["epoch"]), int(state["step_in_epoch"])


def eval_pair_batches(docs, encoder: PairEncoder, *, batch_size: int, objective: str, seed: int = 0,
                      process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
    """One fixed pass over the held-out pairs (drawn once from ``seed``, in document order of
    that draw); the last batch is padded with zero-weight rows."""
    pairs = make_pairs(docs, encoder.max_len, objective, np.random.default_rng((seed, 0)))
    global_batch = batch_size * process_count
    for first in range(0, len(pairs), global_batch):
        rows = range(first + process_index * batch_size, first + (process_index + 1) * batch_size)
        yield encoder.rows([pairs[r] if r < len(pairs) else None for r in rows], [(seed, r) for r in rows])


def word_start_table(tokenizer) -> np.ndarray:
    """bool per vocabulary id: True where the piece begins a word (sentencepiece '▁', byte-level
    BPE 'Ġ', WordPiece: every piece but '##' continuations)."""
    pieces = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    if any(p.startswith("##") for p in pieces):
        return np.array([not p.startswith("##") for p in pieces])
    marker = "▁" if any(p.startswith("▁") for p in pieces) else "Ġ"
    specials = {getattr(tokenizer, f"{k}_id", None) for k in ("cls", "sep", "pad", "mask", "unk", "bos", "eos")}
    return np.array([p.startswith(marker) or i in specials for i, p in enumerate(pieces)])


def special_ids(tokenizer) -> dict:
    """The [CLS]/[SEP]/[MASK]/padding ids pair building needs, with a clear error if one is missing."""
    ids = {k: getattr(tokenizer, f"{k}_id", None) for k in ("cls", "sep", "mask", "pad")}
    missing = [k for k, v in ids.items() if v is None]
    if missing:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no {', '.join(f'[{m.upper()}]' for m in missing)} token; "
            "BERT/ALBERT pretraining needs [CLS], [SEP], [MASK] and padding (train_sentencepiece adds them)"
        )
    return {**ids, "vocab_size": tokenizer.vocab_size}
