"""Hugging Face folders in and out of our run folders (``jaxlm convert``).

An HF folder holds config.json + model.safetensors (or pytorch_model.bin); ours holds run.json
and an orbax checkpoint of the parameters. The HF folder written by to-hf loads with
transformers' from_pretrained. ``to_ours`` records the HF folder as the run's tokenizer.

``to_hf`` also writes the run's tokenizer (the one run.json records, or ``tokenizer``) into the folder:

- tokenizer.json: the tokenizer rebuilt with Hugging Face's tokenizers library (``to_hf`` in
  train/data/tokenizers.py), with tokenizer_config.json naming PreTrainedTokenizerFast and its
  special tokens, so transformers' AutoTokenizer gives our ids: for GPT-2's byte-level BPE on
  any text; for WordPiece except on rare characters whose Unicode tables differ (as transformers'
  own BertTokenizer); for a sentencepiece model except where the text holds a special piece's
  name (``<s>``, ``<|endoftext|>``: that token in transformers, text in ours) and, for a BPE
  model, where the text begins with a user-defined piece (``[MASK]``);
- the files our loader reads (vocab.json + merges.txt, vocab.txt, or sentencepiece.model), with
  which the run tokenised its data.

For BERT and ALBERT, transformers adds [CLS] ... [SEP] when asked for special tokens (its default);
for GPT and GPT-2 nothing. config.json and generation_config.json carry the tokenizer's bos, eos
and pad ids, so transformers' generate() stops at our end-of-text. Nothing else beside the tokenizer is copied
(a source HF folder's own tokenizer_config.json, special_tokens_map.json). A classifier has no
Hugging Face class: ``body=True`` writes its body (the language model or encoder) alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import processors

import models
from models import hf, lora
from models.classifier import ClassifierConfig
from models.heads_pruning import restore_heads
from train.checkpoint import load_params, save_params
from train.data.tokenizers import SentencePieceTokenizer, Tokenizer, WordPieceTokenizer, load_tokenizer

# Our tokenizers' special tokens, as transformers' tokenizer_config.json names them.
SPECIAL_TOKENS = ("bos", "eos", "unk", "pad", "cls", "sep", "mask")


def tokenizer_files(tokenizer: Tokenizer, model_type: str) -> dict[str, Path | bytes]:
    """The files of ``tokenizer`` for an HF folder of ``model_type``, by name: tokenizer.json and
    tokenizer_config.json for transformers, and the files our loader reads."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        ours = {"sentencepiece.model": tokenizer.model_file}
    elif isinstance(tokenizer, WordPieceTokenizer):
        ours = {"vocab.txt": tokenizer.vocab_file}
    else:  # GPT-2's byte-level BPE, read from whichever files: written as transformers names them
        merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
        ours = {
            "vocab.json": json.dumps(tokenizer.encoder, ensure_ascii=False).encode(),
            "merges.txt": "".join(["#version: 0.2\n", *(f"{a} {b}\n" for a, b in merges)]).encode(),
        }
    backend = tokenizer.to_hf()
    names = {name: tokenizer.id_to_token(i) for name in SPECIAL_TOKENS
             if (i := getattr(tokenizer, f"{name}_id")) is not None}
    if model_type in ("bert", "albert") and {"cls", "sep"} <= set(names):
        cls, sep = names["cls"], names["sep"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tokenizer.cls_id), (sep, tokenizer.sep_id)])
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "split_special_tokens": backend.encode_special_tokens,
              "clean_up_tokenization_spaces": False, **{f"{name}_token": t for name, t in names.items()}}
    return {**ours, "tokenizer.json": backend.to_str().encode(),
            "tokenizer_config.json": (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode()}


def check_apart(out, *inputs) -> None:
    """Refuse an output folder that is an input, lies inside one or holds one: writing it (or
    replacing it, as to-hf --overwrite does) would write the input, which is only read."""
    dest = Path(out).resolve()
    for given in filter(None, inputs):
        path = Path(given).resolve()
        where = ("is" if dest == path else "lies inside" if path in dest.parents
                 else "holds" if dest in path.parents else "")
        if where:
            raise ValueError(f"--out {out} {where} the input {given}, which convert only reads; choose an --out "
                             f"outside it")


def to_ours(source, out, tokenizer: str | None = None) -> dict:
    """An HF folder -> a run folder of its parameters at ``out`` (read only: the folder is not
    written); the run's tokenizer is ``tokenizer``, else the HF folder."""
    check_apart(out, source, tokenizer)
    _, config, params = hf.load_pretrained(source)
    tokenizer = tokenizer or str(Path(source).absolute())
    written = save_params(out, config, params, {"data.tokenizer": tokenizer}, {"source": str(Path(source).absolute())})
    return {"direction": "to-ours", "out": str(written), "model": type(config).__name__,
            "params": models.count_params(params), "tokenizer": tokenizer}


def to_hf(source, out, *, step: int | None = None, overwrite: bool = False, body: bool = False,
          full_heads: bool = False, tokenizer: str | None = None, with_tokenizer: bool = True) -> dict:
    """A run folder (read only) -> an HF folder at ``out`` with the run's tokenizer (or
    ``tokenizer``) unless ``with_tokenizer`` is false. ``body``: a classifier's body alone;
    ``full_heads``: pruned heads written back as zeros in the full shapes (transformers 5 has no
    ``pruned_heads``)."""
    check_apart(out, source, tokenizer)
    _, config, params, loaded = load_params(source, step)
    config, params = lora.merged(config, params)  # adapters folded into the weights transformers reads
    if isinstance(config, ClassifierConfig):
        if not body:
            raise ValueError(
                f"{source} holds a classifier, which has no Hugging Face export here (transformers has no "
                f"class with its pooling and head); pass --body to write its {type(config.body).__name__} body alone")
        config, params = config.body, params["body"]
    elif body:
        raise ValueError(f"--body writes a classifier's body; {source} holds a {type(config).__name__}, "
                         "which to-hf writes whole: leave --body out")
    if full_heads:
        config, params = restore_heads(config, params)
    tokenizer = (tokenizer or loaded.tokenizer) if with_tokenizer else None
    files, special_ids = {}, {}
    if tokenizer:
        check_apart(out, tokenizer)
        hf_config = hf.to_hf_config(config)
        try:
            tok = load_tokenizer(tokenizer)
            if tok.vocab_size > hf_config["vocab_size"]:
                raise ValueError(f"it has {tok.vocab_size} tokens, the model embeds {hf_config['vocab_size']}")
            files = tokenizer_files(tok, hf_config["model_type"])
        except (OSError, ValueError) as e:
            raise ValueError(
                f"cannot write the tokenizer {tokenizer} beside the weights ({e}); "
                "pass --tokenizer PATH to write another, or --no-tokenizer to write the weights alone"
            ) from None
        special_ids = {name: getattr(tok, f"{name}_id") for name in hf.SPECIAL_IDS}
    written = hf.save_pretrained(out, config, params, overwrite=overwrite, files=files, special_ids=special_ids)
    return {"direction": "to-hf", "out": str(written), "model": type(config).__name__,
            "params": models.count_params(params), "tokenizer": tokenizer, "tokenizer_files": sorted(files)}
