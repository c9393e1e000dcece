"""Fine-tuning runs: the classify task on every family, init_from (our runs and HF folders),
exact resumption with batch statistics and gradual unfreezing, refusals that lose nothing, and
ULMFiT's stages (jaxlm finetune) from a pretrained run that is only read."""

import json
import os
import re
import shutil
import signal
import stat

import jax
import numpy as np
import pytest
from conftest import config_file, jaxlm
from test_train import _assert_bitwise_equal, _latest_step, _run_script, _wait_for_checkpoint, tiny_config

import models
import optim
from models import hf
from train.checkpoint import load_variables, save_params
from train.config import FLAT_FIELDS, TrainConfig
from train.evaluation import evaluate_checkpoint
from train.finetuning import Pretrained, init_params, load_pretrained
from train.loop import train

NO_EVAL = {"data.eval": None}

def classify_config(corpus, data, run_dir, model="gpt2-tiny", **changes) -> TrainConfig:
    """A ULMFiT-style classifier of ``data``'s topics on a tiny ``model`` (a preset); ``changes``
    by dotted paths (``model.FIELD`` applies to the preset's config)."""
    shape = {"n_positions": 32} if model.startswith("gpt") else {"n_positions": 32, "vocab_size": 128}
    return tiny_config(corpus, run_dir, **{
        "model": models.get_config(model, **shape), "task.name": "classify", "data.label_field": "topic",
        "data.train": str(data / "train.jsonl"), "data.eval": str(data / "validation.jsonl"),
        "optimizer.warmup_steps": 0, "optimizer.schedule": "stlr", "optimizer.learning_rate": 3e-3, "steps": 12,
        "optimizer.discriminative_factor": 2.6, "optimizer.unfreeze_every": 2,
        "task.classifier": {"pooling": "concat", "head": "ulmfit"}, **changes,
    })


@pytest.fixture(scope="module")
def lm_run(corpus, tmp_path_factory):
    """A 4-step language model run, only read by the tests (copied where one changes it)."""
    run = tmp_path_factory.mktemp("lm") / "lm"
    train(tiny_config(corpus, run, steps=4, **NO_EVAL))
    return run


# A constant rate, for runs that change `steps` when they resume (STLR depends on it).
CONSTANT = {"optimizer.schedule": "constant"}


@pytest.mark.slow
def test_gpt_classifier_from_an_lm_run_resumes_exactly(corpus, labelled_data, lm_run, tmp_path):
    config = classify_config(corpus, labelled_data, tmp_path / "full", init_from=str(lm_run), **CONSTANT)
    summary = train(config)
    assert summary["init_from"]["new"] == sorted(summary["init_from"]["new"]) and summary["init_from"]["unused"] == []
    assert all(p.startswith("head/") for p in summary["init_from"]["new"])
    report = json.loads((tmp_path / "full" / "init.json").read_text())
    assert len(report["loaded"]) == len(optim.param_paths(load_variables(lm_run)[2]["params"]))
    validation = summary["validation"]
    assert set(validation) >= {"loss", "accuracy", "macro_f1", "per_class", "examples"}
    assert validation["examples"] == 12 and sum(c["examples"] for c in validation["per_class"].values()) == 12

    # Stopped after 6 steps and resumed: bitwise the run above, batch statistics included.
    parts = tmp_path / "parts"
    train(classify_config(corpus, labelled_data, parts, init_from=str(lm_run), steps=6, **CONSTANT))
    resumed = train(classify_config(corpus, labelled_data, parts, init_from=str(lm_run), **CONSTANT))
    assert resumed["start_step"] == 6
    full_vars, part_vars = load_variables(tmp_path / "full")[2], load_variables(parts)[2]
    assert set(full_vars) == {"params", "batch_stats"}
    _assert_bitwise_equal(part_vars, full_vars)

    test = evaluate_checkpoint(tmp_path / "full", str(labelled_data / "test.jsonl"), split="test")
    assert test["examples"] == 12 and 0 <= test["macro_f1"] <= 1 and test["step"] == 12


@pytest.mark.parametrize("model,overrides,pooling", [
    ("bert-tiny", {"scan_layers": True}, "pooler"),
    ("albert-tiny", {}, "first"),
])
def test_encoder_classifiers_from_a_hugging_face_folder(corpus, labelled_data, tmp_path, model, overrides, pooling):
    _, body = models.create(model, n_positions=32, vocab_size=128, head="pretraining")
    folder = hf.save_pretrained(tmp_path / "hf", body, models.init_params(body.module(), jax.random.key(1)))
    config = classify_config(corpus, labelled_data, tmp_path / "run", model=model, init_from=str(folder), steps=6,
                             **{f"model.{k}": v for k, v in overrides.items()}, **CONSTANT,
                             **{"task.classifier": {"pooling": pooling}})
    summary = train(config)
    new, unused = summary["init_from"]["new"], summary["init_from"]["unused"]
    assert new == ["head/dense_0/bias", "head/dense_0/kernel"]
    assert unused and all(p.split("/")[1] in ("mlm", "nsp", "sop") or (pooling != "pooler" and "pooler" in p)
                          for p in unused)
    assert summary["validation"]["examples"] == 12


def test_init_from_refuses_another_architecture_before_touching_the_run_dir(corpus, labelled_data, lm_run, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"(?s)another architecture .* d_model: init_from has 32, this run has 64"):
        train(classify_config(corpus, labelled_data, run_dir, init_from=str(lm_run), **{"model.d_model": 64}))
    with pytest.raises(ValueError, match="holds a GPTConfig \\(gpt\\); this run's model is a BertConfig"):
        train(classify_config(corpus, labelled_data, run_dir, model="bert-tiny", init_from=str(lm_run)))
    with pytest.raises(ValueError, match="scan_layers=False, this run's model with True"):
        train(classify_config(corpus, labelled_data, run_dir, init_from=str(lm_run), **{"model.scan_layers": True}))
    with pytest.raises(ValueError, match="9 unfreezing stages, but the depths form 4 groups"):
        train(classify_config(corpus, labelled_data, run_dir, **{"optimizer.unfreeze_stages": 9}))
    assert not run_dir.exists()


def test_nothing_below_the_heads_is_initialised_anew():
    _, body = models.create("gpt2-tiny")
    config = models.ClassifierConfig(body, ("a", "b"))
    params = models.init_params(config.module(), jax.random.key(0))
    lm = models.init_params(body.module(), jax.random.key(1))
    _, report = init_params(Pretrained("lm", "run", body, lm), config, params)
    assert report["new"] == ["head/dense_0/bias", "head/dense_0/kernel"]
    del lm["blocks_1"]
    with pytest.raises(ValueError, match=r"lacks 16 parameters below the heads.*body/blocks_1/"):
        init_params(Pretrained("lm", "run", body, lm), config, params)


def test_lm_fine_tuning_starts_from_the_pretrained_run(corpus, tmp_path):
    config = tiny_config(corpus, tmp_path / "general")
    body = config.model
    save_params(tmp_path / "general", body, models.init_params(body.module(), jax.random.key(3)),
                {"data.tokenizer": config.data.tokenizer})
    summary = train(tiny_config(corpus, tmp_path / "target", steps=2, **NO_EVAL, init_from=str(tmp_path / "general"),
                                **{"optimizer.schedule": "stlr", "optimizer.warmup_steps": 0,
                                   "optimizer.stlr_cut_frac": 0.5, "optimizer.discriminative_factor": 2.6}))
    assert summary["init_from"]["new"] == [] and summary["init_from"]["unused"] == []
    assert load_pretrained(tmp_path / "general", load_variables(tmp_path / "target")[1]).kind == "run"


def test_one_class_and_missing_columns_are_refused(corpus, labelled_data, tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "the war", "topic": "war"}) + "\n" + json.dumps({"text": "a", "topic": "war"}))
    with pytest.raises(ValueError, match="label column 'topic' of .* has one class \\('war'\\)"):
        train(classify_config(corpus, labelled_data, tmp_path / "r", **{"data.train": str(one)}))
    with pytest.raises(ValueError, match="label field 'label' not found"):
        train(classify_config(corpus, labelled_data, tmp_path / "r", **{"data.label_field": "label"}))
    partial = tmp_path / "val.jsonl"
    partial.write_text(json.dumps({"text": "the war", "topic": "war"}) + "\n")
    with pytest.raises(ValueError, match=r"validation split has no examples of the class\(es\) \['peace'\]"):
        train(classify_config(corpus, labelled_data, tmp_path / "r", **{"data.eval": str(partial)}))
    assert not (tmp_path / "r").exists()


def test_generate_refuses_a_classifier_checkpoint(corpus, labelled_data, tmp_path, capsys):
    body = classify_config(corpus, labelled_data, tmp_path / "clf").model
    config = models.ClassifierConfig(body, ("peace", "war"))
    save_params(tmp_path / "clf", config, models.init_params(config.module(), jax.random.key(0)), {})
    with pytest.raises(SystemExit) as e:
        jaxlm("generate", tmp_path / "clf", "--prompt", "the")
    assert e.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert re.match("error: .* holds a ClassifierConfig, but generation continues text .*: report its accuracy "
                    "and F1 with jaxlm evaluate", line), line


@pytest.mark.slow
def test_killed_classifier_run_resumes_to_identical_variables(corpus, labelled_data, tmp_path):
    config = config_file(tmp_path / "cfg.py", classify_config(corpus, labelled_data, tmp_path / "unused", **NO_EVAL, **{
        "steps": 40, "optimizer.unfreeze_every": "epoch", "task.classifier": {"head": "ulmfit"}, "checkpoint.every": 4,
        "log.every": 4, "log.eval_every": 1000}))
    reference = _run_script(config, "--out", tmp_path / "ref")
    assert reference.wait() == 0, reference.stdout.read()
    killed = _run_script(config, "--out", tmp_path / "killed")
    _wait_for_checkpoint(tmp_path / "killed", killed)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert 0 < _latest_step(tmp_path / "killed") < 40
    resumed = _run_script(config, "--out", tmp_path / "killed")
    assert resumed.wait() == 0, resumed.stdout.read()
    _assert_bitwise_equal(load_variables(tmp_path / "killed")[2], load_variables(tmp_path / "ref")[2])
    assert np.asarray(load_variables(tmp_path / "ref")[2]["batch_stats"]["head"]["norm_0"]["var"]).std() > 0


def _flat(config: dict) -> dict:
    """A run config as run.json's flat ``run`` section held it before the nested config (the
    model as a preset name and its changes)."""
    flat = {"model": "gpt2-tiny", "model_overrides": {"n_positions": 32}}
    for key, path in FLAT_FIELDS.items():
        if path != "model":
            node = config
            for part in path.split("."):
                node = node[part]
            flat[key] = node
    return flat


def test_runs_saved_before_the_fine_tuning_fields_existed_still_resume(corpus, lm_run, tmp_path):
    """A run.json of the flat kind, from before the fine-tuning fields and some model fields existed."""
    run = tmp_path / "run"
    shutil.copytree(lm_run, run)
    record = json.loads((run / "run.json").read_text())
    added = ("init_from", "label_field", "classifier", "stlr_cut_frac", "stlr_ratio", "discriminative_factor",
             "unfreeze_every", "unfreeze_stages", "feature_extraction", "pruning", "distill")
    flat = {k: v for k, v in _flat(record["config"]).items() if k not in added}
    model = {k: v for k, v in record["model"].items() if k not in ("pruned_heads", "adaptive_cutoffs", "final_ln")}
    (run / "run.json").write_text(json.dumps({"run": flat, "model": model}))
    assert train(tiny_config(corpus, run, steps=5, **NO_EVAL))["start_step"] == 4
    with pytest.raises(Exception, match="discriminative_factor: checkpoint has 1.0, this run has 2.6"):
        train(tiny_config(corpus, run, steps=6, **NO_EVAL, **{"optimizer.discriminative_factor": 2.6}))


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
            for p in [folder, *folder.rglob("*")]}


@pytest.mark.slow
def test_finetune_only_reads_the_pretrained_run(labelled_data, lm_run, tmp_path):
    """jaxlm finetune --pretrained RUN with RUN read-only: stages 2 and 3 train under --out, the
    test split is scored, and RUN is left as it was (the mtimes too: root may write anyway)."""
    before, out = _snapshot(lm_run), tmp_path / "out"
    modes = {p: p.stat().st_mode for p in [lm_run, *lm_run.rglob("*")]}
    for p, mode in modes.items():  # chmod -R a-w
        os.chmod(p, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        result = jaxlm("finetune", "--data", labelled_data, "--pretrained", lm_run, "--out", out,
                       "--set", "data.label_field=topic", "--set", "data.seq_len=32", "--set", "data.batch_size=4",
                       "--set", "data.eval=null", "--set", "lm.steps=10", "--set", "classifier.steps=12")
        assert _snapshot(lm_run) == {k: (*v[:2], v[2] & ~0o222) for k, v in before.items()}
    finally:
        for p, mode in modes.items():
            os.chmod(p, mode)
    assert _snapshot(lm_run) == before
    assert sorted(p.name for p in out.iterdir()) == ["2-lm", "3-classifier", "result.json"]
    assert result["stages"]["1-general-lm"] == {"source": str(lm_run), "trained": False}
    assert (result["stages"]["2-lm"]["step"], result["stages"]["3-classifier"]["step"]) == (10, 12)
    assert json.loads((out / "2-lm" / "init.json").read_text())["source"] == str(lm_run)
    assert json.loads((out / "3-classifier" / "init.json").read_text())["source"] == str(out / "2-lm")
    assert result["test"]["examples"] == 12 and json.loads((out / "result.json").read_text()) == result


def test_a_body_that_never_trains_costs_no_backward_pass(corpus, labelled_data, tmp_path):
    """Feature extraction: the frozen body gets no gradient computed (its backward pass is not in
    the compiled step), and it stays bit-identical while the head trains."""
    from train import sharding
    from train.loop import Run

    flops, runs = {}, {}
    for name, changes in (("every layer", {}), ("the head", {"optimizer.feature_extraction": True})):
        config = classify_config(corpus, labelled_data, tmp_path / name.replace(" ", "-"), steps=10,
                                 **{"optimizer.discriminative_factor": 1.0, "optimizer.unfreeze_every": 0, **NO_EVAL,
                                    **changes})
        run = runs[name] = Run.setup(config)
        local = jax.tree.map(lambda x: x.reshape(1, *x.shape), next(run.batches))
        batch = sharding.global_batch(local, sharding.batch_sharding(run.mesh, leading=1))
        cost = run.train_step.lower(run.state, batch).compile().cost_analysis()
        flops[name] = (cost[0] if isinstance(cost, list) else cost)["flops"]
        before = jax.device_get(run.state.params)
        run.state, _ = run.train_step(run.state, batch)
        after = jax.device_get(run.state.params)
        moved = jax.tree.map(lambda a, b: bool((a != b).any()), before, after)
        assert moved["head"] and any(jax.tree.leaves(moved["head"]))
        assert any(jax.tree.leaves(moved["body"])) == (name == "every layer")
    assert flops["the head"] < 0.6 * flops["every layer"]
