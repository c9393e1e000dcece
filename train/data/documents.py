"""Documents from files or a Hugging Face dataset, as a `datasets.Dataset`.

`load_documents` reads local text, JSON lines, Parquet or CSV files (or a hub dataset) into
rows with a text column; the tokenised cache (`train.data.tokenized`) and the packers
(`train.data.packing`) start from here.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping

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

    `source` is a local file, glob, folder or list of those (the files become `split`), a dict
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
    if isinstance(source, os.PathLike) or os.path.exists(path) or glob.has_magic(path):
        return _expand(path)
    if _extension(path) in _BUILDERS or path.startswith(("/", "./", "../", "~")):
        return _expand(path)  # meant as a file: report it missing rather than asking the hub
    return None


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
            "Pass text_field= with the column that holds the text."
        )


