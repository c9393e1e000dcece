"""Tokenised corpora: every document's token ids in one flat array, cached on disk.

`load_corpus` tokenises a corpus once and keeps it as .npy files keyed by the source files,
the tokenizer and the settings; later runs read the arrays memory-mapped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc

from train.data.documents import check_text_field, data_files, load_documents

_CACHE_VERSION = 1  # bump when the cached format or tokenisation rule changes


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
    """A corpus as one flat token array: document i is `tokens[doc_offsets[i]:doc_offsets[i+1]]`
    and ends with `eos_id`, the separator that packing relies on."""

    tokens: np.ndarray  # int32 [num_tokens]; memory-mapped when read from the cache
    doc_offsets: np.ndarray  # int64 [num_docs + 1], starts at 0
    eos_id: int

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_docs(self) -> int:
        return int(self.doc_offsets.shape[0]) - 1


def tokenize_dataset(
    dataset, tokenizer, text_field: str = "text", num_proc: int | None = None
) -> TokenizedCorpus:
    """Tokenises every non-empty document of a (non-streaming) dataset and appends eos to each.

    Held in memory; use `load_corpus` to cache the result on disk.
    """
    eos = eos_id(tokenizer)
    check_text_field(dataset.column_names, text_field, dataset)

    def encode(texts):
        return {"ids": [tokenizer.encode(t) + [eos] for t in texts if t]}

    mapped = dataset.map(
        encode,
        batched=True,
        input_columns=text_field,
        remove_columns=dataset.column_names,
        features=datasets.Features({"ids": datasets.List(datasets.Value("int32"))}),
        keep_in_memory=True,  # the caller caches the flat array; an arrow copy would be waste
        new_fingerprint=uuid.uuid4().hex,  # nothing is cached by datasets, so skip hashing the tokenizer
        num_proc=num_proc,
        desc="Tokenizing",
    )
    ids = mapped.data.column("ids")
    tokens = pc.list_flatten(ids).to_numpy().astype(np.int32, copy=False)
    if tokens.size == 0:
        raise ValueError(f"no non-empty documents in field {text_field!r}")
    check_ids(tokens, tokenizer.vocab_size)
    offsets = np.zeros(len(mapped) + 1, np.int64)
    np.cumsum(pc.list_value_length(ids).to_numpy(), out=offsets[1:])
    return TokenizedCorpus(tokens, offsets, eos)


def load_corpus(
    source,
    tokenizer,
    tokenizer_id: str,
    cache_dir,
    *,
    split: str = "train",
    text_field: str = "text",
    sample_by: str = "document",
    num_proc: int | None = None,
    **load_kwargs,
) -> TokenizedCorpus:
    """`load_documents` + `tokenize_dataset`, cached as .npy files under `cache_dir`.

    The cache key hashes the source files' paths, sizes and mtimes (for a hub dataset, those of
    its datasets cache files), `tokenizer_id` (a string that must change whenever the tokenizer
    does, e.g. its name and vocabulary hash), `text_field`, `split`, `sample_by` and the load
    arguments. A cache hit reads the arrays memory-mapped without touching `datasets`.
    """
    files = data_files(source, split)
    dataset = None
    hub = files is None
    if hub:
        dataset = load_documents(source, split, text_field, sample_by=sample_by, **load_kwargs)
        files = [f["filename"] for f in dataset.cache_files]
    stats = [os.stat(f) for f in files]
    key = {
        "version": _CACHE_VERSION,
        "source": repr(source) if hub else None,
        "files": [(f, st.st_size, st.st_mtime_ns) for f, st in zip(files, stats)],
        "tokenizer": tokenizer_id,
        "text_field": text_field,
        "split": split,
        "sample_by": sample_by,
        "load_kwargs": {k: v for k, v in load_kwargs.items() if k not in ("cache_dir", "num_proc")},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=repr).encode()).hexdigest()
    path = Path(cache_dir) / digest[:24]
    if path.is_dir():
        return _read_corpus(path)
    if dataset is None:
        dataset = load_documents(source, split, text_field, sample_by=sample_by, **load_kwargs)
    corpus = tokenize_dataset(dataset, tokenizer, text_field, num_proc)
    meta = {"eos_id": corpus.eos_id, "num_docs": corpus.num_docs, "num_tokens": corpus.num_tokens, **key}
    _write_corpus(path, corpus, meta)
    return corpus


def _write_corpus(path: Path, corpus: TokenizedCorpus, meta: dict) -> None:
    """Writes into a temporary folder and renames it into place, so readers (other hosts or
    processes sharing the cache) never see a half-written corpus."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=path.parent)
    try:
        np.save(os.path.join(tmp, "tokens.npy"), corpus.tokens)
        np.save(os.path.join(tmp, "doc_offsets.npy"), corpus.doc_offsets)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1, default=repr)
        os.rename(tmp, path)
    except OSError:
        if not path.is_dir():  # a concurrent writer winning the race is fine; anything else is not
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_corpus(path: Path) -> TokenizedCorpus:
    with open(path / "meta.json") as f:
        eos = json.load(f)["eos_id"]
    return TokenizedCorpus(
        np.load(path / "tokens.npy", mmap_mode="r"), np.load(path / "doc_offsets.npy"), eos
    )


def eos_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_id", None)
    if eos is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no eos_id, which separates packed documents; "
            "use a tokenizer with an end-of-text token or add one"
        )
    return int(eos)


def check_ids(ids: np.ndarray, vocab_size: int) -> None:
    """JAX clamps out-of-range embedding indices silently, so catch them here."""
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(
            f"token ids span [{ids.min()}, {ids.max()}] but vocab_size is {vocab_size}; "
            "the tokenizer and its vocab_size disagree"
        )


