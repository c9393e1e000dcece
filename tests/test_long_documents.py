"""experiments/long_documents.py: the planted task (one deciding sentence at a random place), a
classifier run scored by quarter, and the table."""

import json

import jax

import models
from experiments import long_documents as docs
from train.checkpoint import save_params


def test_planted_rows_hide_one_deciding_sentence():
    texts = [" ".join(f"w{i}" for i in range(500))]
    rows = docs.planted_rows(texts, 40, 50, seed=0)
    assert [r["label"] for r in rows[:4]] == ["approved", "rejected", "approved", "rejected"]
    for r in rows:
        words = r["text"].split()
        assert len(words) == 55 and docs.PLANTED[r["label"]] in r["text"]
        other = next(label for label in docs.PLANTED if label != r["label"])
        assert docs.PLANTED[other] not in r["text"] and 0 <= r["position"] <= 1
    assert {docs.quarter(r["position"]) for r in rows} == set(docs.QUARTERS)


def test_a_run_is_scored_by_quarter_and_tabled(corpus, tmp_path):
    root, tokenizer = corpus
    texts = [json.loads(line)["text"] for line in (root / "train.jsonl").read_text().splitlines()]
    files = docs.write_planted(tmp_path / "data", texts, words=20, sizes=(("train", 32), ("test", 64)))
    assert sum(len(files[f"test-{q}"].read_text().splitlines()) for q in docs.QUARTERS) == 64
    bert = models.get_config("bert-tiny", n_positions=64, vocab_size=128)
    source = save_params(tmp_path / "bert", bert, models.init_params(bert.module(), jax.random.key(0)),
                         {"data.tokenizer": str(tokenizer)})
    run = docs.run_config(source, files, "concat", 32, 0, tmp_path / "run", steps=10, batch_size=4)
    row = docs.run_one(run, {q: files[f"test-{q}"] for q in docs.QUARTERS})
    assert 0 <= row["accuracy"] <= 1 and all(0 <= row[f"accuracy_{q}"] <= 1 for q in docs.QUARTERS)
    table = docs.tables({"runs": [{"task": "planted", "pooling": "concat", "seq_len": 64, "seed": 0, **row}],
                         "sizes": {"steps": 10}})["q7-long-documents"]
    assert "| planted | 64 | concat | 1 |" in table
