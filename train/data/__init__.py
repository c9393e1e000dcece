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

from train.data.documents import load_documents
from train.data.packing import PackedBatches, StreamingPackedBatches, eval_batches
from train.data.tokenized import TokenizedCorpus, load_corpus, tokenize_dataset
from train.data.tokenizers import load_tokenizer

__all__ = [
    "PackedBatches", "StreamingPackedBatches", "TokenizedCorpus", "eval_batches", "load_corpus", "load_documents",
    "load_tokenizer", "tokenize_dataset",
]
