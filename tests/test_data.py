"""Tests for train/data.py on tiny corpora written to tmp_path."""

import csv
import gzip
import json
import os

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from train import data

EOS = 0


class WordTokenizer:
    """Fake tokenizer: the text is whitespace-separated token ids; counts encode calls."""

    vocab_size = 1000
    eos_id = EOS

    def __init__(self):
        self.calls = 0

    def encode(self, text):
        self.calls += 1
        return [int(w) for w in text.split()]


class NoEosTokenizer(WordTokenizer):
    eos_id = None


def doc_texts(n, seed=0):
    """n documents of 1 to 9 tokens, every token id unique so positions can be traced back."""
    lengths = np.random.default_rng(seed).integers(1, 10, size=n)
    return [" ".join(str(10 * i + j + 1) for j in range(k)) for i, k in enumerate(lengths)]


def corpus_of(texts):
    return data.tokenize_dataset(datasets.Dataset.from_dict({"text": texts}), WordTokenizer())


def docs_from_stream(stream):
    """Splits a token stream at eos into documents (lists of ids), dropping an unfinished tail."""
    ends = np.flatnonzero(np.asarray(stream) == EOS)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [list(stream[s:e]) for s, e in zip(starts, ends)]


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """Keeps datasets' arrow cache inside the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))


# ---------------------------------------------------------------------------------------------
# load_documents


def write(path, texts, kind):
    if kind == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    elif kind == "json":
        path.write_text(json.dumps([{"text": t, "id": i} for i, t in enumerate(texts)]))
    elif kind == "jsonl.gz":
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    elif kind == "parquet":
        pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), path)
    elif kind == "csv":
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "text"])
            w.writerows(enumerate(texts))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "jsonl.gz", "parquet", "csv"])
def test_each_table_file_type_loads(tmp_path, kind):
    texts = ["first doc", "second, with comma", "third\nwith a newline"]
    path = write(tmp_path / f"corpus.{kind}", texts, kind)
    ds = data.load_documents(str(path))
    assert isinstance(ds, datasets.Dataset)
    assert list(ds["text"]) == texts


def test_txt_is_one_document_per_file_unless_sample_by_says_otherwise(tmp_path):
    (tmp_path / "a.txt").write_text("a b\nc\n\nd e\n")
    (tmp_path / "b.txt").write_text("f g\n")
    pattern = str(tmp_path / "*.txt")
    assert list(data.load_documents(pattern)["text"]) == ["a b\nc\n\nd e\n", "f g\n"]
    assert list(data.load_documents(pattern, sample_by="paragraph")["text"])[:2] == ["a b\nc", "d e\n"]
    assert list(data.load_documents(pattern, sample_by="line")["text"]) == ["a b", "c", "", "d e", "f g"]


def test_globs_lists_folders_and_split_dicts(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    for name, texts in [("a", ["1", "2"]), ("sub/b", ["3"]), ("c", ["4 5"])]:
        write(folder / f"{name}.jsonl", texts, "jsonl")
    (folder / "notes.md").write_text("ignored: not a data file")
    a, b, c = (str(folder / f"{n}.jsonl") for n in ["a", "sub/b", "c"])

    assert list(data.load_documents([a, c])["text"]) == ["1", "2", "4 5"]
    assert list(data.load_documents(folder)["text"]) == ["1", "2", "4 5", "3"]  # folder, walked in order
    splits = {"train": [a, b], "validation": c}
    assert list(data.load_documents(splits, split="validation")["text"]) == ["4 5"]
    assert list(data.load_documents(c, split="validation")["text"]) == ["4 5"]


def test_other_sources_go_to_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_dict({"text": ["x"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data.load_documents("someone/corpus", split="validation", name="en")
    assert calls == [("someone/corpus", {"split": "validation", "streaming": False, "name": "en"})]


def test_load_errors_say_what_is_wrong(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        data.load_documents(str(missing))
    with pytest.raises(FileNotFoundError, match=r"no files match .*\*\.parquet"):
        data.load_documents(str(tmp_path / "*.parquet"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="data file is empty: .*empty.txt"):
        data.load_documents(str(tmp_path / "empty.txt"))
    (tmp_path / "header.csv").write_text("id,text\n")
    with pytest.raises(ValueError, match="has no documents"):
        data.load_documents(str(tmp_path / "header.csv"))
    path = write(tmp_path / "c.jsonl", ["x"], "jsonl")
    with pytest.raises(ValueError, match=r"'body' not found .*available columns: \['text', 'id'\]"):
        data.load_documents(str(path), text_field="body")
    no_split = r"split 'test' is not in the source; it has splits \['train'\]"
    with pytest.raises(ValueError, match=no_split):
        data.load_documents({"train": str(path)}, split="test")
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(ValueError, match="unsupported file type"):
        data.load_documents(str(tmp_path / "x.xml"))
    with pytest.raises(ValueError, match="only applies to .txt"):
        data.load_documents(str(path), sample_by="line")


# ---------------------------------------------------------------------------------------------
# Tokenising and the cache


def test_tokenize_appends_eos_and_records_offsets():
    corpus = corpus_of(["5 6", "", "7", "8 9 10"])  # the empty document is skipped
    np.testing.assert_array_equal(corpus.tokens, [5, 6, EOS, 7, EOS, 8, 9, 10, EOS])
    np.testing.assert_array_equal(corpus.doc_offsets, [0, 3, 5, 9])
    assert corpus.tokens.dtype == np.int32 and corpus.num_docs == 3 and corpus.eos_id == EOS


def test_tokenize_errors():
    ds = datasets.Dataset.from_dict({"text": ["1 2"]})
    with pytest.raises(ValueError, match="no eos_id"):
        data.tokenize_dataset(ds, NoEosTokenizer())
    with pytest.raises(ValueError, match=r"span \[0, 5000\] but vocab_size is 1000"):
        data.tokenize_dataset(datasets.Dataset.from_dict({"text": ["1 5000"]}), WordTokenizer())
    with pytest.raises(ValueError, match="no non-empty documents"):
        data.tokenize_dataset(datasets.Dataset.from_dict({"text": ["", None]}), WordTokenizer())


def test_load_corpus_caches_on_disk(tmp_path):
    src = write(tmp_path / "c.jsonl", ["1 2", "3"], "jsonl")
    cache = tmp_path / "cache"
    tok = WordTokenizer()
    first = data.load_corpus(str(src), tok, "words-v1", cache)
    calls = tok.calls
    again = data.load_corpus(str(src), tok, "words-v1", cache)
    assert tok.calls == calls  # served from the cache
    assert isinstance(again.tokens, np.memmap)
    np.testing.assert_array_equal(again.tokens, first.tokens)
    np.testing.assert_array_equal(again.doc_offsets, first.doc_offsets)
    assert not [p for p in os.listdir(cache) if p.startswith(".tmp")]

    data.load_corpus(str(src), tok, "words-v2", cache)  # another tokenizer: new entry
    write(src, ["1 2", "3", "4"], "jsonl")  # changed file: new entry
    changed = data.load_corpus(str(src), tok, "words-v1", cache)
    np.testing.assert_array_equal(changed.tokens, [1, 2, EOS, 3, EOS, 4, EOS])
    assert len(os.listdir(cache)) == 3


# ---------------------------------------------------------------------------------------------
# PackedBatches


def concat_blocks(batches):
    """The token stream behind batches: inputs plus the last target of each row."""
    rows = [np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1) for b in batches]
    return np.concatenate(rows).reshape(-1)


def test_packing_is_the_shuffled_document_stream_cut_into_blocks():
    texts = doc_texts(40)
    corpus = corpus_of(texts)
    seq_len, batch_size, seed = 7, 3, 5
    it = data.PackedBatches(corpus, seq_len, batch_size, seed=seed)
    batches = take(it, it.batches_per_epoch)
    for b in batches:
        assert b["inputs"].shape == b["targets"].shape == (batch_size, seq_len)
        assert b["inputs"].dtype == b["targets"].dtype == np.int32
        np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])

    order = np.random.default_rng((seed, 0)).permutation(corpus.num_docs)
    offsets = corpus.doc_offsets
    expected = np.concatenate([corpus.tokens[offsets[d] : offsets[d + 1]] for d in order])
    stream = concat_blocks(batches)
    kept = it.batches_per_epoch * batch_size * (seq_len + 1)
    assert corpus.num_tokens - kept < batch_size * (seq_len + 1)  # only the final remainder is lost
    np.testing.assert_array_equal(stream, expected[:kept])
    # every document arrives whole and is followed by eos
    encoded = [[int(w) for w in texts[d].split()] for d in order]
    assert docs_from_stream(stream) == encoded[: len(docs_from_stream(stream))]


def test_same_seed_same_batches_and_other_seed_differs():
    corpus = corpus_of(doc_texts(30))
    a = take(data.PackedBatches(corpus, 5, 2, seed=1), 12)
    assert_same_batches(a, take(data.PackedBatches(corpus, 5, 2, seed=1), 12))
    b = take(data.PackedBatches(corpus, 5, 2, seed=2), 12)
    assert any(not np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))


def test_epochs_reshuffle():
    corpus = corpus_of(doc_texts(30))
    it = data.PackedBatches(corpus, 5, 2)
    first, second = take(it, it.batches_per_epoch), take(it, it.batches_per_epoch)
    assert not np.array_equal(concat_blocks(first), concat_blocks(second))
    assert it.state()["epoch"] == 2


@pytest.mark.parametrize("k", [0, 3, 9, 11, 20])  # 9 batches per epoch: k >= 9 resume in later epochs
def test_resume_equals_uninterrupted(k):
    corpus = corpus_of(doc_texts(20))
    ref = data.PackedBatches(corpus, 6, 2, seed=3)
    assert ref.batches_per_epoch == 9
    expected = take(ref, k + 8)

    run = data.PackedBatches(corpus, 6, 2, seed=3)
    take(run, k)
    state = json.loads(json.dumps(run.state()))
    resumed = data.PackedBatches(corpus, 6, 2, seed=3)
    resumed.restore(state)
    assert_same_batches(take(resumed, 8), expected[k:])


def test_hosts_stack_to_the_single_host_batch():
    corpus = corpus_of(doc_texts(40))
    single = take(data.PackedBatches(corpus, 5, 6, seed=4), 10)
    hosts = [
        take(data.PackedBatches(corpus, 5, 2, seed=4, process_index=p, process_count=3), 10)
        for p in range(3)
    ]
    for step, whole in enumerate(single):
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([h[step][key] for h in hosts]), whole[key])

    # the state is global: a 3-host run can resume on one host with the same global batch
    host = data.PackedBatches(corpus, 5, 2, seed=4, process_index=1, process_count=3)
    take(host, 4)
    alone = data.PackedBatches(corpus, 5, 6, seed=4)
    alone.restore(host.state())
    assert_same_batches(take(alone, 6), single[4:])


def test_packed_batches_errors():
    corpus = corpus_of(doc_texts(5))  # 5 documents, at most 50 tokens
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        data.PackedBatches(corpus, 0, 1)
    too_small = rf"corpus has {corpus.num_tokens} tokens but one global batch needs 404"
    with pytest.raises(ValueError, match=too_small):
        data.PackedBatches(corpus, 100, 2, process_count=2)
    it = data.PackedBatches(corpus, 2, 1, seed=1)
    with pytest.raises(ValueError, match="seed: state has 1, this pipeline has 2"):
        data.PackedBatches(corpus, 2, 1, seed=2).restore(it.state())
    with pytest.raises(ValueError, match="seq_len: state has 2, this pipeline has 3"):
        data.PackedBatches(corpus, 3, 1, seed=1).restore(it.state())
    with pytest.raises(ValueError, match="global_batch_size"):
        data.PackedBatches(corpus, 2, 2, seed=1).restore(it.state())


# ---------------------------------------------------------------------------------------------
# Streaming


@pytest.fixture
def shards(tmp_path):
    """Three jsonl shards of 12 documents, plus their texts in file order."""
    texts = doc_texts(36, seed=1)
    for s in range(3):
        write(tmp_path / f"shard{s}.jsonl", texts[12 * s : 12 * s + 12], "jsonl")
    return str(tmp_path / "shard*.jsonl"), texts


def streaming(pattern, **kwargs):
    ds = data.load_documents(pattern, streaming=True)
    return data.StreamingPackedBatches(ds, WordTokenizer(), **{"seq_len": 5, "batch_size": 2, **kwargs})


def test_streaming_covers_each_document_once_per_epoch(shards):
    pattern, texts = shards
    assert isinstance(data.load_documents(pattern, streaming=True), datasets.IterableDataset)
    it = streaming(pattern, shuffle_window=5, seed=7)
    batches = take(it, 40)
    assert it.state()["epoch"] >= 1
    docs = docs_from_stream(concat_blocks(batches))
    encoded = [[int(w) for w in t.split()] for t in texts]
    assert sorted(docs[: len(texts)]) == sorted(encoded)  # one epoch: each document exactly once
    assert docs[: len(texts)] != encoded  # and shuffled
    assert_same_batches(batches, take(streaming(pattern, shuffle_window=5, seed=7), 40))


@pytest.mark.parametrize("k", [1, 6, 23])  # 23 batches is past the first epoch
@pytest.mark.parametrize("hosts", [1, 2])  # 2 hosts over 3 shards split documents within shards
def test_streaming_resume_equals_uninterrupted(shards, k, hosts):
    pattern, _ = shards
    kwargs = dict(shuffle_window=5, seed=3, process_index=hosts - 1, process_count=hosts)
    expected = take(streaming(pattern, **kwargs), k + 8)
    run = streaming(pattern, **kwargs)
    take(run, k)
    resumed = streaming(pattern, **kwargs)
    resumed.restore(json.loads(json.dumps(run.state())))
    assert_same_batches(take(resumed, 4), expected[k : k + 4])
    again = streaming(pattern, **kwargs)  # resuming a resumed run
    again.restore(json.loads(json.dumps(resumed.state())))
    assert_same_batches(take(again, 4), expected[k + 4 :])


@pytest.mark.parametrize("num_hosts", [3, 2])  # by whole shards, and by documents within shards
def test_streaming_hosts_read_disjoint_documents(shards, num_hosts):
    pattern, texts = shards
    host_docs = []
    for p in range(num_hosts):
        it = streaming(pattern, shuffle_window=4, process_index=p, process_count=num_hosts)
        docs = docs_from_stream(concat_blocks(take(it, 20)))[: len(texts) // num_hosts]
        host_docs.append({tuple(d) for d in docs})
    for p in range(num_hosts):
        for q in range(p):
            assert not host_docs[p] & host_docs[q]
    assert sum(map(len, host_docs)) == len(texts)


def test_streaming_errors(shards):
    pattern, _ = shards
    ds = data.load_documents(pattern, streaming=True)
    with pytest.raises(ValueError, match="no eos_id"):
        data.StreamingPackedBatches(ds, NoEosTokenizer(), 4, 2)
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        data.StreamingPackedBatches(ds, WordTokenizer(), 0, 2)
    with pytest.raises(ValueError, match=r"'body' not found"):
        data.StreamingPackedBatches(ds, WordTokenizer(), 4, 2, text_field="body")
    with pytest.raises(ValueError, match="shuffle_window: state has 5, this pipeline has 6"):
        streaming(pattern, shuffle_window=6).restore(streaming(pattern, shuffle_window=5).state())


# ---------------------------------------------------------------------------------------------
# eval_batches


def test_eval_pass_covers_every_token_once():
    corpus = corpus_of(doc_texts(13))
    batches = list(data.eval_batches(corpus, seq_len=7, batch_size=3))
    weights = np.concatenate([b["weights"] for b in batches]).reshape(-1)
    targets = np.concatenate([b["targets"] for b in batches]).reshape(-1)
    inputs = np.concatenate([b["inputs"] for b in batches]).reshape(-1)
    assert weights.sum() == corpus.num_tokens
    assert weights.dtype == np.float32 and targets.dtype == inputs.dtype == np.int32
    mask = weights == 1
    np.testing.assert_array_equal(targets[mask], corpus.tokens)
    np.testing.assert_array_equal(inputs[mask], np.concatenate([[EOS], corpus.tokens[:-1]]))
    assert not mask[np.argmin(mask) :].any()  # padding only at the end


def test_eval_hosts_stack_to_the_single_host_batch():
    corpus = corpus_of(doc_texts(13))
    single = list(data.eval_batches(corpus, 4, 6))
    hosts = [list(data.eval_batches(corpus, 4, 2, process_index=p, process_count=3)) for p in range(3)]
    assert all(len(h) == len(single) for h in hosts)  # every host takes the same number of steps
    for step, whole in enumerate(single):
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([h[step][key] for h in hosts]), whole[key])
