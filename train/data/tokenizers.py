"""Tokenizers for GPT, GPT-2, BERT and ALBERT behind one small interface.

Every tokenizer here has ``vocab_size``, ``encode(text) -> list[int]`` (no special tokens
added: callers add ``[CLS]``/``[SEP]`` or ``<|endoftext|>`` themselves), ``decode(ids) -> str``,
``id_to_token(i)``, ``token_to_id(s)`` (None for a string not in the vocabulary), and the ids of
its special tokens as attributes that are None where the vocabulary has no such token:
``eos_id``, ``bos_id``, ``pad_id``, ``unk_id``, ``mask_id``, ``cls_id``, ``sep_id``.

- ``SentencePieceTokenizer``: a sentencepiece model, e.g. one made by ``train_sentencepiece``
  or ALBERT's ``spiece.model``.
- ``ByteLevelBPETokenizer``: GPT-2's byte-level BPE. ``<|endoftext|>`` written in the text is
  encoded as ordinary text, as OpenAI's encoder does, so a document cannot forge a boundary.
- ``WordPieceTokenizer``: BERT's. Special tokens written in the text (``[MASK]`` in a prompt)
  are kept whole, as Hugging Face's ``BertTokenizer`` does.
- ``load_tokenizer(path)`` picks one from the files found at ``path``.

Each also has ``to_hf()``: the same tokenizer built with Hugging Face's ``tokenizers`` library
(what transformers' tokenizers run), for a ``tokenizer.json``; its docstring says where its ids
differ from ours.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import regex
import sentencepiece as spm
import tokenizers
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers

ENDOFTEXT = "<|endoftext|>"
# The special pieces of models made by train_sentencepiece, in id order from 0.
SPM_PAD, SPM_UNK, SPM_BOS, SPM_EOS = "<pad>", "<unk>", "<s>", ENDOFTEXT
BERT_SYMBOLS = ("[CLS]", "[SEP]", "[MASK]")


class Tokenizer(Protocol):
    """What the data pipeline, the trainers and the scripts need from a tokenizer."""

    vocab_size: int
    eos_id: int | None
    bos_id: int | None
    pad_id: int | None
    unk_id: int | None
    mask_id: int | None
    cls_id: int | None
    sep_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def id_to_token(self, i: int) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...


def check_nonempty_file(path: Path, expected: str) -> Path:
    """``path``, or FileNotFoundError / ValueError saying it is missing or empty and what it should hold."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected {expected}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty: expected {expected}")
    return path


def _check_id(i: int, vocab_size: int) -> int:
    i = int(i)
    if not 0 <= i < vocab_size:
        raise IndexError(f"token id {i} is outside the vocabulary [0, {vocab_size})")
    return i


# --- SentencePiece -------------------------------------------------------------------------


class SentencePieceTokenizer:
    """A sentencepiece model (unigram or BPE), as used by ALBERT and by our own LMs."""

    def __init__(self, model_file: str | os.PathLike):
        self.model_file = check_nonempty_file(model_file, "a sentencepiece .model file")
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        self.vocab_size = self.sp.get_piece_size()

        def fixed(i: int) -> int | None:  # sentencepiece marks a disabled piece with -1
            return i if i >= 0 else None

        self.pad_id = fixed(self.sp.pad_id())
        self.unk_id = fixed(self.sp.unk_id())
        self.bos_id = fixed(self.sp.bos_id())
        self.eos_id = fixed(self.sp.eos_id())
        if self.eos_id is None:
            self.eos_id = self.token_to_id(ENDOFTEXT)
        self.cls_id = self.token_to_id("[CLS]")
        self.sep_id = self.token_to_id("[SEP]")
        self.mask_id = self.token_to_id("[MASK]")

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def id_to_token(self, i: int) -> str:
        return self.sp.id_to_piece(_check_id(i, self.vocab_size))

    def token_to_id(self, token: str) -> int | None:
        i = self.sp.piece_to_id(token)  # gives unk's id for a piece it does not know
        return i if self.sp.id_to_piece(i) == token else None

    def to_hf(self) -> tokenizers.Tokenizer:
        """This model in ``tokenizers``: the normalizer's character map (``Precompiled``), its
        whitespace rules, ``▁`` for spaces with the dummy prefix, and the pieces (a unigram model
        with their scores; a BPE one with merges ranked by the merged piece's score, the order in
        which sentencepiece merges). Unknown characters give one ``<unk>`` per run, or bytes with
        ``byte_fallback``. The special and user-defined pieces are special tokens.

        Its ids equal ours except where the text holds a piece's name: a control or unknown piece
        written in the text (``<s>``, ``<|endoftext|>``, ``<pad>``, ``<unk>``) is that token here,
        text in sentencepiece. A unigram model reads user-defined pieces (``[MASK]``) as
        sentencepiece does, through its scores (``encode_special_tokens``); a BPE model cannot,
        so they are matched before the model, which loses the lone ``▁`` sentencepiece puts
        before one that begins the text.
        """
        proto = sentencepiece_model_pb2.ModelProto.FromString(self.sp.serialized_model_proto())
        trainer, norm = proto.trainer_spec, proto.normalizer_spec
        kind = sentencepiece_model_pb2.ModelProto.SentencePiece
        unigram = trainer.model_type == trainer.UNIGRAM
        if not unigram and trainer.model_type != trainer.BPE:
            raise ValueError(f"{self.model_file}: only unigram and BPE sentencepiece models have a tokenizer.json here")
        if not (norm.remove_extra_whitespaces and norm.escape_whitespaces) or trainer.treat_whitespace_as_suffix:
            raise ValueError(f"{self.model_file}: its whitespace rules (remove_extra_whitespaces=false, "
                             "escape_whitespaces=false or treat_whitespace_as_suffix) have no tokenizer.json here")
        pieces = proto.pieces
        if unigram:
            model = tokenizers.models.Unigram([(p.piece, p.score) for p in pieces], unk_id=self.unk_id,
                                              byte_fallback=trainer.byte_fallback)
        else:
            model = tokenizers.models.BPE({p.piece: i for i, p in enumerate(pieces)}, _spm_merges(pieces),
                                          unk_token=pieces[self.unk_id].piece, fuse_unk=True,
                                          byte_fallback=trainer.byte_fallback)
        backend = tokenizers.Tokenizer(model)
        # sentencepiece maps the characters, then drops spaces at the end and repeated ones.
        backend.normalizer = normalizers.Sequence([
            *([normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []),
            normalizers.Replace(Regex(" {2,}"), " "),
            normalizers.Replace(Regex(r" +\z"), ""),
        ])
        # The dummy prefix goes before the first word only; a space left at the start already is one.
        prepend = "first" if norm.add_dummy_prefix else "never"
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend, split=True)
        backend.decoder = decoders.Sequence([
            decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme=prepend, split=True)])
        specials = [p.piece for p in pieces if p.type in (kind.CONTROL, kind.UNKNOWN, kind.USER_DEFINED)]
        # Matched in the normalized text, as sentencepiece matches them after its normalizer.
        backend.add_special_tokens([AddedToken(piece, special=True, normalized=True) for piece in specials])
        backend.encode_special_tokens = unigram
        return backend


def _spm_merges(pieces) -> list[tuple[str, str]]:
    """A sentencepiece BPE model's merges, for ``tokenizers.models.BPE``: every split of a normal
    piece into two normal pieces, the best-scored merged piece first (sentencepiece merges the
    adjacent pair whose union scores best)."""
    normal = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
    scores = {p.piece: p.score for p in pieces if p.type == normal}
    merges = [(-score, piece, piece[:k], piece[k:]) for piece, score in scores.items()
              for k in range(1, len(piece)) if piece[:k] in scores and piece[k:] in scores]
    return [(a, b) for _, _, a, b in sorted(merges)]


def train_sentencepiece(
    inputs: str | os.PathLike | Sequence[str | os.PathLike] | Iterable[str],
    model_prefix: str | os.PathLike,
    vocab_size: int,
    model_type: str = "unigram",
    user_defined_symbols: Sequence[str] = BERT_SYMBOLS,
    control_symbols: Sequence[str] = (),
    input_sentence_size: int = 1_000_000,
    num_threads: int | None = None,
    **trainer_options,
) -> Path:
    """Train a sentencepiece model on text files or an iterator of sentences; return the .model.

    The special pieces fit both our LMs and BERT/ALBERT: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2,
    ``<|endoftext|>`` 3 (the eos piece, so GPT-style data separates documents as GPT-2 does),
    then ``user_defined_symbols`` (by default ``[CLS]``, ``[SEP]``, ``[MASK]``, which are kept
    whole when written in the text, e.g. in a fill-mask prompt), then ``control_symbols``
    (never produced from text).

    ``inputs`` is a path or a list of paths of text files, read one sentence per line, or an
    iterator of sentences (a generator, ``iter(sentences)``); a list of strings is taken as paths.

    Training reads at most ``input_sentence_size`` sentences, sampled at random, which keeps it
    fast; ``trainer_options`` go to ``SentencePieceTrainer.train`` as they are (for example
    ``byte_fallback=True`` or ``character_coverage=1.0``).
    """
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    specials = (SPM_PAD, SPM_UNK, SPM_BOS, SPM_EOS, *user_defined_symbols, *control_symbols)
    if vocab_size <= len(specials):
        raise ValueError(f"vocabulary size {vocab_size} leaves no room for text: it must exceed the {len(specials)} "
                         f"special pieces ({' '.join(specials)}) and hold every character of the text besides")
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if isinstance(inputs, Sequence) and all(isinstance(p, (str, os.PathLike)) for p in inputs):
        for path in inputs:
            check_nonempty_file(
                path,
                "a text file, one sentence per line (to train on sentences held in memory, "
                "pass an iterator over them, e.g. iter(sentences))",
            )
        source = {"input": ",".join(str(p) for p in inputs)}
        what = ", ".join(str(p) for p in inputs)
    else:
        source = {"sentence_iterator": iter(inputs)}
        what = "the input"

    options = dict(
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        pad_piece=SPM_PAD, unk_piece=SPM_UNK, bos_piece=SPM_BOS, eos_piece=SPM_EOS,
        user_defined_symbols=list(user_defined_symbols),
        control_symbols=list(control_symbols),
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        num_threads=num_threads or min(os.cpu_count() or 1, 16),
        minloglevel=1,
    )
    options.update(trainer_options)
    try:
        spm.SentencePieceTrainer.train(**source, **options)
    except RuntimeError as e:
        message = _refusal(str(e), vocab_size, what)
        if message is None:
            raise
        raise ValueError(message) from None
    return model_prefix.with_name(model_prefix.name + ".model")


def _refusal(error: str, vocab_size: int, what: str) -> str | None:
    """sentencepiece's refusal of a vocabulary size or of an empty input (a multi-line check
    failure) as one line that says what to ask for; None for any other error."""
    if "sentences_.empty()" in error or "(all_chars_count) > (0)" in error:
        return f"no text to train on in {what}: every line is blank"
    if "Vocabulary size too high" in error:
        most = regex.search(r"<= (\d+)", error)
        ask = f"sentencepiece can make at most {most[1]} pieces from it; ask for at most {most[1]}" if most else "ask for fewer pieces"
        return f"vocabulary size {vocab_size} is too large for {what}: {ask}, or train on more text"
    if "Vocabulary size is smaller than required_chars" in error:
        least = regex.search(r"required_chars\. \d+ vs (\d+)", error)
        need = f"it needs at least {least[1]} pieces" if least else "it needs more pieces"
        return (f"vocabulary size {vocab_size} is too small for {what}: {need} (the special pieces and one per "
                "character kept); ask for more, or lower character_coverage")
    return None


_SENTENCE_END = regex.compile(r"(?<=[.!?])\s+")


def training_sentences(texts: Iterable[str]) -> Iterator[str]:
    """The non-blank lines of the documents, cut after sentence-ending punctuation.

    sentencepiece trains on sentences and skips any longer than ``max_sentence_length`` bytes,
    so a corpus stored one document per line (such as the SOTU JSONL) must be cut first.
    """
    for text in texts:
        for line in text.splitlines():
            yield from (s for s in _SENTENCE_END.split(line) if s.strip())


# --- GPT-2 byte-level BPE ------------------------------------------------------------------

# GPT-2's pre-tokenisation: common English contractions, runs of letters, of digits, of other
# symbols (each optionally led by one space), and whitespace, keeping the last space of a run
# for the word that follows.
GPT2_SPLIT_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Bytes that are printable Latin-1 characters map to themselves; the others (control
    characters, space, ...) map to unused code points from 256 up, so that no BPE token holds
    whitespace or control characters.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


class ByteLevelBPETokenizer:
    """GPT-2's byte-level BPE: UTF-8 bytes, mapped to characters, merged by ranked merges.

    Build it from a vocabulary (token -> id) and the ranked merges, or with ``from_files``
    (``vocab.json`` + ``merges.txt``, or ``encoder.json`` + ``vocab.bpe``), ``from_tokenizer_json``
    or ``from_directory``.
    """

    CACHE_SIZE = 100_000  # words whose BPE is remembered; cleared when full

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]]):
        self.encoder = dict(vocab)
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.vocab_size = max(self.decoder) + 1
        self.bpe_ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        missing = [c for c in self.byte_encoder.values() if c not in self.encoder]
        if missing:
            raise ValueError(
                f"not a byte-level BPE vocabulary: {len(missing)} of the 256 byte tokens are "
                f"missing (e.g. {missing[0]!r})"
            )
        self.eos_id = self.encoder.get(ENDOFTEXT)
        self.bos_id = self.eos_id  # GPT-2 starts unconditional samples with <|endoftext|>
        self.pad_id = self.unk_id = self.mask_id = self.cls_id = self.sep_id = None
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_files(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike):
        """Load ``vocab.json`` + ``merges.txt`` (Hugging Face's names) or ``encoder.json`` +
        ``vocab.bpe`` (OpenAI's): a JSON token -> id map and one ``a b`` merge per line."""
        vocab_file = check_nonempty_file(vocab_file, "a JSON object mapping token to id")
        merges_file = check_nonempty_file(merges_file, "BPE merges, one 'a b' pair per line")
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        merges = []
        for n, line in enumerate(merges_file.read_text(encoding="utf-8").splitlines(), 1):
            if not line or line.startswith("#version"):
                continue
            pair = line.split(" ")
            if len(pair) != 2:
                raise ValueError(f"{merges_file}:{n}: expected one 'a b' merge, got {line!r}")
            merges.append(tuple(pair))
        return cls(vocab, merges)

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike):
        """Load a Hugging Face ``tokenizer.json`` holding a byte-level BPE model."""
        path = check_nonempty_file(path, "a Hugging Face tokenizer.json")
        config = json.loads(path.read_text(encoding="utf-8"))
        model = config.get("model") or {}
        byte_level = _find_byte_level(config.get("pre_tokenizer"))
        if model.get("type") != "BPE" or byte_level is None:
            raise ValueError(
                f"{path} holds a {model.get('type')} model without GPT-2's byte-level "
                "pre-tokenizer; expected a byte-level BPE tokenizer.json"
            )
        if byte_level.get("add_prefix_space") or not byte_level.get("use_regex", True):
            raise ValueError(
                f"{path} pre-tokenizes unlike GPT-2 (add_prefix_space or a regex of its own); "
                "only GPT-2's pre-tokenisation is implemented"
            )
        vocab = dict(model["vocab"])
        for added in config.get("added_tokens", []):
            vocab.setdefault(added["content"], added["id"])
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        return cls(vocab, merges)

    @classmethod
    def from_directory(cls, path: str | os.PathLike):
        """Load from a folder holding vocab.json + merges.txt, encoder.json + vocab.bpe, or
        tokenizer.json, in that order of preference."""
        path = Path(path)
        for vocab_name, merges_name in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
            has_vocab, has_merges = (path / vocab_name).exists(), (path / merges_name).exists()
            if has_vocab and has_merges:
                return cls.from_files(path / vocab_name, path / merges_name)
            if has_vocab or has_merges:
                found, lacking = (vocab_name, merges_name) if has_vocab else (merges_name, vocab_name)
                raise FileNotFoundError(f"{path} holds {found} but not {lacking}, which goes with it")
        if (path / "tokenizer.json").exists():
            return cls.from_tokenizer_json(path / "tokenizer.json")
        raise FileNotFoundError(
            f"no byte-level BPE files in {path}: expected vocab.json + merges.txt, "
            "encoder.json + vocab.bpe, or tokenizer.json"
        )

    def bpe(self, word: str) -> list[str]:
        """Split one pre-token (already mapped to byte characters) by the ranked merges."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.clear()
        self._cache[word] = parts
        return parts

    def tokenize(self, text: str) -> Iterator[str]:
        for pretoken in GPT2_SPLIT_PATTERN.findall(text):
            yield from self.bpe("".join(self.byte_encoder[b] for b in pretoken.encode("utf-8")))

    def encode(self, text: str) -> list[int]:
        return [self.encoder[token] for token in self.tokenize(text)]

    def decode(self, ids: Iterable[int]) -> str:
        data = bytearray()
        for i in ids:
            token = self.id_to_token(i)
            if all(c in self.byte_decoder for c in token):
                data.extend(self.byte_decoder[c] for c in token)
            else:  # an added token whose text is not written in byte characters
                data.extend(token.encode("utf-8"))
        return data.decode("utf-8", errors="replace")

    def id_to_token(self, i: int) -> str:
        i = _check_id(i, self.vocab_size)
        if i not in self.decoder:
            raise IndexError(f"token id {i} is unused in this vocabulary")
        return self.decoder[i]

    def token_to_id(self, token: str) -> int | None:
        return self.encoder.get(token)

    def to_hf(self) -> tokenizers.Tokenizer:
        """This tokenizer in ``tokenizers``: the same pre-tokenisation, byte map and ranked merges,
        so the same ids. ``<|endoftext|>`` is a special token that ``encode_special_tokens`` leaves
        to the model, so written in the text it is ordinary text, as here."""
        merges = sorted(self.bpe_ranks, key=self.bpe_ranks.get)
        backend = tokenizers.Tokenizer(tokenizers.models.BPE(self.encoder, merges))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        if self.eos_id is not None:
            backend.add_special_tokens([AddedToken(ENDOFTEXT, special=True, normalized=False)])
        backend.encode_special_tokens = True
        return backend


def _find_byte_level(pre_tokenizer) -> dict | None:
    """The ByteLevel step of a tokenizer.json pre-tokenizer, alone or within a Sequence."""
    if not isinstance(pre_tokenizer, dict):
        return None
    if pre_tokenizer.get("type") == "ByteLevel":
        return pre_tokenizer
    steps = (_find_byte_level(p) for p in pre_tokenizer.get("pretokenizers", []))
    return next((step for step in steps if step is not None), None)


# --- BERT WordPiece ------------------------------------------------------------------------


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    # Control, format, private-use and surrogate characters are dropped, as Hugging Face's
    # BertNormalizer does; the original BERT code dropped only Cc and Cf.
    return char not in "\t\n\r" and unicodedata.category(char) in ("Cc", "Cf", "Co", "Cs")


def _is_punctuation(char: str) -> bool:
    # BERT counts every non-alphanumeric ASCII symbol ("$", "^", "`", ...) as punctuation.
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(cp: int) -> bool:
    # The CJK Unified Ideographs blocks; Hangul and kana are written with spaces, so not here.
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class WordPieceTokenizer:
    """BERT's tokenizer: basic tokenisation, then greedy longest-match-first WordPiece.

    Basic tokenisation drops control characters, turns whitespace into spaces, puts spaces
    around CJK ideographs, splits on whitespace, optionally lowercases and strips accents
    (``strip_accents=None`` follows ``lowercase``, as in BERT), and splits off punctuation.
    Each word is then covered by the longest vocabulary pieces from its start, later pieces
    written with ``##``; a word that cannot be covered, or longer than ``max_word_chars``
    characters, becomes ``[UNK]``.
    """

    SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

    def __init__(
        self,
        vocab_file: str | os.PathLike,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        max_word_chars: int = 100,
    ):
        self.vocab_file = check_nonempty_file(vocab_file, "a WordPiece vocab.txt, one token per line")
        lines = self.vocab_file.read_text(encoding="utf-8").split("\n")
        if lines[-1] == "":
            lines.pop()
        self.tokens = [line.rstrip("\r") for line in lines]
        self.vocab = {token: i for i, token in enumerate(self.tokens)}
        self.vocab_size = len(self.tokens)
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.max_word_chars = max_word_chars

        self.pad_id = self.vocab.get("[PAD]")
        self.unk_id = self.vocab.get("[UNK]")
        self.cls_id = self.vocab.get("[CLS]")
        self.sep_id = self.vocab.get("[SEP]")
        self.mask_id = self.vocab.get("[MASK]")
        self.eos_id = self.bos_id = None
        if self.unk_id is None:
            raise ValueError(f"{self.vocab_file} has no [UNK] token, which WordPiece needs")
        specials = [t for t in self.SPECIAL_TOKENS if t in self.vocab]
        self._special_split = regex.compile("(" + "|".join(map(regex.escape, specials)) + ")")

    def basic_tokenize(self, text: str) -> list[str]:
        """Split text into words and punctuation, before WordPiece."""
        chars = []
        for char in text:
            cp = ord(char)
            if cp == 0 or cp == 0xFFFD or _is_control(char):
                continue
            if _is_whitespace(char):
                chars.append(" ")
            elif _is_cjk(cp):
                chars.append(f" {char} ")
            else:
                chars.append(char)
        words = []
        for word in "".join(chars).split():
            if self.lowercase:
                word = word.lower()
            if self.strip_accents:
                word = "".join(
                    c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn"
                )
            piece = []
            for char in word:
                if _is_punctuation(char):
                    if piece:
                        words.append("".join(piece))
                        piece = []
                    words.append(char)
                else:
                    piece.append(char)
            if piece:
                words.append("".join(piece))
        return words

    def wordpiece(self, word: str) -> list[str]:
        """Cover one word with vocabulary pieces, longest first; ``[UNK]`` if that fails."""
        if len(word) > self.max_word_chars:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    pieces.append(piece)
                    start = end
                    break
            else:
                return ["[UNK]"]
        return pieces

    def tokenize(self, text: str) -> list[str]:
        tokens = []
        for i, chunk in enumerate(self._special_split.split(text)):
            if i % 2:  # a special token written in the text
                tokens.append(chunk)
            else:
                for word in self.basic_tokenize(chunk):
                    tokens.extend(self.wordpiece(word))
        return tokens

    def encode(self, text: str) -> list[int]:
        return [self.vocab[token] for token in self.tokenize(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Join the tokens with spaces and glue ``##`` pieces on; casing and spacing of the
        original text are not recovered."""
        return " ".join(self.id_to_token(i) for i in ids).replace(" ##", "")

    def id_to_token(self, i: int) -> str:
        return self.tokens[_check_id(i, self.vocab_size)]

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def to_hf(self) -> tokenizers.Tokenizer:
        """This tokenizer in ``tokenizers`` (its BERT normalizer, pre-tokenizer and WordPiece, with
        our lowercasing and accent stripping), which is what transformers' ``BertTokenizer`` runs:
        special tokens written in the text are kept whole in both. The ids equal ours except on
        rarely used characters whose Unicode properties differ between Python's ``unicodedata``
        and the tables in ``tokenizers`` (punctuation and marks of recent Unicode versions, part
        of CJK Extension E), where ``BertTokenizer`` differs from ours the same way."""
        backend = tokenizers.Tokenizer(tokenizers.models.WordPiece(
            self.vocab, unk_token=self.tokens[self.unk_id], max_input_chars_per_word=self.max_word_chars))
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=self.strip_accents, lowercase=self.lowercase)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        specials = [t for t in self.SPECIAL_TOKENS if t in self.vocab]
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
        return backend


# --- Loading -------------------------------------------------------------------------------

_EXPECTED = (
    "a sentencepiece .model file, a WordPiece vocab.txt, or a folder holding one of: "
    "vocab.json + merges.txt, encoder.json + vocab.bpe, vocab.txt, one *.model, "
    "a byte-level BPE tokenizer.json"
)


def load_tokenizer(path: str | os.PathLike, lowercase: bool = True) -> Tokenizer:
    """Load the tokenizer whose files are at ``path`` (a file or a folder).

    ``lowercase`` applies to WordPiece vocabularies only (True for uncased BERT models).
    In a folder, byte-level BPE files win over ``vocab.txt``, which wins over a ``.model``
    file, which wins over ``tokenizer.json``: Hugging Face folders often hold a
    ``tokenizer.json`` beside the files the model was released with.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix == ".model":
            return SentencePieceTokenizer(path)
        if path.name.endswith("vocab.txt"):
            return WordPieceTokenizer(path, lowercase=lowercase)
        if path.name == "tokenizer.json":
            return ByteLevelBPETokenizer.from_tokenizer_json(path)
        raise ValueError(f"unknown tokenizer file {path}: expected {_EXPECTED}")
    if not path.is_dir():
        raise FileNotFoundError(f"no tokenizer at {path}: expected {_EXPECTED}")

    if any((path / name).exists() for name in ("vocab.json", "merges.txt", "encoder.json", "vocab.bpe")):
        return ByteLevelBPETokenizer.from_directory(path)
    if (path / "vocab.txt").exists():
        return WordPieceTokenizer(path / "vocab.txt", lowercase=lowercase)
    models = sorted(path.glob("*.model"))
    if len(models) > 1:
        raise ValueError(f"{path} holds several .model files ({[m.name for m in models]}); pass one")
    if models:
        return SentencePieceTokenizer(models[0])
    if (path / "tokenizer.json").exists():
        return ByteLevelBPETokenizer.from_tokenizer_json(path / "tokenizer.json")
    raise FileNotFoundError(f"no tokenizer files in {path}: expected {_EXPECTED}")


def tokenizer_id(path) -> str:
    """Identity of a tokenizer's files (name + content hash), for the token cache key."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return f"{path.name}-{digest.hexdigest()[:16]}"


def train_tokenizer_files(inputs, out: Path, *, vocab_size: int, model_type: str = "unigram", text_field: str = "text",
                          input_sentence_size: int = 1_000_000, byte_fallback: bool = False,
                          overwrite: bool = False) -> dict:
    """Train a sentencepiece model on text and .jsonl files (``jaxlm tokenizer``): writes
    ``out.model`` and ``out.vocab``, refuses to replace a model unless ``overwrite``, and returns
    a summary with the special pieces' ids. ``out`` may name the model file itself (``x.model``
    is the prefix ``x``)."""
    from train.data.documents import read_texts

    out = Path(out)
    out = out.with_suffix("") if out.suffix == ".model" else out
    model_file = out.with_name(out.name + ".model")
    if model_file.exists() and not overwrite:
        raise FileExistsError(f"{model_file} exists; pass --overwrite to replace it, or choose another --out")
    for path in inputs:
        check_nonempty_file(path, "a text or .jsonl file to train on")
    train_sentencepiece(training_sentences(read_texts(inputs, text_field)), out, vocab_size=vocab_size,
                        model_type=model_type, input_sentence_size=input_sentence_size, byte_fallback=byte_fallback)
    tokenizer = SentencePieceTokenizer(model_file)
    return {
        "model": str(model_file), "vocab": str(out.with_name(out.name + ".vocab")), "model_type": model_type,
        "vocab_size": tokenizer.vocab_size, "inputs": [str(p) for p in inputs],
        **{f"{name}_id": getattr(tokenizer, f"{name}_id") for name in ("pad", "unk", "bos", "eos", "cls", "sep", "mask")},
    }
