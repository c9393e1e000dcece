"""Documents from files or a Hugging Face dataset, as a `datasets.Dataset`.

`load_documents` reads local text, JSON lines, Parquet or CSV files (or a hub dataset) into
rows with a text column; the tokenised cache (`train.data.tokenized`) and the packers
(`train.data.packing`) start from here.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import datasets

_BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}
_COMPRESSIONS = (".gz", ".bz2", ".xz")  # datasets decompresses these on the fly
_SAMPLE_BY = ("document", "paragraph", "line")
SPLITS = ("train", "validation", "test")  # the file names of a prepared corpus's splits


def load_documents(
    source,
    split: str = "train",
    text_field: str = "text",
    streaming: bool = False,
    *,
    sample_by: str = "document",
    **load_kwargs,
):
    """Loads a text corpus as a `datasets.Dataset` (or `IterableDataset` when `streaming`).

    `source` is a local file, glob, folder or list of those (the files become `split`; a folder
    named by split, as `jaxlm prepare` writes them, gives `split`'s file alone), a dict
    of split -> files, or else a dataset name for `datasets.load_dataset` (`load_kwargs` such as
    `name=` or `revision=` go there). The file extension picks the builder: .txt, .json/.jsonl,
    .parquet, .csv, optionally compressed (.gz, .bz2, .xz). A .txt file is one document unless
    `sample_by` is 'paragraph' (blank-line separated) or 'line'.
    """
    if sample_by not in _SAMPLE_BY:
        raise ValueError(f"sample_by={sample_by!r}; use one of {_SAMPLE_BY}")
    files = data_files(source, split)
    if files is None:
        if sample_by != "document":  # only meaningful for a hub repository of .txt files
            load_kwargs = {"sample_by": sample_by, **load_kwargs}
        ds = datasets.load_dataset(source, split=split, streaming=streaming, **load_kwargs)
    else:
        builder = _builder_for(files)
        if builder == "text":
            load_kwargs = {"sample_by": sample_by, **load_kwargs}
        elif sample_by != "document":
            raise ValueError(f"sample_by={sample_by!r} only applies to .txt files, not {files[0]}")
        try:
            ds = datasets.load_dataset(
                builder, data_files={split: files}, split=split, streaming=streaming, **load_kwargs
            )
        except ValueError as e:  # datasets' wording when the files hold no rows at all
            if "corresponds to no data" not in str(e):
                raise
            raise ValueError(
                f"{source!r} (split {split!r}) has no documents; check the data files"
            ) from e
    if not streaming and len(ds) == 0:
        raise ValueError(f"{source!r} (split {split!r}) has no documents; check the data files")
    check_text_field(ds.column_names, text_field, source)
    return ds


def data_files(source, split: str) -> list[str] | None:
    """Local files of `split` in `source` (absolute, sorted per pattern), or None for a dataset name."""
    if isinstance(source, Mapping):
        if split not in source:
            raise ValueError(f"split {split!r} is not in the source; it has splits {sorted(source)}")
        return _expand(source[split])
    if isinstance(source, (list, tuple)):
        return _expand(source)
    path = os.path.expanduser(os.fspath(source))
    if os.path.isdir(path):
        return split_files(path, split)
    if isinstance(source, os.PathLike) or os.path.exists(path) or glob.has_magic(path):
        return _expand(path)
    if _extension(path) in _BUILDERS or path.startswith(("/", "./", "../", "~")):
        return _expand(path)  # meant as a file: report it missing rather than asking the hub
    return None


def _split_of(name: str) -> str:
    """The split a prepared corpus's file belongs to: its name up to the extension or a shard
    suffix (``train.jsonl``, ``validation-00001.parquet``)."""
    base = os.path.basename(name).lower()
    for suffix in _COMPRESSIONS:
        base = base.removesuffix(suffix)
    return re.split(r"[-_.]", os.path.splitext(base)[0])[0]


def split_files(folder: str, split: str) -> list[str]:
    """The data files of ``split`` in a folder. A prepared corpus's folder names its files by split
    (``train.jsonl``, ``validation.jsonl``, ``test.jsonl``): only ``split``'s are read, and a split
    the folder lacks is refused. A folder of other files is one split (all its files)."""
    files = _expand(folder)
    splits = {_split_of(f) for f in files}
    if not splits & set(SPLITS):
        return files
    chosen = [f for f in files if _split_of(f) == split]
    if not chosen:
        raise ValueError(f"folder {folder!r} holds the splits {sorted(splits)}, not {split!r}: choose one of those")
    return chosen


def check_split(source, split: str | None) -> str:
    """The split to read from ``source``: ``split`` (default ``validation``), which a prepared
    corpus's folder must hold; a single file is one split, and a ``split`` other than its own
    (``test`` for ``validation.jsonl``) is refused."""
    path = os.path.expanduser(os.fspath(source))
    if split is not None and os.path.isfile(path) and _split_of(path) in SPLITS and _split_of(path) != split:
        raise ValueError(f"--split {split} asks for another split than the file {source} holds "
                         f"({_split_of(path)}): pass the corpus's folder, or drop --split")
    return split or "validation"


def _expand(spec) -> list[str]:
    """Turns a path, glob, folder or list of those into a list of existing, non-empty files."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise ValueError("no data files given")
    files = []
    for s in specs:
        s = os.path.expanduser(os.fspath(s))
        if glob.has_magic(s):
            found = sorted(p for p in glob.glob(s, recursive=True) if os.path.isfile(p))
            if not found:
                raise FileNotFoundError(f"no files match {s!r}")
        elif os.path.isdir(s):
            found = []
            for root, dirs, names in os.walk(s):
                dirs[:] = [d for d in dirs if not d.startswith(".")]  # skip hidden folders, e.g. caches
                found += [
                    os.path.join(root, n)
                    for n in names
                    if not n.startswith(".") and _extension(n) in _BUILDERS
                ]
            found.sort()
            if not found:
                raise FileNotFoundError(
                    f"folder {s!r} has no data files with extensions {sorted(_BUILDERS)}"
                )
        elif os.path.isfile(s):
            found = [s]
        else:
            raise FileNotFoundError(f"data file not found: {s!r}")
        files.extend(os.path.abspath(p) for p in found)
    for f in files:
        if os.path.getsize(f) == 0:
            raise ValueError(f"data file is empty: {f!r}; remove it from the source")
    return files


def _extension(path: str) -> str:
    """The extension that picks the builder, looking through a compression suffix."""
    stem, ext = os.path.splitext(path.lower())
    if ext in _COMPRESSIONS:
        ext = os.path.splitext(stem)[1]
    return ext


def _builder_for(files: list[str]) -> str:
    builders = {}
    for f in files:
        ext = _extension(f)
        if ext not in _BUILDERS:
            raise ValueError(f"unsupported file type {f!r}; supported: {sorted(_BUILDERS)}")
        builders.setdefault(_BUILDERS[ext], f)
    if len(builders) > 1:
        raise ValueError(
            f"one split mixes file types ({sorted(builders.values())}); convert them to one type"
        )
    return next(iter(builders))


def check_text_field(columns, text_field: str, source) -> None:
    if columns is not None and text_field not in columns:
        raise ValueError(
            f"text field {text_field!r} not found in {source!r}; available columns: {columns}. "
            "Set data.text_field to the column that holds the text (--set data.text_field=COLUMN)."
        )


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
                    raise ValueError(f"{path}:{n} has no field {text_field!r} (fields: {sorted(record)}); "
                                     "name the one that holds the text (--text-field)")
                yield record[text_field]
