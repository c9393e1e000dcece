"""Fine-tuning runs: the classify task on every family, init_from (our runs and HF folders),
exact resumption with batch statistics and gradual unfreezing, and refusals that lose nothing."""

import json
import random
import signal

import jax
import numpy as np
import pytest
from test_train import _assert_bitwise_equal, _latest_step, _run_script, _wait_for_checkpoint, tiny_config

import models
import optim
from models import hf
from train.checkpoint import load_variables, save_params
from train.config import TrainConfig
from train.evaluation import evaluate_checkpoint
from train.finetuning import Pretrained, init_params, load_pretrained
from train.loop import train

WORDS = "the union state nation people congress year government law trade money work".split()


@pytest.fixture(scope="module")
def labelled_data(tmp_path_factory):
    """Rows labelled by which of two words they repeat: learnable in a few steps."""
    root = tmp_path_factory.mktemp("labelled")
    rng = random.Random(0)
    for split, n in (("train", 48), ("validation", 12), ("test", 12)):
        with open(root / f"{split}.jsonl", "w") as f:
            for i in range(n):
                label = ("war", "peace")[i % 2]
                words = rng.choices(WORDS, k=rng.randint(4, 14)) + [label] * 2
                rng.shuffle(words)
                f.write(json.dumps({"text": " ".join(words), "topic": label}) + "\n")
    return root


def classify_config(corpus, data, workdir, model="gpt2-tiny", **kw) -> TrainConfig:
    values = dict(
        task="classify", label_field="topic", train_data=str(data / "train.jsonl"),
        eval_data=str(data / "validation.jsonl"), warmup_steps=0, lr_schedule="stlr", learning_rate=3e-3, steps=12,
        discriminative_factor=2.6, unfreeze_every=2, classifier={"pooling": "concat", "head": "ulmfit"},
    )
    values.update(kw)
    overrides = {"n_positions": 32} if model.startswith("gpt") else {"n_positions": 32, "vocab_size": 128}
    return tiny_config(corpus, workdir, model=model, model_overrides={**overrides, **values.pop("model_overrides", {})},
                       **values)


@pytest.mark.slow
def test_gpt_classifier_from_an_lm_run_resumes_exactly(corpus, labelled_data, tmp_path):
    train(tiny_config(corpus, tmp_path / "lm", steps=4, eval_data=None))
    # A constant rate, since the run below changes `steps` when it resumes (STLR depends on it).
    config = classify_config(corpus, labelled_data, tmp_path / "full", init_from=str(tmp_path / "lm"),
                             lr_schedule="constant")
    summary = train(config)
    assert summary["init_from"]["new"] == sorted(summary["init_from"]["new"]) and summary["init_from"]["unused"] == []
    assert all(p.startswith("head/") for p in summary["init_from"]["new"])
    report = json.loads((tmp_path / "full" / "init.json").read_text())
    assert len(report["loaded"]) == len(optim.param_paths(load_variables(tmp_path / "lm")[2]["params"]))
    validation = summary["validation"]
    assert set(validation) >= {"loss", "accuracy", "macro_f1", "per_class", "examples"}
    assert validation["examples"] == 12 and sum(c["examples"] for c in validation["per_class"].values()) == 12

    # Stopped after 6 steps and resumed: bitwise the run above, batch statistics included.
    parts = tmp_path / "parts"
    train(classify_config(corpus, labelled_data, parts, init_from=str(tmp_path / "lm"), steps=6,
                          lr_schedule="constant"))
    resumed = train(classify_config(corpus, labelled_data, parts, init_from=str(tmp_path / "lm"),
                                    lr_schedule="constant"))
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
    config = classify_config(corpus, labelled_data, tmp_path / "run", model=model, init_from=str(folder),
                             model_overrides=overrides, classifier={"pooling": pooling}, steps=6, lr_schedule="constant")
    summary = train(config)
    new, unused = summary["init_from"]["new"], summary["init_from"]["unused"]
    assert new == ["head/dense_0/bias", "head/dense_0/kernel"]
    assert unused and all(p.split("/")[1] in ("mlm", "nsp", "sop") or (pooling != "pooler" and "pooler" in p)
                          for p in unused)
    assert summary["validation"]["examples"] == 12


def test_init_from_refuses_another_architecture_before_touching_the_workdir(corpus, labelled_data, tmp_path):
    train(tiny_config(corpus, tmp_path / "lm", steps=2, warmup_steps=1, eval_data=None))
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"(?s)another architecture .* d_model: init_from has 32, this run has 64"):
        train(classify_config(corpus, labelled_data, workdir, init_from=str(tmp_path / "lm"),
                              model_overrides={"d_model": 64}))
    with pytest.raises(ValueError, match="holds a GPTConfig \\(gpt\\); this run's model is a BertConfig"):
        train(classify_config(corpus, labelled_data, workdir, model="bert-tiny", init_from=str(tmp_path / "lm")))
    with pytest.raises(ValueError, match="scan_layers=False, this run's model with True"):
        train(classify_config(corpus, labelled_data, workdir, init_from=str(tmp_path / "lm"),
                              model_overrides={"scan_layers": True}))
    with pytest.raises(ValueError, match="9 unfreezing stages, but the depths form 4 groups"):
        train(classify_config(corpus, labelled_data, workdir, unfreeze_stages=9))
    assert not workdir.exists()


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
    body = config.model_config()
    save_params(tmp_path / "general", body, models.init_params(body.module(), jax.random.key(3)),
                {"tokenizer": config.tokenizer})
    summary = train(tiny_config(corpus, tmp_path / "target", steps=2, eval_data=None,
                                init_from=str(tmp_path / "general"), lr_schedule="stlr", warmup_steps=0,
                                stlr_cut_frac=0.5, discriminative_factor=2.6))
    assert summary["init_from"]["new"] == [] and summary["init_from"]["unused"] == []
    assert load_pretrained(tmp_path / "general", load_variables(tmp_path / "target")[1]).kind == "run"


def test_one_class_and_missing_columns_are_refused(corpus, labelled_data, tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "the war", "topic": "war"}) + "\n" + json.dumps({"text": "a", "topic": "war"}))
    with pytest.raises(ValueError, match="label column 'topic' of .* has one class \\('war'\\)"):
        train(classify_config(corpus, labelled_data, tmp_path / "r", train_data=str(one)))
    with pytest.raises(ValueError, match="label field 'label' not found"):
        train(classify_config(corpus, labelled_data, tmp_path / "r", label_field="label"))
    partial = tmp_path / "val.jsonl"
    partial.write_text(json.dumps({"text": "the war", "topic": "war"}) + "\n")
    with pytest.raises(ValueError, match=r"validation split has no examples of the class\(es\) \['peace'\]"):
        train(classify_config(corpus, labelled_data, tmp_path / "r", eval_data=str(partial)))
    assert not (tmp_path / "r").exists()


def test_generate_refuses_a_classifier_checkpoint(corpus, labelled_data, tmp_path):
    import importlib.util
    from pathlib import Path

    body = classify_config(corpus, labelled_data, tmp_path / "clf").model_config()
    config = models.ClassifierConfig(body, ("peace", "war"))
    save_params(tmp_path / "clf", config, models.init_params(config.module(), jax.random.key(0)), {})
    spec = importlib.util.spec_from_file_location("generate", Path(__file__).parents[1] / "scripts" / "generate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(ValueError, match="holds a ClassifierConfig, but generate.py continues text.*evaluate.py"):
        script.main([str(tmp_path / "clf"), "--prompt", "the"])


@pytest.mark.slow
def test_killed_classifier_run_resumes_to_identical_variables(corpus, labelled_data, tmp_path):
    root, spm = corpus
    config = tmp_path / "cfg.py"
    config.write_text(
        "from train.config import TrainConfig\n\n"
        "def get_config():\n"
        f"    return TrainConfig(model='gpt2-tiny', model_overrides={{'n_positions': 32}}, task='classify', "
        f"label_field='topic', train_data={str(labelled_data / 'train.jsonl')!r}, tokenizer={str(spm)!r}, "
        "seq_len=32, batch_size=4, steps=40, warmup_steps=0, lr_schedule='stlr', learning_rate=3e-3, "
        "discriminative_factor=2.6, unfreeze_every='epoch', classifier={'head': 'ulmfit'}, checkpoint_every=4, "
        "log_every=4, eval_every=1000, progress_bar=False)\n"
    )
    reference = _run_script(config, "--set", f"workdir={tmp_path / 'ref'}")
    assert reference.wait() == 0, reference.stdout.read()
    killed = _run_script(config, "--set", f"workdir={tmp_path / 'killed'}")
    _wait_for_checkpoint(tmp_path / "killed", killed)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert 0 < _latest_step(tmp_path / "killed") < 40
    resumed = _run_script(config, "--set", f"workdir={tmp_path / 'killed'}")
    assert resumed.wait() == 0, resumed.stdout.read()
    _assert_bitwise_equal(load_variables(tmp_path / "killed")[2], load_variables(tmp_path / "ref")[2])
    assert np.asarray(load_variables(tmp_path / "ref")[2]["batch_stats"]["head"]["norm_0"]["var"]).std() > 0


def test_runs_saved_before_the_fine_tuning_fields_existed_still_resume(corpus, tmp_path):
    train(tiny_config(corpus, tmp_path / "run", steps=2, warmup_steps=1, eval_data=None))
    run_file = tmp_path / "run" / "run.json"
    record = json.loads(run_file.read_text())
    added = ("init_from", "label_field", "classifier", "stlr_cut_frac", "stlr_ratio", "discriminative_factor",
             "unfreeze_every", "unfreeze_stages", "feature_extraction", "pruning", "distill")
    record["run"] = {k: v for k, v in record["run"].items() if k not in added}
    for field in ("pruned_heads", "adaptive_cutoffs", "final_ln"):  # model fields added since
        del record["model"][field]
    run_file.write_text(json.dumps(record))
    assert train(tiny_config(corpus, tmp_path / "run", steps=3, warmup_steps=1, eval_data=None))["start_step"] == 2
    with pytest.raises(Exception, match="discriminative_factor: checkpoint has 1.0, this run has 2.6"):
        train(tiny_config(corpus, tmp_path / "run", steps=4, warmup_steps=1, eval_data=None, discriminative_factor=2.6))
