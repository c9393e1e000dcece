"""Evaluation of run folders and HF folders, the unigram baseline, and sampling."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import config_file, damage_arrays, jaxlm, tiny_config

import models
from jaxlm import cli
from models import hf
from models.generation import generate
from train.checkpoint import CheckpointError, load_params
from train.data.tokenizers import load_tokenizer, tokenizer_id
from train.evaluation import evaluate_checkpoint, unigram_baseline
from train.loop import train
from train.tasks import LanguageModeling

REPO = Path(__file__).resolve().parents[1]


RUN = {"steps": 6, "data.eval": None}  # checkpoints at steps 4 and 6


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("eval") / "run"
    train(tiny_config(corpus, workdir, **RUN))
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
    theirs = evaluate_checkpoint(folder, str(root / "validation.jsonl"), tokenizer=str(spm),
                                 overrides={"data.seq_len": 32})
    assert theirs["tokens"] == ours["tokens"]
    assert theirs["loss"] == pytest.approx(ours["loss"], abs=1e-5)
    with pytest.raises(ValueError, match=f"^no tokenizer files in {folder}: .*; pass --tokenizer with the model's"):
        evaluate_checkpoint(folder, str(root / "validation.jsonl"))


def test_a_damaged_step_is_one_line_on_stderr_that_names_the_other_steps(corpus, run, tmp_path):
    """Damaged arrays (TensorStore's error holds a 60-line spec) and an empty manifest (the reads
    abandoned by orbax report dozens of tracebacks): jaxlm prints the message alone."""
    root, _ = corpus
    arrays, manifest = tmp_path / "arrays", tmp_path / "manifest"
    for copy in (arrays, manifest):
        shutil.copytree(run, copy)
    damage_arrays(arrays / "checkpoints" / "6")
    (manifest / "checkpoints" / "6" / "params" / "manifest.ocdbt").write_bytes(b"")
    cases = [
        (arrays, ["evaluate", "--data", str(root / "validation.jsonl"), "--set", "log.eval_max_batches=1"],
         "TensorStore OUT_OF_RANGE reading params: "),
        (manifest, ["generate", "--prompt", "the", "--max-new-tokens", "2"],
         "TensorStore DATA_LOSS reading params/manifest.ocdbt: "),
    ]
    for copy, (command, *flags), reason in cases:
        done = subprocess.run([sys.executable, "-m", "jaxlm", command, str(copy), *flags], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr[-3000:]
        assert len(done.stderr.splitlines()) == 1, done.stderr[-3000:]
        message = done.stderr.strip()
        assert message.startswith(f"error: checkpoint step 6 in {copy} cannot be restored ({reason}"), message
        assert message.endswith("); its other steps: 4 (choose one with --step, e.g. --step 4)"), message
    evaluated = evaluate_checkpoint(arrays, str(root / "validation.jsonl"), step=4,
                                    overrides={"log.eval_max_batches": 1})
    assert evaluated["step"] == 4
    assert jaxlm("generate", arrays, "--prompt", "the", "--max-new-tokens", "2", "--step", "4")["new_tokens"] == 2
    with pytest.raises(CheckpointError, match=f"^{arrays} has no checkpoint step 5; its steps: 6, 4$"):
        load_params(arrays, step=5)


def test_a_damaged_newest_step_is_set_aside_in_one_line_on_resume(corpus, run, tmp_path):
    """The same damage when training resumes: jaxlm train logs one line (the whole error with --debug)."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    damage_arrays(copy / "checkpoints" / "6")
    config = config_file(tmp_path / "cfg.py", tiny_config(corpus, copy, **RUN))
    done = subprocess.run([sys.executable, "-m", "jaxlm", "train", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    (moved,) = (copy / "corrupt").iterdir()
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"WARNING: checkpoint step 6 in {copy} cannot be restored (TensorStore OUT_OF_RANGE "), line
    assert line.endswith(f"); moved it to {moved}; resuming from step 4"), line
    assert json.loads(done.stdout)["start_step"] == 4


def test_reports_of_reads_orbax_abandoned_are_dropped_and_other_unraisable_errors_kept(monkeypatch, capsys):
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored afterwards
    cli.quiet_libraries()

    class Pending:
        def __await__(self):
            yield

    async def read():
        try:
            await Pending()
        finally:
            raise ValueError("OUT_OF_RANGE: an abandoned read")

    class RaisesWhenCollected:
        def __init__(self, message):
            self.message = message

        def __del__(self):
            raise RuntimeError(self.message)

    abandoned = read()
    abandoned.send(None)
    del abandoned  # closed while suspended: its finally clause raises
    RaisesWhenCollected("Event loop is closed")
    RaisesWhenCollected("a bug of ours")
    err = capsys.readouterr().err
    assert "a bug of ours" in err and "abandoned read" not in err and "Event loop is closed" not in err


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
    """--dtype bfloat16 and --quantize int8 on a trained run: evaluation, and jaxlm generate."""
    root, _ = corpus
    data = str(root / "validation.jsonl")
    fp32 = evaluate_checkpoint(run, data)
    for variant, ratio in (({"dtype": "bfloat16"}, 0.5), ({"quantize": "int8"}, 0.35)):
        cheaper = evaluate_checkpoint(run, data, **variant)
        assert cheaper["loss"] == pytest.approx(fp32["loss"], abs=0.05), variant
        assert cheaper["param_bytes"] <= ratio * fp32["param_bytes"], variant
    result = jaxlm("generate", run, "--prompt", "the union", "--max-new-tokens", "5", "--num-samples", "2",
                   "--quantize", "int8", "--dtype", "bfloat16", "--top-p", "0.9")
    assert len(result["continuations"]) == 2 and result["tokens_per_s"] > 0
    assert result["dtype"] == "bfloat16" and result["quantize"] == "int8"
    assert '"tokens_per_s"' in capsys.readouterr().out


def test_split_picks_a_corpus_folders_file(corpus, run, tmp_path, capsys):
    """``--data FOLDER --split test`` reads test.jsonl alone of a folder with all three splits; a
    split the folder lacks, or another split than a file's, is refused in one line."""
    root, _ = corpus
    folder = tmp_path / "corpus"
    folder.mkdir()
    for split in ("train", "validation"):
        shutil.copy(root / f"{split}.jsonl", folder)
    lines = (root / "train.jsonl").read_text().splitlines()
    (folder / "test.jsonl").write_text("\n".join(lines[:3]) + "\n")
    config = load_params(run)[3].config
    lm = LanguageModeling(config, load_tokenizer(config.data.tokenizer), tokenizer_id(config.data.tokenizer))
    tokens = {split: lm.load_corpus(str(folder / f"{split}.jsonl"), split).num_tokens for split in ("validation", "test")}
    assert tokens["test"] != tokens["validation"]
    assert jaxlm("evaluate", run, "--data", folder, "--split", "test")["tokens"] == tokens["test"]
    capsys.readouterr()
    (folder / "test.jsonl").unlink()
    refusals = [
        (folder, "test", rf"error: folder '{folder}' holds the splits \['train', 'validation'\], not 'test': choose "
                         "one of those"),
        (folder / "validation.jsonl", "test", r"error: --split test asks for another split than the file .*"
                                              r"validation.jsonl holds \(validation\): pass the corpus's folder"),
    ]
    for data, split, message in refusals:
        with pytest.raises(SystemExit) as e:
            jaxlm("evaluate", run, "--data", data, "--split", split)
        assert e.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert re.match(message, line), line
