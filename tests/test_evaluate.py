"""Evaluation of run folders and HF folders, the unigram baseline, and sampling."""

import jax
import numpy as np
import pytest
from conftest import tiny_config

import models
from models import hf
from models.generation import generate
from train.checkpoint import load_params
from train.evaluation import evaluate_checkpoint, unigram_baseline
from train.loop import train


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("eval") / "run"
    train(tiny_config(corpus, workdir, steps=6, eval_data=None))
    return workdir


def test_run_folder_and_its_hf_export_evaluate_alike(corpus, run, tmp_path):
    root, spm = corpus
    ours = evaluate_checkpoint(run, str(root / "validation.jsonl"), unigram_from=str(root / "train.jsonl"))
    assert ours["step"] == 6 and ours["seq_len"] == 32
    assert ours["perplexity"] == pytest.approx(np.exp(ours["loss"]))
    assert ours["unigram_baseline"]["tokens"] == ours["tokens"]
    assert ours["model_config"]["d_model"] == 32
    _, config, params, _ = load_params(run)
    folder = hf.save_pretrained(tmp_path / "hf", config, params)
    theirs = evaluate_checkpoint(folder, str(root / "validation.jsonl"), tokenizer=str(spm), seq_len=32)
    assert theirs["tokens"] == ours["tokens"]
    assert theirs["loss"] == pytest.approx(ours["loss"], abs=1e-5)
    with pytest.raises(ValueError, match="no tokenizer"):
        evaluate_checkpoint(folder, str(root / "validation.jsonl"))


def test_unigram_baseline_is_the_entropy_of_the_counts():
    result = unigram_baseline(np.array([0, 0, 1, 1]), np.array([0, 1]), vocab_size=2)
    assert result["loss"] == pytest.approx(np.log(2))
    smoothed = unigram_baseline(np.array([0, 0, 0]), np.array([1]), vocab_size=2)
    assert smoothed["perplexity"] == pytest.approx(5.0)  # p(1) = (0 + 1) / (3 + 2)


@pytest.mark.slow
def test_greedy_generation_matches_step_by_step_argmax():
    module, config = models.create("gpt2-tiny")
    params = models.init_params(module, jax.random.key(0))
    prompt = [5, 17, 3]
    ids = generate(module, params, prompt, 6, temperature=0.0)
    seq = list(prompt)
    for _ in range(6):
        seq.append(int(np.argmax(module.apply({"params": params}, np.array([seq]))[0, -1])))
    assert ids == seq[len(prompt):]
    sampled = generate(module, params, prompt, 6, rng=jax.random.PRNGKey(1), temperature=1.0, top_k=5)
    assert len(sampled) == 6 and all(0 <= t < config.vocab_size for t in sampled)
    with pytest.raises(ValueError, match="exceed the context of 64"):
        generate(module, params, prompt, 62)


def test_cheaper_variants_evaluate_and_generate(corpus, run, capsys):
    """--dtype bfloat16 and --quantize int8 on a trained run: evaluation and generation scripts."""
    import sys

    from test_benchmark import ROOT

    root, _ = corpus
    data = str(root / "validation.jsonl")
    fp32 = evaluate_checkpoint(run, data)
    for variant, ratio in (({"dtype": "bfloat16"}, 0.5), ({"quantize": "int8"}, 0.35)):
        cheaper = evaluate_checkpoint(run, data, **variant)
        assert cheaper["loss"] == pytest.approx(fp32["loss"], abs=0.05), variant
        assert cheaper["param_bytes"] <= ratio * fp32["param_bytes"], variant
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import generate as script
    finally:
        sys.path.pop(0)
    result = script.main([str(run), "--prompt", "the union", "--max-new-tokens", "5", "--num-samples", "2",
                          "--quantize", "int8", "--dtype", "bfloat16", "--top-p", "0.9"])
    assert len(result["continuations"]) == 2 and result["tokens_per_s"] > 0
    assert result["dtype"] == "bfloat16" and result["quantize"] == "int8"
    assert '"tokens_per_s"' in capsys.readouterr().out
