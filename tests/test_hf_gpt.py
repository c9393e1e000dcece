"""GPT / GPT-2 against transformers' PyTorch implementation, both directions."""

import importlib.util
import json
import pickle
import subprocess
import sys
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
from conftest import torch_logits

import models
from models import hf
from train.checkpoint import load_params, save_params
from train.data.tokenizers import bytes_to_unicode, load_tokenizer

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_hf.py"

# Shapes unlike the presets: head counts that are not powers of two, d_ff != 4 d, other epsilons.
CASES = {
    "gpt2-3heads": (transformers.GPT2LMHeadModel, transformers.GPT2Config(
        vocab_size=97, n_positions=40, n_embd=48, n_layer=3, n_head=3, n_inner=100, layer_norm_epsilon=1e-6)),
    "gpt2-5heads-relu": (transformers.GPT2LMHeadModel, transformers.GPT2Config(
        vocab_size=61, n_positions=24, n_embd=40, n_layer=2, n_head=5, activation_function="relu")),
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


def convert_hf(*args) -> dict:
    """scripts/convert_hf.py's main, in this process."""
    spec = importlib.util.spec_from_file_location("convert_hf", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.main(list(map(str, args)))


TEXT = "the union, unthe 12 états!  x"


def test_convert_script_both_directions(tmp_path, rng):
    ref, folder = make_reference("gpt2-5heads-relu", tmp_path)
    byte_level_bpe(folder)  # an HF GPT-2 folder holds its tokenizer
    for args in (["to-ours", folder, tmp_path / "ours"], ["to-hf", tmp_path / "ours", tmp_path / "back"]):
        done = subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    module, config, params, run = load_params(tmp_path / "ours")
    assert run["tokenizer"] == str(folder.absolute())
    ids, mask = batch(config, rng)
    np.testing.assert_allclose(np.asarray(module.apply({"params": params}, ids)), torch_logits(ref, ids), atol=1e-4)
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    np.testing.assert_array_equal(torch_logits(back, ids), torch_logits(ref, ids))
    # The tokenizer travelled with the weights, and transformers reads it as we do.
    ours = load_tokenizer(folder).encode(TEXT)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "back").encode(TEXT) == ours
    assert load_tokenizer(tmp_path / "back").encode(TEXT) == ours
    again = subprocess.run([sys.executable, SCRIPT, "to-ours", str(folder), str(tmp_path / "ours")],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_to_hf_writes_the_runs_tokenizer(tmp_path, corpus):
    """A sentencepiece model travels for our loader only (no transformers class reads it for GPT-2);
    a tokenizer that is not where run.json says is named, with the ways out."""
    _, spm_model = corpus
    module, config = models.create("gpt2-tiny")
    params = models.init_params(module, jax.random.key(0))
    save_params(tmp_path / "run", config, params, {"tokenizer": str(spm_model)})
    result = convert_hf("to-hf", tmp_path / "run", tmp_path / "out")
    assert result["tokenizer_files"] == ["sentencepiece.model"]
    assert load_tokenizer(tmp_path / "out").encode(TEXT) == load_tokenizer(spm_model).encode(TEXT)
    save_params(tmp_path / "moved", config, params, {"tokenizer": str(tmp_path / "gone.model")})
    with pytest.raises(ValueError, match=r"cannot write the tokenizer .*gone.model.*--tokenizer PATH.*--no-tokenizer"):
        convert_hf("to-hf", tmp_path / "moved", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    assert convert_hf("to-hf", tmp_path / "moved", tmp_path / "out2", "--no-tokenizer")["tokenizer_files"] == []
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["config.json", "model.safetensors"]
