"""Token ids -> numpy batches: packed training blocks (in memory or streamed) and evaluation passes.

Every training iterator is deterministic from a seed and has a small JSON-able `state()` that
`restore` turns back into exactly the same future batches, so a resumed run sees the data an
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import islice

import datasets
import numpy as np
from datasets.distributed import split_dataset_by_node

from train.data.documents import check_text_field
from train.data.tokenized import TokenizedCorpus, check_ids, eos_id


def _check_layout(seq_len: int, batch_size: int, process_index: int, process_count: int) -> None:
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size (per host) must be >= 1, got {batch_size}")
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"need 0 <= process_index < process_count, got {process_index}, {process_count}"
        )


def _check_seed(seed) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def _check_state(state: Mapping, expected: Mapping) -> None:
    """Refuses a state saved under other settings: resuming it would silently change the data."""
    bad = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
    if bad:
        diffs = ", ".join(f"{k}: state has {s!r}, this pipeline has {v!r}" for k, (s, v) in bad.items())
        raise ValueError(
            f"data state does not match this pipeline ({diffs}); resume with the same settings"
        )


def _split_block(block: np.ndarray) -> dict[str, np.ndarray]:
    return {"inputs": np.ascontiguousarray(block[:, :-1]), "targets": np.ascontiguousarray(block[:, 1:])}


class PackedBatches:
    """Infinite, deterministic batches of packed documents from a `TokenizedCorpus`.

    Each epoch shuffles the document order with `np.random.default_rng((seed, epoch))`,
    concatenates the documents (each already ends with eos), cuts the stream into blocks of
    `seq_len + 1` tokens and groups consecutive blocks into global batches of
    `batch_size * process_count` blocks; the tail that fills no whole batch is dropped. Host
    `process_index` gets rows `[process_index * batch_size, (process_index + 1) * batch_size)` of
    each global batch, reading only those tokens. Yields `{'inputs', 'targets'}`, int32
    `[batch_size, seq_len]`, with targets the inputs shifted by one.

    The state counts global batches, so it is the same on every host and can be restored on a
    different number of hosts as long as the global batch size is unchanged.
    """

    def __init__(
        self,
        corpus: TokenizedCorpus,
        seq_len: int,
        batch_size: int,
        *,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ):
        _check_layout(seq_len, batch_size, process_index, process_count)
        _check_seed(seed)
        self.corpus = corpus
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = int(seed)
        self.process_index = process_index
        self.global_batch_size = batch_size * process_count
        needed = self.global_batch_size * (seq_len + 1)
        if corpus.num_tokens < needed:
            raise ValueError(
                f"corpus has {corpus.num_tokens} tokens but one global batch needs {needed} "
                f"({self.global_batch_size} rows x {seq_len + 1} tokens); use more data or a smaller "
                "seq_len or batch_size"
            )
        self.batches_per_epoch = corpus.num_tokens // needed
        self._lengths = np.diff(corpus.doc_offsets)
        self._epoch, self._step = 0, 0
        self._layout = (None, None, None)  # (epoch, shuffled doc ids, their end positions)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        order, ends = self._epoch_layout(self._epoch)
        block_len = self.seq_len + 1
        rows = self._step * self.global_batch_size + self.process_index * self.batch_size
        pos = (rows + np.arange(self.batch_size))[:, None] * block_len + np.arange(block_len)
        doc = np.searchsorted(ends, pos, side="right")  # index into the shuffled order
        start_in_stream = ends[doc] - self._lengths[order[doc]]
        src = self.corpus.doc_offsets[order[doc]] + pos - start_in_stream
        block = np.asarray(self.corpus.tokens[src])
        self._step += 1
        if self._step == self.batches_per_epoch:
            self._epoch, self._step = self._epoch + 1, 0
        return _split_block(block.astype(np.int32, copy=False))

    def _epoch_layout(self, epoch: int):
        if self._layout[0] != epoch:
            order = np.random.default_rng((self.seed, epoch)).permutation(self.corpus.num_docs)
            self._layout = (epoch, order, np.cumsum(self._lengths[order]))
        return self._layout[1:]

    def state(self) -> dict:
        """Position of the next batch, as plain JSON-able values."""
        return {"epoch": self._epoch, "step_in_epoch": self._step, **self._settings()}

    def restore(self, state: Mapping) -> None:
        """Continues from a `state()` so the next batch is the one that followed it."""
        _check_state(state, self._settings())
        epoch, step = state["epoch"], state["step_in_epoch"]
        if epoch < 0 or not 0 <= step < self.batches_per_epoch:
            raise ValueError(
                f"state position (epoch {epoch}, step {step}) is outside the "
                f"{self.batches_per_epoch}-batch epoch"
            )
        self._epoch, self._step = int(epoch), int(step)

    def _settings(self) -> dict:
        return {
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch_size": self.global_batch_size,
            "num_tokens": self.corpus.num_tokens,
        }


# ---------------------------------------------------------------------------------------------
# Streaming training batches


class StreamingPackedBatches:
    """Infinite packed batches tokenised on the fly from an `IterableDataset` (hub-scale corpora).

    Per epoch the dataset's shards are visited in an order drawn from `(seed, epoch)`. Each
    shard is read in windows of `shuffle_window` documents, shuffled with `(seed, epoch, shard,
    window)`; documents are tokenised, eos-terminated and appended to a carry-over buffer from
    which batches of `batch_size` blocks of `seq_len + 1` tokens are cut, so no token is dropped.

    Hosts split the data: by whole shards when the shard count is a multiple of
    `process_count` (the assignment changes each epoch), otherwise by taking every
    `process_count`-th document of each shard (`split_dataset_by_node`). Each host therefore
    has its own `state()`; save and restore it per host.

    Why windows rather than `IterableDataset.shuffle(seed, buffer_size)`: its `state_dict()`
    does not store the shuffle buffer, so a resumed run would lose the buffered documents and
    see different batches. The state here is the datasets `state_dict()` of the shard at the
    start of the current window plus the position in the window and the carry-over buffer;
    resuming re-reads at most one window.
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        tokenizer,
        seq_len: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle_window: int = 10_000,
        text_field: str = "text",
        process_index: int = 0,
        process_count: int = 1,
    ):
        _check_layout(seq_len, batch_size, process_index, process_count)
        _check_seed(seed)
        if shuffle_window < 1:
            raise ValueError(f"shuffle_window must be >= 1, got {shuffle_window}")
        check_text_field(dataset.column_names, text_field, dataset)
        if dataset.column_names is not None:
            dataset = dataset.select_columns([text_field])
        self._dataset = dataset
        self._tokenizer = tokenizer
        self._eos = eos_id(tokenizer)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle_window = shuffle_window
        self.text_field = text_field
        self.process_index = process_index
        self.process_count = process_count
        self._by_shard = dataset.num_shards % process_count == 0
        self._set_position(epoch=0, shard=0, window=0, window_state=None, skip=0, carry=[])

    def _set_position(self, epoch, shard, window, window_state, skip, carry) -> None:
        self._epoch, self._shard, self._window = epoch, shard, window
        self._window_state, self._skip, self._carry = window_state, skip, list(carry)
        self._order = self._shard_order(epoch)
        self._view = self._iter = self._docs = None  # reopened lazily at this position

    def _shard_order(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng((self.seed, epoch)).permutation(self._dataset.num_shards)
        return order[self.process_index :: self.process_count] if self._by_shard else order

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        needed = self.batch_size * (self.seq_len + 1)
        while len(self._carry) < needed:
            self._carry.extend(self._tokenizer.encode(self._next_document()))
            self._carry.append(self._eos)
        block = np.asarray(self._carry[:needed], np.int32).reshape(self.batch_size, self.seq_len + 1)
        del self._carry[:needed]
        check_ids(block, self._tokenizer.vocab_size)
        return _split_block(block)

    def _next_document(self) -> str:
        while self._docs is None or self._skip == len(self._docs):
            if self._docs is not None:  # window used up: remember where the next one starts
                self._window_state = self._view.state_dict()
                self._window, self._skip = self._window + 1, 0
            self._load_window()
        self._skip += 1
        return self._docs[self._skip - 1]

    def _load_window(self) -> None:
        """Reads the window at the current position, moving on to the next shard and epoch as
        they run out."""
        exhausted = 0
        while True:
            shard_id = int(self._order[self._shard])
            if self._iter is None:
                self._view = self._dataset.shard(num_shards=self._dataset.num_shards, index=shard_id)
                if not self._by_shard:
                    self._view = split_dataset_by_node(
                        self._view,
                        rank=self.process_index,
                        world_size=self.process_count,
                        strategy="examples",
                    )
                if self._window_state is not None:
                    self._view.load_state_dict(self._window_state)
                self._iter = iter(self._view)
            examples = list(islice(self._iter, self.shuffle_window))
            texts = [t for t in map(self._text, examples) if t]
            if texts:
                rng = np.random.default_rng((self.seed, self._epoch, shard_id, self._window))
                self._docs = [texts[i] for i in rng.permutation(len(texts))]
                return
            if examples:  # a window of empty documents: skip it
                self._window_state = self._view.state_dict()
                self._window += 1
                continue
            exhausted += 1
            if exhausted > len(self._order):
                raise ValueError(
                    f"host {self.process_index} of {self.process_count} found no non-empty documents in "
                    f"a whole epoch of {self._dataset!r}"
                )
            self._iter, self._window_state, self._window = None, None, 0
            self._shard += 1
            if self._shard == len(self._order):
                self._epoch, self._shard = self._epoch + 1, 0
                self._order = self._shard_order(self._epoch)

    def _text(self, example: Mapping) -> str:
        if self.text_field not in example:
            check_text_field(list(example), self.text_field, self._dataset)
        return example[self.text_field]

    def state(self) -> dict:
        """This host's position: JSON-able, including the datasets `state_dict()` of the window
        start and the carry-over tokens (fewer than one batch)."""
        return {
            "epoch": self._epoch,
            "shard": self._shard,
            "window": self._window,
            "window_state": self._window_state,
            "skip": self._skip,
            "carry": list(self._carry),
            **self._settings(),
        }

    def restore(self, state: Mapping) -> None:
        """Continues from a `state()` of this host so the next batch is the one that followed it."""
        _check_state(state, self._settings())
        keys = ("epoch", "shard", "window", "window_state", "skip", "carry")
        self._set_position(*(state[k] for k in keys))

    def _settings(self) -> dict:
        return {
            "seed": self.seed,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "shuffle_window": self.shuffle_window,
            "process_index": self.process_index,
            "process_count": self.process_count,
        }


# ---------------------------------------------------------------------------------------------
# Evaluation


def eval_batches(
    corpus: TokenizedCorpus,
    seq_len: int,
    batch_size: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """One deterministic pass over a corpus in its stored order, every token a target exactly once.

    The stream is eos followed by the corpus (so the first document is predicted from eos, as in
    training) and is cut into rows of `seq_len` targets whose inputs overlap the previous row by
    one token. The last rows and batches are padded with id 0 and `weights` 0 (float32; 1 for real
    targets); every host yields the same number of batches so collective steps stay in step.
    Yields `{'inputs', 'targets'}` int32 and `'weights'` float32, all `[batch_size, seq_len]`.
    """
    _check_layout(seq_len, batch_size, process_index, process_count)
    stream_len = corpus.num_tokens + 1
    num_rows = -(-corpus.num_tokens // seq_len)
    global_batch = batch_size * process_count
    for first in range(0, num_rows, global_batch):
        rows = first + process_index * batch_size + np.arange(batch_size)
        pos = rows[:, None] * seq_len + np.arange(seq_len)  # stream index of each input
        valid = pos + 1 < stream_len
        inputs = np.where(valid, _stream_take(corpus, np.minimum(pos, stream_len - 1)), 0)
        targets = np.where(valid, _stream_take(corpus, np.minimum(pos + 1, stream_len - 1)), 0)
        yield {
            "inputs": inputs.astype(np.int32),
            "targets": targets.astype(np.int32),
            "weights": valid.astype(np.float32),
        }


def _stream_take(corpus: TokenizedCorpus, idx: np.ndarray) -> np.ndarray:
    """Tokens at `idx` of the stream `[eos] + corpus.tokens`, without building that stream."""
    return np.where(idx == 0, corpus.eos_id, np.asarray(corpus.tokens[np.maximum(idx - 1, 0)]))
