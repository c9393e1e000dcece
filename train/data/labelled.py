"""Labelled examples for classification: rows with a text and a label -> fixed-length token ids,
cached on disk; shuffled, resumable training batches and one-pass evaluation batches.

A row's text becomes at most ``seq_len`` ids, framed for the model family: a decoder reads the
first ``seq_len - 1`` tokens and the end-of-text token (so its last real position has seen the
whole input), an encoder ``[CLS]``, the first ``seq_len - 2`` tokens and ``[SEP]``. Rows are
padded on the right with id 0 and an attention mask of 0. Labels are kept as strings; a
classifier's ``labels`` (class names) turn them into class indices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from train.data.documents import data_files, load_documents
from train.data.packing import _check_layout, _check_seed, _check_state

_CACHE_VERSION = 1
FRAMINGS = ("decoder", "encoder")


@dataclasses.dataclass(frozen=True)
class LabelledExamples:
    ids: np.ndarray  # int32 [n, seq_len], right-padded with 0
    lengths: np.ndarray  # int32 [n], real tokens per row
    labels: np.ndarray  # str [n]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def classes(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.labels.tolist())))


def check_classes(examples: LabelledExamples, classes, split: str, label_field: str) -> np.ndarray:
    """The class index of every row; refuses labels outside ``classes`` and, since per-class
    metrics need them, classes with no row in this split."""
    present = set(examples.classes())
    unknown = sorted(present - set(classes))
    if unknown:
        raise ValueError(
            f"the {split} split has labels {unknown} in column {label_field!r} that the classifier does not know "
            f"(its classes, from the training split: {list(classes)}); fix the data or retrain on data with them"
        )
    missing = [c for c in classes if c not in present]
    if missing and split != "train":
        raise ValueError(
            f"the {split} split has no examples of the class(es) {missing} (column {label_field!r}); accuracy and "
            "macro-F1 would ignore them: re-split the data so every class appears in every split"
        )
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[label] for label in examples.labels.tolist()], np.int32)


def frame(tokenizer, framing: str, seq_len: int):
    """``(special ids before, special ids after)`` of each row for ``framing``."""
    if framing == "encoder":
        if tokenizer.cls_id is None or tokenizer.sep_id is None:
            raise ValueError("an encoder classifier frames its input as [CLS] text [SEP]; this tokenizer has no "
                             "[CLS] or [SEP] token: use the tokenizer the model was pretrained with")
        before, after = [tokenizer.cls_id], [tokenizer.sep_id]
    elif framing == "decoder":
        before, after = [], ([] if tokenizer.eos_id is None else [tokenizer.eos_id])
    else:
        raise ValueError(f"unknown framing {framing!r}; choose one of {FRAMINGS}")
    if seq_len <= len(before) + len(after):
        raise ValueError(f"seq_len={seq_len} leaves no room for text beside {len(before) + len(after)} special tokens")
    return before, after


def head_tokens(tokenizer, text: str, n: int) -> list[int]:
    """The first ``n`` tokens of ``text``. Long texts are tokenised from a prefix cut at a space,
    which tokenises like the same words of the full text, growing it until it gives ``n`` tokens."""
    budget = 8 * n + 64
    while True:
        cut = text.rfind(" ", 0, budget)
        prefix = text if len(text) <= budget else text[: cut if cut > 0 else budget]
        ids = tokenizer.encode(prefix)
        if len(ids) >= n or len(prefix) == len(text):
            return ids[:n]
        budget *= 4


def encode_texts(texts, tokenizer, seq_len: int, framing: str) -> tuple[np.ndarray, np.ndarray]:
    before, after = frame(tokenizer, framing, seq_len)
    room = seq_len - len(before) - len(after)
    ids = np.zeros((len(texts), seq_len), np.int32)
    lengths = np.zeros(len(texts), np.int32)
    for i, text in enumerate(texts):
        row = before + head_tokens(tokenizer, text, room) + after
        ids[i, : len(row)] = row
        lengths[i] = len(row)
    if ids.size and ids.max() >= tokenizer.vocab_size:
        raise ValueError(f"token ids reach {ids.max()} but the tokenizer has {tokenizer.vocab_size} tokens")
    return ids, lengths


def load_labelled(source, split: str, tokenizer, tokenizer_key: str, cache_dir, *, seq_len: int, framing: str,
                  text_field: str = "text", label_field: str = "label") -> LabelledExamples:
    """Read ``source`` (a JSONL/CSV/Parquet file or a split -> files dict, as ``load_documents``),
    tokenise and frame every row, and cache the arrays under ``cache_dir``, keyed by the files'
    paths, sizes and mtimes, the tokenizer, the fields, ``seq_len`` and ``framing``."""
    files = data_files(source, split)
    key = {
        "version": _CACHE_VERSION, "source": None if files else repr(source),
        "files": [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files or []],
        "tokenizer": tokenizer_key, "split": split, "text_field": text_field, "label_field": label_field,
        "seq_len": seq_len, "framing": framing,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"labelled-{digest}.npz"
    if path.exists():
        with np.load(path) as z:
            return LabelledExamples(z["ids"], z["lengths"], z["labels"])
    rows = load_documents(source, split, text_field)
    if label_field not in rows.column_names:
        raise ValueError(
            f"label field {label_field!r} not found in {source!r} (split {split!r}); available columns: "
            f"{rows.column_names}. Set data.label_field to the column that holds the labels (--set data.label_field=COLUMN)."
        )
    texts, labels = rows[text_field], rows[label_field]
    for name, values in ((text_field, texts), (label_field, labels)):
        empty = [i for i, v in enumerate(values) if v is None or (name == text_field and not str(v).strip())]
        if empty:
            raise ValueError(f"{source!r} (split {split!r}): rows {empty[:5]} have no {name!r} value; "
                             "fill or drop them")
    ids, lengths = encode_texts(texts, tokenizer, seq_len, framing)
    examples = LabelledExamples(ids, lengths, np.array([str(label) for label in labels]))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        np.savez(f, ids=examples.ids, lengths=examples.lengths, labels=examples.labels)
    os.replace(tmp, path)
    return examples


def _batch(examples: LabelledExamples, label_ids: np.ndarray, rows: np.ndarray, valid: np.ndarray) -> dict:
    lengths = np.where(valid, examples.lengths[rows], 0)
    mask = (np.arange(examples.ids.shape[1])[None, :] < lengths[:, None]).astype(np.int32)
    return {
        "input_ids": np.where(mask, examples.ids[rows], 0).astype(np.int32),
        "attention_mask": mask,
        "labels": np.where(valid, label_ids[rows], 0).astype(np.int32),
        "weights": valid.astype(np.float32),
    }


class ExampleBatches:
    """Infinite, deterministic training batches of labelled examples.

    Each epoch visits the rows in the order ``np.random.default_rng((seed, epoch))`` draws, in
    global batches of ``batch_size * process_count`` rows (a last, incomplete batch is dropped);
    host ``process_index`` gets its ``batch_size`` rows of each. Yields ``input_ids`` and
    ``attention_mask`` int32 ``[batch_size, seq_len]``, ``labels`` int32 and ``weights`` float32
    ``[batch_size]``. ``state()``/``restore`` resume exactly, as ``PackedBatches`` do.
    """

    def __init__(self, examples: LabelledExamples, label_ids: np.ndarray, batch_size: int, *, seed: int = 0,
                 process_index: int = 0, process_count: int = 1):
        _check_layout(examples.ids.shape[1], batch_size, process_index, process_count)
        _check_seed(seed)
        self.examples, self.label_ids = examples, label_ids
        self.batch_size, self.seed, self.process_index = batch_size, int(seed), process_index
        self.global_batch_size = batch_size * process_count
        self.batches_per_epoch = len(examples) // self.global_batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{len(examples)} training examples fill no batch of {self.global_batch_size}; "
                             "lower batch_size or add data")
        self._epoch, self._step, self._order = 0, 0, (None, None)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._order[0] != self._epoch:
            self._order = (self._epoch, np.random.default_rng((self.seed, self._epoch)).permutation(len(self.examples)))
        first = self._step * self.global_batch_size + self.process_index * self.batch_size
        rows = self._order[1][first: first + self.batch_size]
        self._step += 1
        if self._step == self.batches_per_epoch:
            self._epoch, self._step = self._epoch + 1, 0
        return _batch(self.examples, self.label_ids, rows, np.ones(len(rows), bool))

    def state(self) -> dict:
        return {"epoch": self._epoch, "step_in_epoch": self._step, **self._settings()}

    def restore(self, state: Mapping) -> None:
        _check_state(state, self._settings())
        if not 0 <= state["step_in_epoch"] < self.batches_per_epoch or state["epoch"] < 0:
            raise ValueError(f"state position {state} is outside the {self.batches_per_epoch}-batch epoch")
        self._epoch, self._step = int(state["epoch"]), int(state["step_in_epoch"])

    def _settings(self) -> dict:
        return {"seed": self.seed, "global_batch_size": self.global_batch_size, "examples": len(self.examples)}


def eval_example_batches(examples: LabelledExamples, label_ids: np.ndarray, batch_size: int, *,
                         process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the rows in their stored order, every row exactly once; the last batches
    are padded with rows of weight 0, and every host yields the same number of batches."""
    _check_layout(examples.ids.shape[1], batch_size, process_index, process_count)
    global_batch = batch_size * process_count
    for first in range(0, len(examples), global_batch):
        rows = first + process_index * batch_size + np.arange(batch_size)
        valid = rows < len(examples)
        yield _batch(examples, label_ids, np.where(valid, rows, 0), valid)
