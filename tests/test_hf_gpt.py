"""GPT / GPT-2 against transformers' PyTorch implementation, both directions."""

import json
import os
import pickle
import stat
import zipfile
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
import transformers
from conftest import jaxlm, torch_logits
from test_tokenizers import HF_TEXTS, small_sentencepiece

import models
from models import hf
from train.checkpoint import load_params, save_params
from train.data.tokenizers import bytes_to_unicode, load_tokenizer

# Shapes unlike the presets: head counts that are not powers of two, d_ff != 4 d, other epsilons.
CASES = {
    "gpt2-3heads": (transformers.GPT2LMHeadModel, transformers.GPT2Config(
        vocab_size=97, n_positions=40, n_embd=48, n_layer=3, n_head=3, n_inner=100, layer_norm_epsilon=1e-6)),
    "gpt2-5heads-relu": (transformers.GPT2LMHeadModel, transformers.GPT2Config(
        vocab_size=260, n_positions=24, n_embd=40, n_layer=2, n_head=5, activation_function="relu")),
    "gpt2-exact-gelu": (transformers.GPT2LMHeadModel, transformers.GPT2Config(
        vocab_size=50, n_positions=32, n_embd=24, n_layer=1, n_head=6, n_inner=72, activation_function="gelu",
        layer_norm_epsilon=1e-3)),
    "openai-gpt-5heads": (transformers.OpenAIGPTLMHeadModel, transformers.OpenAIGPTConfig(
        vocab_size=97, n_positions=40, n_embd=40, n_layer=2, n_head=5)),
    "openai-gpt-eps": (transformers.OpenAIGPTLMHeadModel, transformers.OpenAIGPTConfig(
        vocab_size=77, n_positions=20, n_embd=36, n_layer=3, n_head=3, layer_norm_epsilon=1e-7)),
}


def make_reference(case, tmp_path, **save_kw):
    cls, config = CASES[case]
    torch.manual_seed(0)
    model = cls(config).eval()
    folder = tmp_path / case
    model.save_pretrained(folder, **save_kw)
    return model, folder


def batch(config, rng, length=13):
    ids = rng.randint(0, config.vocab_size, (3, length))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    mask[2, :4] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_reference(case, tmp_path, rng):
    ref, folder = make_reference(case, tmp_path)
    module, config, params = hf.load_pretrained(folder)
    ids, mask = batch(config, rng)
    ours = np.asarray(module.apply({"params": params}, ids))
    np.testing.assert_allclose(ours, torch_logits(ref, ids), atol=1e-4, rtol=0)
    ours = np.asarray(module.apply({"params": params}, ids, attention_mask=mask))
    theirs = torch_logits(ref, ids, mask)
    real = mask.astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() < 1e-4


@pytest.mark.parametrize("case", ["gpt2-3heads", "openai-gpt-eps"])
def test_export_loads_in_transformers_with_same_logits(case, tmp_path, rng):
    cls, _ = CASES[case]
    ref, folder = make_reference(case, tmp_path)
    module, config, params = hf.load_pretrained(folder, scan_layers=False)
    out = hf.save_pretrained(tmp_path / "exported", config, params)
    back = cls.from_pretrained(out).eval()
    ids, mask = batch(config, rng)
    np.testing.assert_allclose(torch_logits(back, ids, mask), torch_logits(ref, ids, mask), atol=1e-6)
    ours = np.asarray(module.apply({"params": params}, ids))
    np.testing.assert_allclose(torch_logits(back, ids), ours, atol=1e-4, rtol=0)
    state = hf.to_hf_state_dict(config, params)
    reference_state = {k: v.numpy() for k, v in ref.state_dict().items() if k in state}
    assert set(reference_state) == set(state)
    for k in state:
        np.testing.assert_array_equal(state[k], reference_state[k], err_msg=k)


def test_randomly_initialised_export_round_trip(tmp_path, rng):
    """Our own initialisation exported to transformers gives our logits."""
    module, config = models.create("gpt2-tiny", n_head=2, d_ff=80)
    params = models.init_params(module, jax.random.key(5))
    back = transformers.GPT2LMHeadModel.from_pretrained(hf.save_pretrained(tmp_path / "ours", config, params)).eval()
    ids = rng.randint(0, config.vocab_size, (2, 20))
    np.testing.assert_allclose(torch_logits(back, ids), np.asarray(module.apply({"params": params}, ids)), atol=1e-4)


def test_pytorch_bin_checkpoints_read_without_torch_unpickling(tmp_path, rng):
    ref, folder = make_reference("gpt2-3heads", tmp_path)
    torch.save(ref.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    state = hf.read_state_dict(folder)
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(state[k], v.numpy())
    module, config, params = hf.load_pretrained(folder)
    ids, _ = batch(config, rng)
    np.testing.assert_allclose(np.asarray(module.apply({"params": params}, ids)), torch_logits(ref, ids), atol=1e-4)


def test_bf16_safetensors_load(tmp_path, rng):
    """Checkpoints are often saved in bf16: read as ml_dtypes.bfloat16, widened exactly to fp32."""
    ref, folder = make_reference("gpt2-3heads", tmp_path)
    ref.to(torch.bfloat16).save_pretrained(folder)
    assert hf.read_state_dict(folder)["transformer.wte.weight"].dtype == ml_dtypes.bfloat16
    module, config, params = hf.load_pretrained(folder)
    ids, _ = batch(config, rng)
    np.testing.assert_allclose(np.asarray(module.apply({"params": params}, ids)), torch_logits(ref.float(), ids),
                               atol=1e-4, rtol=0)


def test_unreadable_safetensors_are_named(tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2, dtype=torch.float8_e4m3fn)}, str(path))
    with pytest.raises(ValueError, match="tensor w has dtype F8_E4M3, which cannot be read into numpy"):
        hf.read_safetensors(path)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="is not a valid safetensors file"):
        hf.read_safetensors(path)


def test_bin_with_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": Exploit()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle builtins.print"):
        hf.read_torch_bin(path)


def test_other_architecture_is_refused(tmp_path):
    folder = tmp_path / "t5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5Model"]}))
    with pytest.raises(ValueError, match="model_type 't5'.*supported model types: .*gpt2"):
        hf.load_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf.load_pretrained(tmp_path / "nowhere")


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    ref, folder = make_reference("gpt2-3heads", tmp_path)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    del state["transformer.h.1.mlp.c_fc.bias"]
    state["transformer.ln_f.weight"] = np.zeros(5, np.float32)
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(folder / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        hf.load_pretrained(folder)
    assert "missing h.1.mlp.c_fc.bias" in str(err.value)
    assert "ln_f.weight has shape (5,), expected (48,)" in str(err.value)


def test_overrides_that_change_the_model_are_refused(tmp_path, rng):
    """4 heads of 12 hold as many parameters as the checkpoint's 3 heads of 16, but are another
    model; another activation or LayerNorm epsilon keeps every shape but computes another function."""
    ref, folder = make_reference("gpt2-3heads", tmp_path)
    for key, value, stored in (("n_head", 4, 3), ("activation", "relu", "'gelu_tanh'"), ("layer_norm_eps", 1e-5, 1e-06)):
        with pytest.raises(ValueError, match=rf"override {key}={value!r} changes the model the checkpoint holds "
                                             rf"\(its config.json sets {key}={stored}\); only dtype, "):
            hf.load_pretrained(folder, **{key: value}, dtype="bfloat16")
    ids, _ = batch(CASES["gpt2-3heads"][1], rng)
    for overrides in ({"scan_layers": True, "remat": "full"},
                      {"embed_dropout": 0.0, "attn_dropout": 0.0, "resid_dropout": 0.0},
                      {"dtype": "bfloat16", "param_dtype": "bfloat16"}):
        module, config, params = hf.load_pretrained(folder, **overrides)
        assert {k: getattr(config, k) for k in overrides} == overrides
        logits = np.asarray(module.apply({"params": params}, ids), np.float32)
        atol = 0.1 if config.dtype == "bfloat16" else 1e-4
        np.testing.assert_allclose(logits, torch_logits(ref, ids), atol=atol, rtol=0, err_msg=str(overrides))


def test_save_refuses_to_overwrite(tmp_path):
    module, config = models.create("gpt2-tiny")
    params = models.init_params(module, jax.random.key(0))
    folder = hf.save_pretrained(tmp_path / "out", config, params)
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="not empty"):
        hf.save_pretrained(folder, config, params)
    assert (folder / "model.safetensors").read_bytes() == before


def byte_level_bpe(folder: Path) -> None:
    """A tiny GPT-2 byte-level BPE: the 256 byte symbols, three merges, <|endoftext|>."""
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    merges = [("t", "h"), ("th", "e"), ("Ġ", "u")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def convert_hf(direction, source, out, *flags) -> dict:
    """``jaxlm convert DIRECTION SOURCE --out OUT FLAGS`` in this process; an expected error is
    raised (--debug), not turned into exit status 2."""
    return jaxlm("convert", direction, source, "--out", out, *flags, "--debug")


def generate(checkpoint, *flags) -> dict:
    return jaxlm("generate", checkpoint, *flags, "--debug")


def snapshot(folder: Path) -> dict:
    """Every file under ``folder``: its bytes and modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def assert_transformers_reads_our_ids(folder, ours, texts=HF_TEXTS):
    """AutoTokenizer on the exported folder gives our tokenizer's ids."""
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    for text in texts:
        assert theirs.encode(text, add_special_tokens=False) == ours.encode(text), text


def test_convert_both_directions_reads_its_sources_only(tmp_path, rng, capsys):
    ref, folder = make_reference("gpt2-5heads-relu", tmp_path)
    byte_level_bpe(folder)  # an HF GPT-2 folder holds its tokenizer
    hf_before = snapshot(folder)
    assert jaxlm("convert", "to-ours", folder, "--out", tmp_path / "ours")["out"] == str(tmp_path / "ours")
    assert snapshot(folder) == hf_before
    ours_before = snapshot(tmp_path / "ours")
    jaxlm("convert", "to-hf", tmp_path / "ours", "--out", tmp_path / "back")
    assert snapshot(tmp_path / "ours") == ours_before
    module, config, params, source = load_params(tmp_path / "ours")
    assert source.tokenizer == str(folder.absolute())
    ids, mask = batch(config, rng)
    np.testing.assert_allclose(np.asarray(module.apply({"params": params}, ids)), torch_logits(ref, ids), atol=1e-4)
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    np.testing.assert_array_equal(torch_logits(back, ids), torch_logits(ref, ids))
    # The tokenizer travelled with the weights, and transformers reads it as we do, <|endoftext|> in
    # the text included (text, not the end of a document).
    ours = load_tokenizer(folder)
    assert_transformers_reads_our_ids(tmp_path / "back", ours, HF_TEXTS + ["a<|endoftext|>b"])
    assert load_tokenizer(tmp_path / "back").encode(HF_TEXTS[0]) == ours.encode(HF_TEXTS[0])
    saved = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (saved["bos_token_id"], saved["eos_token_id"], saved["pad_token_id"]) == (ours.eos_id, ours.eos_id, None)
    capsys.readouterr()
    for direction, source, out in (("to-ours", folder, tmp_path / "ours"),
                                   ("to-hf", tmp_path / "ours", tmp_path / "back")):
        with pytest.raises(SystemExit) as e:  # an output folder in use
            jaxlm("convert", direction, source, "--out", out)
        assert e.value.code == 2 and "not empty" in capsys.readouterr().err, (direction, out)
    assert snapshot(folder) == hf_before and snapshot(tmp_path / "ours") == ours_before


def random_params(config, seed=0) -> dict:
    """Parameters of the config's shapes, drawn in numpy: these tests need weights, and a compiled
    init takes seconds."""
    rng = np.random.RandomState(seed)
    return jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), models.param_shapes(config.module()))


def gpt_run(tmp_path, tokenizer, name="run", params_fn=None) -> Path:
    """A gpt2-tiny run folder recording ``tokenizer``; ``params_fn`` may change the parameters."""
    _, config = models.create("gpt2-tiny")
    params = random_params(config)
    return save_params(tmp_path / name, config, params_fn(params) if params_fn else params,
                       {"data.tokenizer": str(tokenizer)})


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_to_hf_writes_a_sentencepiece_tokenizer_that_transformers_reads_as_we_do(model_type, tmp_path):
    spm_model = small_sentencepiece(tmp_path, model_type)
    result = convert_hf("to-hf", gpt_run(tmp_path, spm_model), tmp_path / "out")
    ours = load_tokenizer(spm_model)
    assert_transformers_reads_our_ids(tmp_path / "out", ours)
    assert result["tokenizer_files"] == ["sentencepiece.model", "tokenizer.json", "tokenizer_config.json"]
    assert load_tokenizer(tmp_path / "out").encode(HF_TEXTS[0]) == ours.encode(HF_TEXTS[0])
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert (theirs.eos_token_id, theirs.bos_token_id, theirs.pad_token_id) == (ours.eos_id, ours.bos_id, ours.pad_id)
    assert theirs.encode("the union") == ours.encode("the union")  # a GPT adds no special tokens


def test_to_hf_names_a_tokenizer_it_cannot_write(tmp_path, corpus):
    _, spm_model = corpus
    moved = gpt_run(tmp_path, tmp_path / "gone.model", name="moved")
    with pytest.raises(ValueError, match=r"cannot write the tokenizer .*gone.model.*--tokenizer PATH.*--no-tokenizer"):
        convert_hf("to-hf", moved, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    assert convert_hf("to-hf", moved, tmp_path / "out2", "--no-tokenizer")["tokenizer_files"] == []
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors"]
    assert json.loads((tmp_path / "out2" / "config.json").read_text())["eos_token_id"] is None
    folder = tmp_path / "big"
    folder.mkdir()
    byte_level_bpe(folder)  # 260 tokens, for a model of 256
    with pytest.raises(ValueError, match=r"it has 260 tokens, the model embeds 256\); pass --tokenizer"):
        convert_hf("to-hf", moved, tmp_path / "out3", "--tokenizer", folder)


def test_convert_refuses_an_out_folder_that_is_inside_or_holds_an_input(tmp_path, corpus, capsys):
    """to-hf --overwrite replaces --out: were it the run, inside it or around it, the run would be
    written; the same holds for the tokenizer folder and for to-ours's Hugging Face folder."""
    _, spm_model = corpus
    run = gpt_run(tmp_path, spm_model)
    hf_folder = tmp_path / "hf"
    convert_hf("to-hf", run, hf_folder)
    hf_run = convert_hf("to-ours", hf_folder, tmp_path / "hf-run")["out"]  # its tokenizer: the HF folder
    before = snapshot(tmp_path)
    refusals = [("to-hf", run, run, "is"), ("to-hf", run, run / "hf", "lies inside"), ("to-hf", run, tmp_path, "holds"),
                ("to-hf", hf_run, hf_folder, "is"), ("to-ours", hf_folder, hf_folder / "ours", "lies inside"),
                ("to-ours", hf_folder, tmp_path, "holds")]
    capsys.readouterr()
    for direction, source, out, where in refusals:
        with pytest.raises(SystemExit) as e:
            jaxlm("convert", direction, source, "--out", out, *(["--overwrite"] if direction == "to-hf" else []))
        assert e.value.code == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"error: --out {out} {where} the input ") and error.endswith(
            "which convert only reads; choose an --out outside it"), error
    assert snapshot(tmp_path) == before


def test_transformers_generate_stops_at_our_end_of_text(tmp_path, corpus):
    """config.json and generation_config.json carry our tokenizer's end-of-text (3, not GPT-2's 50256)."""
    _, spm_model = corpus
    eos = load_tokenizer(spm_model).eos_id

    def always_eos(params):  # the final LayerNorm outputs e_0, along which only <|endoftext|> embeds
        params["ln_f"] = {"scale": np.zeros_like(params["ln_f"]["scale"]), "bias": np.eye(params["ln_f"]["bias"].size, dtype=np.float32)[0]}
        params["wte"]["embedding"][:, 0] = 0
        params["wte"]["embedding"][eos, 0] = 10
        return params

    convert_hf("to-hf", gpt_run(tmp_path, spm_model, params_fn=always_eos), tmp_path / "out")
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert (model.generation_config.eos_token_id, model.config.eos_token_id) == (eos, eos)
    prompt = torch.tensor([[7, 8, 9]])
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False)
    assert out.tolist() == [[7, 8, 9, eos]]


def test_export_is_readable_as_the_umask_allows(tmp_path, corpus):
    """Not 0600/0700 (safetensors' and mkdtemp's modes): others may read an export on a shared disk."""
    _, spm_model = corpus
    run = gpt_run(tmp_path, spm_model)
    for umask, dir_mode, file_mode in ((0o022, 0o755, 0o644), (0o027, 0o750, 0o640)):
        old = os.umask(umask)
        try:
            out = Path(convert_hf("to-hf", run, tmp_path / f"out-{umask:o}")["out"])
        finally:
            os.umask(old)
        assert stat.S_IMODE(out.stat().st_mode) == dir_mode
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
        assert len(modes) == 6 and set(modes.values()) == {file_mode}, modes


def test_jaxlm_generate_reads_an_hf_folder_and_its_tokenizer(tmp_path, corpus):
    _, spm_model = corpus
    run = gpt_run(tmp_path, spm_model)
    convert_hf("to-hf", run, tmp_path / "hf")
    convert_hf("to-hf", run, tmp_path / "bare", "--no-tokenizer")
    args = ("--prompt", "the union", "--max-new-tokens", "4", "--temperature", "0")
    ours = generate(run, *args)
    assert generate(tmp_path / "hf", *args)["continuation"] == ours["continuation"]
    with pytest.raises(ValueError, match=r"no tokenizer files in .*bare: .*; pass --tokenizer"):
        generate(tmp_path / "bare", *args)
    assert generate(tmp_path / "bare", *args, "--tokenizer", spm_model)["continuation"] == ours["continuation"]


def test_a_classifier_exports_its_body_only_when_asked(tmp_path, rng):
    body_module, body = models.create("gpt2-tiny")
    config = models.ClassifierConfig(body, ("a", "b"))
    params = random_params(config)
    save_params(tmp_path / "clf", config, params)
    with pytest.raises(ValueError, match=r"holds a classifier, which has no Hugging Face export here .*"
                                         r"pass --body to write its GPTConfig body alone"):
        convert_hf("to-hf", tmp_path / "clf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    convert_hf("to-hf", tmp_path / "clf", tmp_path / "out", "--body")
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    ids = rng.randint(0, body.vocab_size, (2, 10))
    ours = np.asarray(body_module.apply({"params": params["body"]}, ids))
    np.testing.assert_allclose(torch_logits(back, ids), ours, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"--body writes a classifier's body; .*GPTConfig.*leave --body out"):
        convert_hf("to-hf", gpt_run(tmp_path, "unused"), tmp_path / "out2", "--body")
