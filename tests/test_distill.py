"""Knowledge distillation: Hinton et al.'s loss for the causal LM, the masked LM and classifiers,
refusals, and distilled runs (jaxlm distill --teacher RUN: the teacher run's config with a smaller
model) that train, report and resume like any other."""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import jaxlm, tiny_config
from test_finetune import classify_config

import models
from bench.sharing import SharingSpec, random_batch
from train.checkpoint import load_params, load_variables, read_run_config, save_params
from train.config import DistillConfig
from train.data.tokenizers import load_tokenizer
from train.distill import Distillation, soft_kl
from train.evaluation import evaluate_checkpoint
from train.loop import train
from train.metrics import read_metrics
from train.task_registry import make_task
from train.tasks import Classification, LanguageModeling, pair_pretraining_loss


def test_soft_kl():
    logits = jax.random.normal(jax.random.key(0), (3, 11))
    np.testing.assert_allclose(soft_kl(logits, logits, 2.0), 0.0, atol=1e-6)
    other = logits[::-1]
    t, s = jax.nn.softmax(other / 3.0), jax.nn.softmax(logits / 3.0)
    np.testing.assert_allclose(soft_kl(logits, other, 3.0), np.sum(t * np.log(t / s), -1), rtol=1e-5)


def _task(base, teacher, teacher_params, **spec):
    """A Distillation built around a teacher in memory (no folder)."""
    task = Distillation.__new__(Distillation)
    task.spec, task.base_name = DistillConfig(teacher="memory", **spec), base
    task.base = LanguageModeling if base == "lm" else None
    task.teacher_module, task.teacher_variables = teacher, {"params": teacher_params}
    return task


def _init(name, **overrides):
    module, _ = models.create(name, **overrides)
    return module, models.init_params(module, jax.random.key(len(overrides)))


def test_causal_lm_loss_is_hintons_mixture():
    teacher, tp = _init("gpt2-tiny")
    student, sp = _init("gpt2-tiny", n_layer=1, d_model=16, n_head=2, d_ff=32)
    rng = np.random.RandomState(0)
    batch = {"inputs": rng.randint(0, 256, (2, 9)), "targets": rng.randint(0, 256, (2, 9))}
    key = jax.random.key(0)
    hard, (hard_sums, _) = LanguageModeling.loss(student, {"params": sp}, batch, key, True)
    only_hard, (sums, _) = _task("lm", teacher, tp, alpha=0.0).loss(student, {"params": sp}, batch, key, True,
                                                                      frozen={"params": tp})
    np.testing.assert_allclose(only_hard, hard, rtol=1e-6)
    expected_kl = soft_kl(student.apply({"params": sp}, batch["inputs"]), teacher.apply({"params": tp}, batch["inputs"]),
                          4.0).mean()
    mixed, _ = _task("lm", teacher, tp, alpha=0.3, temperature=4.0).loss(student, {"params": sp}, batch, key, True,
                                                                         frozen={"params": tp})
    np.testing.assert_allclose(mixed, 0.3 * 16 * expected_kl + 0.7 * hard, rtol=1e-5)
    np.testing.assert_allclose(sums["soft_kl"], 18 * soft_kl(student.apply({"params": sp}, batch["inputs"]),
                                                             teacher.apply({"params": tp}, batch["inputs"]), 2.0).mean(),
                               rtol=1e-5)
    assert {"nll", "weight", "correct"} <= set(sums)


def test_masked_lm_distils_the_masked_tokens_and_the_pair_head():
    teacher, tp = _init("bert-tiny", vocab_size=300, n_positions=16)
    student, sp = _init("bert-tiny", vocab_size=300, n_positions=16, n_layer=1)
    batch = random_batch(dataclasses.replace(SharingSpec(), vocab_size=300, seq_len=16, batch_size=3),
                         np.random.default_rng(0))
    key = jax.random.key(0)
    hard, _ = pair_pretraining_loss(student, {"params": sp}, batch, key, True, "nsp")
    task = _task("mlm_nsp", teacher, tp, alpha=0.5, temperature=2.0)
    loss, (sums, _) = task.loss(student, {"params": sp}, batch, key, True, frozen={"params": tp})
    s = student.apply({"params": sp}, batch["input_ids"], attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"])
    t = teacher.apply({"params": tp}, batch["input_ids"], attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"])
    w = batch["mlm_weights"]
    mlm_kl = jnp.sum(soft_kl(s["mlm_logits"], t["mlm_logits"], 2.0) * w) / w.sum()
    nsp_kl = soft_kl(s["nsp_logits"], t["nsp_logits"], 2.0).mean()
    np.testing.assert_allclose(loss, 0.5 * 4 * (mlm_kl + nsp_kl) + 0.5 * hard, rtol=1e-5)
    assert {"mlm_soft_kl", "pair_soft_kl", "mlm_nll", "pair_nll"} <= set(sums)


@pytest.fixture(scope="module")
def teacher_folder(corpus, tmp_path_factory):
    module, params = _init("gpt2-tiny", n_positions=32)
    return save_params(tmp_path_factory.mktemp("lm") / "teacher", module.config, params,
                       {"data.tokenizer": str(corpus[1]), "task.name": "lm", "data.seq_len": 32})


@pytest.mark.parametrize("distill, changes, message", [
    ({"temperature": 2.0}, {}, "needs a teacher: set task.distill.teacher"),
    ({"teacher": "TEACHER", "temperature": 0.0}, {}, "task.distill.temperature=0.0 must be positive"),
    ({"teacher": "TEACHER", "alpha": 1.5}, {}, r"task.distill.alpha=1.5 must lie in \[0, 1\]"),
    ({"teacher": "TEACHER"}, {"model.vocab_size": 128}, r"student's vocabulary \(128 tokens\) differs from its "
                                                        r"teacher's \(256.*Set model.vocab_size=256"),
    ({"teacher": "TEACHER", "task": "mlm_nsp"}, {}, "task.distill.task='mlm_nsp' does not fit a gpt student"),
])
def test_bad_distillation_settings_are_named(corpus, tmp_path, teacher_folder, distill, changes, message):
    """Refused when the config is built (the settings themselves) or the task is (against the teacher)."""
    distill = {k: str(teacher_folder) if v == "TEACHER" else v for k, v in distill.items()}
    with pytest.raises(ValueError, match=message):
        config = tiny_config(corpus, tmp_path / "student", **{"task.name": "distill", "task.distill": distill,
                                                              **changes})
        make_task(config, load_tokenizer(config.data.tokenizer), "key")


STUDENT = ["--set", "model.n_layer=1", "--set", "model.d_model=16", "--set", "model.n_head=2", "--set",
           "model.d_ff=32"]


@pytest.mark.slow
def test_distilled_run_trains_reports_and_resumes(corpus, tmp_path):
    """The student of jaxlm distill --teacher RUN trains RUN's steps on RUN's data and validation
    split (in TEACHER-student by default), and resumes exactly."""
    teacher = tmp_path / "teacher"
    train(tiny_config(corpus, teacher))
    summary = jaxlm("distill", "--teacher", teacher, *STUDENT, "--set", "task.distill.temperature=2")
    student = tmp_path / "teacher-student"
    assert summary["run_dir"] == str(student) and summary["step"] == 12
    assert {"loss", "perplexity", "soft_kl", "distill_loss"} <= set(summary["validation"])
    rows = [r for r in read_metrics(student) if r["split"] == "validation"]
    assert [r["step"] for r in rows] == [6, 12] and all(r["soft_kl"] > 0 for r in rows)
    config = read_run_config(student)
    assert (config.model.n_layer, config.task.distill.teacher, config.task.distill.temperature) == (1, str(teacher), 2)
    assert config.data == read_run_config(teacher).data
    shutil.copytree(student, tmp_path / "resumed")
    for step in ("8", "12"):
        shutil.rmtree(tmp_path / "resumed" / "checkpoints" / step)
    resumed = jaxlm("distill", "--teacher", teacher, *STUDENT, "--set", "task.distill.temperature=2",
                    "--out", tmp_path / "resumed")
    assert resumed["start_step"] == 4
    jax.tree.map(np.testing.assert_array_equal, load_params(student)[2], load_params(tmp_path / "resumed")[2])


def _classifier(labels=("a", "b", "c"), seed=0, **body):
    """A ULMFiT-head classifier on gpt2-tiny and its variables; the head's weights and batch
    statistics random, so the class distributions differ clearly."""
    _, config = models.create("gpt2-tiny", **body)
    module = models.ClassifierConfig(config, labels, head="ulmfit").module()
    variables = models.init_variables(module, jax.random.key(seed))
    noise = lambda scale: lambda x: x + scale * jax.random.uniform(jax.random.key(seed + 1), x.shape)  # noqa: E731
    params = {**variables["params"], "head": jax.tree.map(noise(1.0), variables["params"]["head"])}
    return module, {"params": params, "batch_stats": jax.tree.map(noise(0.3), variables["batch_stats"])}


def test_classifier_loss_is_hintons_mixture():
    teacher, tv = _classifier()
    student, sv = _classifier(seed=5, n_layer=1, d_model=16, n_head=2, d_ff=32)
    rng = np.random.RandomState(0)
    mask = np.ones((4, 10), np.int32)
    mask[1, 7:] = 0
    batch = {"input_ids": rng.randint(0, 256, (4, 10)), "attention_mask": mask, "labels": np.array([0, 2, 1, 2]),
             "weights": np.array([1.0, 1.0, 1.0, 0.0], np.float32)}
    task = _task("classify", teacher, None, alpha=0.3, temperature=3.0)
    loss, (sums, state) = task.loss(student, sv, batch, jax.random.key(0), True, frozen=tv)
    s = student.apply(sv, batch["input_ids"], mask)
    t = teacher.apply(tv, batch["input_ids"], mask)  # running averages: the teacher's own batch statistics
    w = batch["weights"]
    ce = np.sum(optax.softmax_cross_entropy_with_integer_labels(s, batch["labels"]) * w) / w.sum()
    lt, ls = jax.nn.log_softmax(t / 3.0), jax.nn.log_softmax(s / 3.0)
    kl = np.sum(np.sum(np.exp(lt) * (lt - ls), -1) * w) / w.sum()
    assert kl > 1e-3
    np.testing.assert_allclose(loss, 0.3 * 9 * kl + 0.7 * ce, rtol=1e-5)
    assert state == {"batch_stats": sv["batch_stats"]}  # evaluation leaves the statistics as they were

    # Summed like the classify task's, with the soft KL and the distillation loss on top.
    task.base = Classification.__new__(Classification)
    task.base.labels = ("a", "b", "c")
    metrics = task.summarize(jax.tree.map(np.asarray, sums))
    assert metrics["examples"] == 3 and {"accuracy", "macro_f1", "per_class"} <= set(metrics)
    np.testing.assert_allclose(metrics["soft_kl"], kl, rtol=1e-5)
    np.testing.assert_allclose(metrics["distill_loss"], loss, rtol=1e-5)

    # In training the student's batch statistics move; the teacher's are an input, never updated.
    _, (_, state) = task.loss(student, sv, batch, jax.random.key(0), False, frozen=tv)
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), state["batch_stats"],
                         sv["batch_stats"])
    assert all(jax.tree.leaves(moved))


@pytest.fixture(scope="module")
def classifier_teacher(corpus, tmp_path_factory):
    """A classifier run folder (linear head) on the corpus's tokenizer, classes ("a", "b")."""
    _, body = models.create("gpt2-tiny", n_positions=32)
    config = models.ClassifierConfig(body, ("a", "b"))
    params = models.init_params(config.module(), jax.random.key(0))
    return save_params(tmp_path_factory.mktemp("classifier") / "classifier", config, params, {"data.tokenizer": str(corpus[1]), "data.seq_len": 32})


def test_classifier_distillation_refuses_other_classes_and_other_teachers(corpus, labelled_data, tmp_path,
                                                                           teacher_folder, classifier_teacher):
    config = classify_config(corpus, labelled_data, tmp_path / "student", **{
        "task.name": "distill", "task.distill": {"teacher": str(classifier_teacher)}})
    tokenizer = load_tokenizer(config.data.tokenizer)
    task = make_task(config, tokenizer, "key")
    assert task.base_name == "classify"
    task.load_corpus(config.data.train, "train")
    with pytest.raises(ValueError, match=r"student's classes \['peace', 'war'\] .* not its teacher's \['a', 'b'\]"):
        task.model_config(config.model)
    with pytest.raises(ValueError, match="distill.task='classify' needs a classifier teacher, but .* holds a GPTConfig"):
        make_task(config.replace({"task.distill": {"teacher": str(teacher_folder), "task": "classify"}}), tokenizer,
                  "key")
    with pytest.raises(ValueError, match="is a classifier: its outputs are class logits, so task.distill.task must be"):
        make_task(config.replace({"task.distill": {"teacher": str(classifier_teacher), "task": "lm"}}), tokenizer, "key")


def test_distilled_classifier_trains_and_reports(corpus, labelled_data, tmp_path):
    """A ULMFiT-head teacher trained for a few steps, then a 1-layer student distilled from it by
    jaxlm distill: the teacher run's steps and validation split, a classifier's metrics."""
    teacher = tmp_path / "teacher"
    train(classify_config(corpus, labelled_data, teacher, steps=4, **{
        "log.eval_every": 4, "checkpoint.every": 4, "optimizer.schedule": "constant"}))
    summary = jaxlm("distill", "--teacher", teacher, *STUDENT, "--out", tmp_path / "student")
    assert summary["step"] == 4
    validation = summary["validation"]
    assert {"loss", "accuracy", "macro_f1", "per_class", "soft_kl", "distill_loss"} <= set(validation)
    assert validation["examples"] == 12 and validation["soft_kl"] > 0
    rows = [r for r in read_metrics(tmp_path / "student") if r["split"] == "validation"]
    assert rows and all(r["soft_kl"] > 0 and "macro_f1" in r for r in rows)
    _, model_config, variables, _ = load_variables(tmp_path / "student")
    assert model_config.labels == ("peace", "war") and model_config.body.n_layer == 1
    assert set(variables) == {"params", "batch_stats"}
    test = evaluate_checkpoint(tmp_path / "student", str(labelled_data / "test.jsonl"), split="test")
    assert test["examples"] == 12 and "soft_kl" in test
